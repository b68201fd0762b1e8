"""Argument checks for the backend contract, shared by every backend.

Every backend calls these before touching data, so native code never sees an
unchecked shape or dtype. Errors name the argument, the expected and the received value.
"""
import numpy as np

from ..cells import get_cell
from ..lookup import FLOAT_DTYPES, Lookup


def _is_array(a, device_ok):
    # Numba device arrays (and the simulator's, which lack the interface) have copy_to_host;
    # it is asked first: numba builds the interface's dict on every access (~1.5 us)
    return isinstance(a, np.ndarray) or (device_ok and is_device_array(a))


def is_device_array(a):
    """A CUDA device array: a Numba one (the simulator's lack the interface), a CuPy array,
    a torch CUDA tensor."""
    return hasattr(a, "copy_to_host") or hasattr(a, "__cuda_array_interface__")


def _want(device_ok):
    return "a numpy.ndarray or a CUDA device array" if device_ok else "a numpy.ndarray"


def check_array(name, a, shape, dtype, device_ok=False):
    """Check ``a`` is an ndarray (or, with device_ok, a CUDA array exposing numpy-style
    .shape and .dtype) of ``dtype`` and ``shape`` (None entries match anything)."""
    if type(a) is np.ndarray and a.shape == shape and a.dtype == dtype:   # the usual case, fast
        return a
    if not _is_array(a, device_ok):
        raise TypeError(f"{name}: expected {_want(device_ok)}, got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {a.dtype}")
    if a.ndim != len(shape) or any(s is not None and s != g for s, g in zip(shape, a.shape)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(a.shape)}")
    return a


def check_lengths(lengths, T, B):
    """Return lengths as a contiguous int32 (B,) array with 0 <= lengths <= T, or None."""
    if lengths is None:
        return None
    arr = np.asarray(lengths)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"lengths: expected integers, got dtype {arr.dtype}")
    if arr.shape != (B,):
        raise ValueError(f"lengths: expected shape ({B},) (one length per sequence), got {arr.shape}")
    if B and (arr.min() < 0 or arr.max() > T):
        raise ValueError(f"lengths: expected values in [0, {T}] (T = {T}), "
                         f"got min {arr.min()}, max {arr.max()}")
    return np.ascontiguousarray(arr, dtype=np.int32)


def check_forward_args(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, device_ok=False, w_hr=None,
                       weight_dtype=None):
    """Validate one layer-direction's forward inputs; return (spec, T, B, I, H, lengths).
    x may be a Lookup (validated when made) with (T, B) ids, for backends that take one.
    w_hr (P, H): an LSTM's projection (PyTorch's proj_size = P); w_hh is then (4H, P) and h0
    (B, P), while c0 stays (B, H). weight_dtype: w_ih's and w_hh's when not x's (bfloat16
    weights held as uint16 bits, fastrnn.bf16)."""
    spec = get_cell(cell)
    if isinstance(x, Lookup):
        if x.ids.ndim != 2:
            raise ValueError(f"x: expected a Lookup with (T, B) ids, got ids of shape {x.ids.shape}")
    elif not _is_array(x, device_ok):
        raise TypeError(f"x: expected {_want(device_ok)}, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"x: expected dtype float32 or float64, got {x.dtype}")
    if x.ndim != 3:
        raise ValueError(f"x: expected 3 dimensions (T, B, I), got shape {x.shape}")
    T, B, I = x.shape
    dt = x.dtype
    if w_hr is not None:
        H, P = _check_projection(spec, x, w_hr, w_hh, dt, device_ok)
        GH = spec.gates * H
    else:
        check_array("w_hh", w_hh, (None, None), weight_dtype or dt, device_ok)
        GH, H = w_hh.shape
        P = H
        if GH != spec.gates * H:
            raise ValueError(f"w_hh: expected shape ({spec.gates}*H, H) for cell {cell!r}, got {w_hh.shape}")
    check_array("w_ih", w_ih, (GH, I), weight_dtype or dt, device_ok)
    if (b_ih is None) != (b_hh is None):
        raise ValueError("b_ih, b_hh: expected both or neither")
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if b is not None:
            check_array(name, b, (GH,), dt, device_ok)
    check_array("h0", h0, (B, P), dt, device_ok)
    if spec.has_cell_state:
        check_array("c0", c0, (B, H), dt, device_ok)
    elif c0 is not None:
        raise ValueError(f"c0: cell {cell!r} has no cell state, expected None")
    return spec, T, B, I, H, check_lengths(lengths, T, B)


def _check_projection(spec, x, w_hr, w_hh, dt, device_ok):
    """w_hr (P, H) and the (4H, P) w_hh that goes with it; returns (H, P)."""
    if not spec.has_cell_state:
        raise ValueError(f"w_hr: only an LSTM has a projection (proj_size), got cell {spec.name!r}")
    if isinstance(x, Lookup):
        raise TypeError("x: a Lookup input is not supported with a projection (w_hr); pass the rows")
    check_array("w_hr", w_hr, (None, None), dt, device_ok)
    P, H = w_hr.shape
    if P < 1 or H < 1:
        raise ValueError(f"w_hr: expected shape (P, H) with P, H >= 1, got {w_hr.shape}")
    check_array("w_hh", w_hh, (None, None), dt, device_ok)
    if w_hh.shape != (spec.gates * H, P):
        raise ValueError(f"w_hh: expected shape ({spec.gates}*H, P) = {(spec.gates * H, P)} with w_hr "
                         f"of shape (P, H) = {(P, H)}, got {w_hh.shape}")
    return H, P


def check_backward_grads(spec, dy, dh_T, dc_T, T, B, H, dt, device_ok=False, P=None):
    """Validate the incoming gradients of backward_layer; None means zero. P: the state's
    width when it differs from H (an LSTM with a projection)."""
    P = H if P is None else P
    if dy is not None:
        check_array("dy", dy, (T, B, P), dt, device_ok)
    if dh_T is not None:
        check_array("dh_T", dh_T, (B, P), dt, device_ok)
    if dc_T is not None:
        if not spec.has_cell_state:
            raise ValueError(f"dc_T: cell {spec.name!r} has no cell state, expected None")
        check_array("dc_T", dc_T, (B, H), dt, device_ok)


def overlapping(arrays):
    """True when any two of the arrays may share memory (grads_out, and a module's running
    gradients before it offers them as grads_out)."""
    return any(np.may_share_memory(a, b) for i, a in enumerate(arrays) for b in arrays[i + 1:])

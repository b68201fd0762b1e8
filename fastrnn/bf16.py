"""Precision "bfloat16": matrix products that read bfloat16 operands.

x, h and the weights are rounded to bfloat16 (8 significant bits) where they enter a
matrix product; the products of two bfloat16 values are exact in float32 and are summed
in float32, and everything else (biases, gates, nonlinearities, the cell state, the
outputs) stays float32. This is what vdpbf16ps computes, and what torch's CPU kernels do
for a bfloat16 LSTM, at twice float32's multiply-add rate on CPUs with AVX512_BF16.
Training rounds the same way in backprop: the gate gradients and the other operand (W_hh,
h, x or W_ih) of each of BPTT's products; the workspace and the sums stay float32.

The reference backend runs the same arithmetic in NumPy (operands rounded by
``round_bf16``), so the cpu kernels are checked against it like every fast path.
"""
import numpy as np

PRECISIONS = ("float32", "bfloat16")


def check_precision(precision, dtype=np.float32):
    """Validate a precision for modules of `dtype`; returns it. "float32" means the
    module's own dtype in every product (float64 modules included)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    if precision == "bfloat16" and np.dtype(dtype) != np.float32:
        raise TypeError(f"precision='bfloat16': expected a float32 module or arrays, got dtype {np.dtype(dtype)}")
    return precision


def bf16_bits(a):
    """`a` when it holds bfloat16 weights, else None: a uint16 array of the bits (the upper
    halves of the float32 values; a torch bfloat16 tensor's storage, which fastrnn.torch
    passes)."""
    return a if getattr(a, "dtype", None) == np.uint16 else None


def bits_to_float32(bits):
    """bfloat16 bits (uint16) as the float32 values they are (exact: the low halves zero)."""
    return (np.asarray(bits, np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def weights_format(w_ih, w_hh, precision, w_hr=None):
    """(w_ih, w_hh, held): the weights, bfloat16 ones as uint16 bits with held True. Held
    weights are taken with precision='bfloat16' only (their products are bfloat16 anyway),
    both of them, and not with a projection (whose kernels read float weights)."""
    a, b = bf16_bits(w_ih), bf16_bits(w_hh)
    if a is None and b is None:
        return w_ih, w_hh, False
    if a is None or b is None:
        raise TypeError(f"w_ih, w_hh: expected both bfloat16 (uint16 bits) or both float, got dtypes "
                        f"{getattr(w_ih, 'dtype', type(w_ih).__name__)} and "
                        f"{getattr(w_hh, 'dtype', type(w_hh).__name__)}")
    if precision != "bfloat16":
        raise TypeError("w_ih, w_hh: bfloat16 weights (uint16 bits) need precision='bfloat16', "
                        f"got precision={precision!r}")
    if w_hr is not None:
        raise TypeError("w_ih, w_hh: bfloat16 weights (uint16 bits) are not taken with a projection (w_hr); "
                        "pass float32 weights (precision='bfloat16' rounds them)")
    return a, b, True


def round_bf16(a):
    """float32 values rounded to the nearest bfloat16 (ties to even) and returned as
    float32, as vcvtne2ps2bf16 rounds: denormals become zeros of the same sign, NaN stays
    NaN (quiet), and values past bfloat16's largest finite one become infinities."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    bits = a.view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    exponent = bits & np.uint32(0x7F800000)
    out = np.where(exponent == 0, bits & np.uint32(0x80000000), rounded)
    nan = np.isnan(a)
    if nan.any():
        out = np.where(nan, (bits | np.uint32(0x00400000)) & np.uint32(0xFFFF0000), out)
    return out.astype(np.uint32).view(np.float32).reshape(a.shape)


def to_bf16_bits(a):
    """float32 values rounded to bfloat16 (as round_bf16) and held as uint16 bits: weights
    a bfloat16 product reads at half the bytes."""
    return (round_bf16(a).view(np.uint32) >> np.uint32(16)).astype(np.uint16)


def check_dense_args(x, w, bias):
    """(x, w, bias, held) of a bfloat16 dense layer, x @ w.T + bias: x (n, K) float32; w
    (V, K) float32, or uint16 bfloat16 bits (held True); bias (V,) float32 or None.
    Errors name the argument; x and w come back C-contiguous."""
    if not isinstance(x, np.ndarray) or x.ndim != 2 or x.dtype != np.float32:
        raise TypeError(f"x: expected a 2-D float32 numpy.ndarray (n, K), got "
                        f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
    held = bf16_bits(w) is not None
    if not isinstance(w, np.ndarray) or w.ndim != 2 or not (held or w.dtype == np.float32):
        raise TypeError(f"w: expected a 2-D float32 or uint16 (bfloat16 bits) numpy.ndarray (V, K), got "
                        f"{getattr(w, 'dtype', type(w).__name__)} {getattr(w, 'shape', '')}")
    if w.shape[1] != x.shape[1]:
        raise ValueError(f"w: expected shape (V, {x.shape[1]}) (x's K columns), got {w.shape}")
    if bias is not None and (not isinstance(bias, np.ndarray) or bias.dtype != np.float32
                             or bias.shape != (w.shape[0],)):
        raise ValueError(f"bias: expected a float32 numpy.ndarray of shape ({w.shape[0]},), got "
                         f"{getattr(bias, 'dtype', type(bias).__name__)} {getattr(bias, 'shape', '')}")
    return np.ascontiguousarray(x), np.ascontiguousarray(w), bias, held

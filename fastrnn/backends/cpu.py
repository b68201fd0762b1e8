"""The cpu backend: the recurrent time loop in fused C/OpenMP kernels (csrc/, via cffi).

Split of the work (DESIGN.md, "How a fast backend is fast"):
- input projection x W_ih^T for all steps and the weight-gradient products after BPTT are
  large matrix products done by numpy's BLAS (a well-kept, tuned library);
- the time loop runs inside one C call with one OpenMP parallel region, threads owning
  hidden units with all their gates, one barrier per step (csrc/recurrence.inc).
The C code never sees an unchecked array: checks.py validates, this file makes contiguous.
"""
import numpy as np

from ..threads import get_num_threads
from .checks import check_backward_grads, check_forward_args

name = "cpu"

try:
    from .._fastrnn_cpu import ffi, lib
    _import_error = None
except ImportError as exc:  # extension not built (no compiler or OpenMP at install time)
    ffi = lib = None
    _import_error = exc

# Inference computes the input projection this many values at a time, so memory stays
# O(B*H) however long the sequence (DESIGN.md: train=False keeps no workspace).
INFERENCE_CHUNK_VALUES = 1 << 22


def unavailable_reason():
    if lib is None:
        return (f"C extension not built ({_import_error}); reinstall with a C compiler "
                "and OpenMP (pip install -e .)")
    return None


def isa():
    """Instruction set the kernels dispatch to on this machine."""
    return ffi.string(lib.fastrnn_isa()).decode()


def _kernels(dtype):
    if dtype == np.float32:
        return lib.fastrnn_forward_f32, lib.fastrnn_backward_f32, "float *"
    return lib.fastrnn_forward_f64, lib.fastrnn_backward_f64, "double *"


def _ptr(a, ctype):
    """Raw pointer to a C-contiguous array (the caller keeps `a` alive), NULL for None."""
    return ffi.NULL if a is None else ffi.cast(ctype, a.ctypes.data)


def _check_status(status, what):
    if status == 1:
        raise MemoryError(f"fastrnn cpu {what}: out of memory for kernel buffers")
    if status != 0:
        raise RuntimeError(f"fastrnn cpu {what}: kernel rejected its arguments (status {status})")


def _contig(a):
    return None if a is None else np.ascontiguousarray(a)


def _fused_bias(spec, b_ih, b_hh, H, dtype):
    """Bias added to the input projection, and GRU's b_hn that stays inside r * (...)."""
    if b_ih is None:
        return None, None
    if spec.name != "gru":
        return b_ih + b_hh, None
    b = b_ih.copy()
    b[:2 * H] += b_hh[:2 * H]
    return b, np.ascontiguousarray(b_hh[2 * H:])


def forward_layer(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, *, lengths=None, reverse=False, train=True):
    spec, T, B, I, H, lengths = check_forward_args(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths)
    if (b_ih is None) != (b_hh is None):
        raise ValueError("b_ih, b_hh: expected both or neither")
    x, w_ih, w_hh, h0, c0 = map(_contig, (x, w_ih, w_hh, h0, c0))
    dt, G = x.dtype, spec.gates
    GH = G * H
    fwd, _, ctype = _kernels(dt)
    bias, b_hn = _fused_bias(spec, b_ih, b_hh, H, dt)
    lstm, gru = spec.has_cell_state, spec.name == "gru"

    y = np.empty((T, B, H), dt)
    h_T = h0.copy()
    c_T = c0.copy() if lstm else None
    ws = {}
    if train:
        ws = {"h_in": np.empty((T, B, H), dt), "gates": np.empty((T, B, GH), dt)}
        if lstm:
            ws["c_in"] = np.empty((T, B, H), dt)
            ws["c_out"] = np.empty((T, B, H), dt)
        if gru:
            ws["hh_n"] = np.empty((T, B, H), dt)

    chunk = T if train else max(1, min(T, INFERENCE_CHUNK_VALUES // max(1, B * GH)))
    starts = list(range(0, T, chunk)) if T and B else []
    if reverse:
        starts.reverse()
    xp_buf = np.empty((min(chunk, T) * B, GH), dt) if starts else None
    nthreads = get_num_threads()
    lengths_p = ffi.NULL if lengths is None else ffi.cast("int32_t *", lengths.ctypes.data)

    def at(name, t0):  # pointer to time step t0 of a workspace array
        a = ws.get(name)
        return ffi.NULL if a is None else ffi.cast(ctype, a[t0:].ctypes.data)

    for t0 in starts:
        n = min(chunk, T - t0)
        xp = xp_buf[:n * B]
        np.matmul(x[t0:t0 + n].reshape(n * B, I), w_ih.T, out=xp)
        if bias is not None:
            xp += bias
        status = fwd(spec.code, n, B, H, t0, int(bool(reverse)),
                     _ptr(xp, ctype), _ptr(w_hh, ctype), _ptr(b_hn, ctype),
                     _ptr(h_T, ctype), _ptr(c_T, ctype), lengths_p,
                     ffi.cast(ctype, y[t0:].ctypes.data), _ptr(h_T, ctype), _ptr(c_T, ctype),
                     at("h_in", t0), at("gates", t0), at("c_in", t0), at("c_out", t0),
                     at("hh_n", t0), nthreads)
        _check_status(status, "forward")

    saved = None
    if train:
        saved = dict(ws, cell=spec.name, x=x, w_ih=w_ih, w_hh=w_hh, lengths=lengths,
                     reverse=bool(reverse))
    return y, h_T, c_T, saved


def backward_layer(cell, saved, dy, dh_T, dc_T, *, need_dx=True):
    if saved is None:
        raise ValueError("saved: no workspace; run forward_layer with train=True before backward_layer")
    if not isinstance(saved, dict) or saved.get("cell") != cell or "gates" not in saved:
        raise ValueError(f"saved: expected the workspace of a {cell!r} cpu forward_layer call")
    from ..cells import get_cell
    spec = get_cell(cell)
    x, w_ih, w_hh = saved["x"], saved["w_ih"], saved["w_hh"]
    T, B, I = x.shape
    H = w_hh.shape[1]
    GH = spec.gates * H
    dt = x.dtype
    check_backward_grads(spec, dy, dh_T, dc_T, T, B, H, dt)
    dy, dh_T, dc_T = map(_contig, (dy, dh_T, dc_T))
    _, bwd, ctype = _kernels(dt)
    gru = spec.name == "gru"

    dgi = np.empty((T, B, GH), dt)
    dgh_n = np.empty((T, B, H), dt) if gru else None
    dh0 = np.empty((B, H), dt)
    dc0 = np.empty((B, H), dt) if spec.has_cell_state else None
    lengths = saved["lengths"]
    status = bwd(spec.code, T, B, H, int(saved["reverse"]), _ptr(w_hh, ctype),
                 _ptr(dy, ctype), _ptr(dh_T, ctype), _ptr(dc_T, ctype),
                 ffi.NULL if lengths is None else ffi.cast("int32_t *", lengths.ctypes.data),
                 _ptr(saved["h_in"], ctype), _ptr(saved["gates"], ctype),
                 _ptr(saved.get("c_in"), ctype), _ptr(saved.get("c_out"), ctype),
                 _ptr(saved.get("hh_n"), ctype), _ptr(dgi, ctype), _ptr(dgh_n, ctype),
                 _ptr(dh0, ctype), _ptr(dc0, ctype), get_num_threads())
    _check_status(status, "backward")

    # Weight gradients: big products over all T*B rows at once (BLAS).
    d2 = dgi.reshape(T * B, GH)
    h2 = saved["h_in"].reshape(T * B, H)
    dw_ih = d2.T @ x.reshape(T * B, I)
    db_ih = d2.sum(axis=0)
    dx = (d2 @ w_ih).reshape(T, B, I) if need_dx else None
    if gru:
        dn2 = dgh_n.reshape(T * B, H)
        dw_hh = np.empty_like(w_hh)
        dw_hh[:2 * H] = d2[:, :2 * H].T @ h2
        dw_hh[2 * H:] = dn2.T @ h2
        db_hh = np.concatenate([db_ih[:2 * H], dn2.sum(axis=0)])
    else:
        dw_hh = d2.T @ h2
        db_hh = db_ih.copy()
    return dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh

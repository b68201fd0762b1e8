"""Optional cuBLAS (through CuPy) for the cuda backend's large matrix products.

The input projection and the weight gradients are plain matrix products with no
recurrence; where CuPy is installed, cuBLAS does them several times faster than the
Numba tiled kernel of cuda_dense.py (which remains the default without CuPy and is
what FASTRNN_CUDA_MATMUL=numba selects). TF32 stays off unless CuPy's own CUPY_TF32=1
says otherwise. CuPy wraps the Numba arrays without copies (__cuda_array_interface__),
and both run on the legacy default stream, so the order of work is kept.
"""
import os

_cp = None


def available():
    global _cp
    if os.environ.get("FASTRNN_CUDA_MATMUL", "auto") == "numba" or os.environ.get("NUMBA_ENABLE_CUDASIM"):
        return False
    if _cp is None:
        try:
            import cupy
            _cp = cupy
        except Exception:  # CuPy missing or broken: the Numba kernels do the products
            _cp = False
    return _cp is not False


def projection(x, w_ih, bias, out, TB, GH, I):
    """out (TB, GH) = x (TB, I) @ w_ih^T (+ bias)."""
    cp = _cp
    o = cp.asarray(out).reshape(TB, GH)
    cp.matmul(cp.asarray(x).reshape(TB, I), cp.asarray(w_ih).T, out=o)
    if bias is not None:
        o += cp.asarray(bias)


def gradients(dgi, dgh, x, hbuf, w_ih, dw_ih, dw_hh, db_ih, db_hh, dx, T, B, I, H, GH, Bp, rev):
    """dW_ih = dgi^T x, dW_hh = dgh^T h_in, db = column sums, dx = dgi W_ih (all written)."""
    cp = _cp
    TB = T * B
    gi = cp.asarray(dgi).reshape(TB, GH)
    gh = cp.asarray(dgh).reshape(TB, GH)
    # h_in(t) is hbuf slot t + rev, stored (H, Bp): make it (T*B, H) once
    h_in = cp.ascontiguousarray(cp.asarray(hbuf).reshape(-1, H, Bp)[rev:rev + T, :, :B]
                                .transpose(0, 2, 1)).reshape(TB, H)
    cp.matmul(gi.T, cp.asarray(x).reshape(TB, I), out=cp.asarray(dw_ih).reshape(GH, I))
    cp.matmul(gh.T, h_in, out=cp.asarray(dw_hh).reshape(GH, H))
    gi.sum(axis=0, out=cp.asarray(db_ih).reshape(GH))
    gh.sum(axis=0, out=cp.asarray(db_hh).reshape(GH))
    if dx is not None and I:
        cp.matmul(gi, cp.asarray(w_ih).reshape(GH, I), out=cp.asarray(dx).reshape(TB, I))

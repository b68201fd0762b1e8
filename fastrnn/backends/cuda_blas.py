"""Optional cuBLAS (through CuPy) for the cuda backend's large matrix products.

The input projection and the weight gradients are plain matrix products with no
recurrence; where CuPy is installed, cuBLAS does them several times faster than the
Numba tiled kernel of cuda_dense.py (which remains the default without CuPy and is
what FASTRNN_CUDA_MATMUL=numba selects). TF32 stays off unless CuPy's own CUPY_TF32=1
says otherwise. CuPy wraps the Numba arrays without copies (__cuda_array_interface__),
and both run on the legacy default stream, so the order of work is kept.

Every product calls cuBLAS's gemm directly (CuPy supplies the library and its handle):
cupy.matmul costs tens of microseconds of Python a call, with its array wrappers more,
and a short layer call is mostly host time. Every call makes a projection, every BPTT
call five weight-gradient products, and a large-batch sequence T step products.
"""
import numpy as np

from . import cuda_dense as dense
from . import switches

_cp = None
NAME = "cuBLAS"   # for fastrnn info


def available():
    global _cp
    if switches.get("FASTRNN_CUDA_MATMUL", "auto") == "numba" or switches.get("NUMBA_ENABLE_CUDASIM"):
        return False
    if _cp is None:
        try:
            import cupy
            _cp = cupy
        except Exception:  # CuPy missing or broken: the Numba kernels do the products
            _cp = False
    return _cp is not False


def projection(x, w_ih, bias, out, TB, GH, I):
    """out (TB, GH) = x (TB, I) @ w_ih^T (+ bias). cuBLAS's gemm is called directly: every
    layer call makes this product, and cupy.matmul with its three array wrappers costs
    tens of microseconds of host time, a fair part of a short call."""
    gemm(x, w_ih, out, TB, GH, I, b_t=True)()
    if bias is not None:
        o = _cp.asarray(out).reshape(TB, GH)
        o += _cp.asarray(bias)


def gradients(dgi, dgh, x, hbuf, w_ih, dw_ih, dw_hh, db_ih, db_hh, dx, T, B, I, H, GH, Bp, rev):
    """dW_ih = dgi^T x, dW_hh = dgh^T h_in, db = column sums, dx = dgi W_ih (all written).
    cuBLAS's gemm called directly, as in projection: a column sum is a product with a
    vector of ones, and h_in(t) (hbuf slot t + rev, stored (H, Bp)) is gathered into
    (T*B, H) rows by one kernel."""
    from . import cuda as be   # its scratch buffers (cuda.py imports this module)
    TB = T * B
    h_in = be._scratch("h_in", TB * H, dgh.dtype)
    dense.states_by_row(hbuf, h_in, T, B, H, Bp, rev)
    ones = be._scratch("ones", TB, dgi.dtype, value=1)
    gemm(dgi, x, dw_ih, GH, I, TB, a_t=True)()
    gemm(dgh, h_in, dw_hh, GH, H, TB, a_t=True)()
    gemm(dgi, ones, db_ih, GH, 1, TB, a_t=True)()
    gemm(dgh, ones, db_hh, GH, 1, TB, a_t=True)()
    if dx is not None and I:
        gemm(dgi, w_ih, dx, TB, I, GH)()


_ONE_ZERO = {}
OP_N, OP_T = 0, 1   # cuBLAS operations: as stored, transposed


def _gemm(ta, tb, m, n, k, a, lda, b, ldb, c, ldc):
    """f(boff, coff=0): column-major C (m x n) = op(A) op(B) on flat device arrays, B read
    from element offset boff and C written from coff, on the legacy default stream (where
    the recurrence kernels run).
    Pointers and the handle are looked up once: f is called once per step, and its Python
    cost is part of what a short step costs."""
    from cupy_backends.cuda.libs import cublas
    dt = np.dtype(c.dtype)
    consts = _ONE_ZERO.get(dt)
    if consts is None:
        consts = _ONE_ZERO[dt] = np.array([1, 0], dt)
    handle = _cp.cuda.device.get_cublas_handle()
    cublas.setStream(handle, 0)
    gemm = cublas.sgemm if dt == np.float32 else cublas.dgemm
    item = dt.itemsize
    one, zero = consts.ctypes.data, consts.ctypes.data + item
    pa, pb, pc = (x.device_ctypes_pointer.value for x in (a, b, c))

    def f(boff, coff=0):
        gemm(handle, ta, tb, m, n, k, one, pa, lda, pb + boff * item, ldb, zero, pc + coff * item, ldc)
    return f


def gemm(a, b, c, M, N, K, *, a_t=False, b_t=False):
    """f(aoff=0, coff=0): row-major C (M, N) at c[coff:] = op(A) op(B), with A (M, K) at
    a[aoff:] ((K, M) read transposed when a_t) and B (K, N) ((N, K) when b_t); every operand
    contiguous. The projected LSTM's per-step and weight-gradient products."""
    if M == 0 or N == 0:
        return lambda aoff=0, coff=0: None
    # row-major C is column-major C^T (N x M) = op(B)^T op(A)^T: B and A swap places
    # (cuBLAS wants every leading dimension >= 1, even beside a K = 0)
    f = _gemm(OP_T if b_t else OP_N, OP_T if a_t else OP_N, N, M, K,
              b, max(1, K if b_t else N), a, max(1, M if a_t else K), c, N)
    return lambda aoff=0, coff=0: f(aoff, coff)


def step_forward(hbuf, w_hh, pre, B, H, GH, Bp):
    """f(hoff): pre (B, GH) = h (B, H) @ W_hh^T, h stored (H, Bp) at hbuf[hoff:]."""
    # column-major: pre^T (GH x B) = op_T(W_hh^T (H x GH)) op_T(h^T (Bp x H, ld Bp))
    return _gemm(OP_T, OP_T, GH, B, H, w_hh, H, hbuf, Bp, pre, GH)


def step_backward(dgh, w_hh, pre, B, H, GH):
    """f(goff): pre (B, H) = dgh (B, GH) @ W_hh, dgh at dgh[goff:]."""
    # column-major: pre^T (H x B) = W_hh^T (H x GH, ld H) dgh^T (GH x B, ld GH)
    return _gemm(OP_N, OP_N, H, B, GH, w_hh, H, dgh, GH, pre, H)

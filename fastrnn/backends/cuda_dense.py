"""Numba CUDA dense kernels for the cuda backend: one strided matrix product, a column
sum and a fill.

The product covers every layout the recurrence needs (x @ W_ih^T, dG^T @ x, dG^T @ h,
dG @ W_ih) without copies: each operand is a flat array with a base offset and strides,
and the summed index k may be two-level, k = k1 * K2 + k2 (time, batch), so that a
(T, H, B) state history pairs with a (T, B, G*H) gradient array directly.
"""
import math

import numpy as np
from numba import cuda, int32

from .cuda_launch import SIMULATOR, launch, prepared

# C tile (TILE x TILE) a block of TD x TD threads, 4 x 4 outputs a thread. Under the
# simulator (a Python thread each) a 16-wide tile: the tests' small products then run a
# 16th of the Python arithmetic with the same code, and cross tile edges more often.
TILE = 16 if SIMULATOR else 64
TD = TILE // 4
THREADS = TD * TD
BK = 16         # summed-index depth per shared-memory stage
TILE_PAD = TILE + 1   # padded shared row: no bank conflicts on the k-fastest loads
LOADS = TILE * BK // THREADS   # elements of each operand a thread stages a stage
NAME = "Numba"   # for fastrnn info


def _kernels(nb_dtype):
    @cuda.jit(device=True, inline=True)
    def load_tile(X, off, so, s1, s2, o0, O, k0, K, K2, e, dst):
        """Element e of a TILE (outer index o) x BK (summed index k) operand tile into
        dst[k, o]; X(o, k) = X[off + o*so + k1*s1 + k2*s2], k = k1*K2 + k2; 0 outside."""
        # o-fastest loads when the operand is contiguous in o, else k-fastest (coalescing)
        if so == 1:
            oo = e % TILE
            kk = e // TILE
        else:
            kk = e % BK
            oo = e // BK
        o = o0 + oo
        k = k0 + kk
        v = nb_dtype(0)
        if o < O and k < K:
            k1 = 0
            if K2 < K:   # two-level index only when needed: integer division is slow
                k1 = int32(k) // int32(K2)
            v = X[off + o * so + k1 * s1 + (k - k1 * K2) * s2]
        dst[kk, oo] = v

    @cuda.jit
    def matmul(A, aoff, sam, sa1, sa2, Bm, boff, sb1, sb2, sbn, C, coff, scm, scn,
               M, N, K, K2, bias, has_bias, accumulate):
        """C[m, n] (+)= sum_k A(m, k) B(k, n) (+ bias[n] when has_bias)."""
        As = cuda.shared.array((BK, TILE_PAD), nb_dtype)
        Bs = cuda.shared.array((BK, TILE_PAD), nb_dtype)
        acc = cuda.local.array(16, nb_dtype)
        tid = cuda.threadIdx.x
        tx = tid % TD
        ty = tid // TD
        m0 = cuda.blockIdx.y * TILE
        n0 = cuda.blockIdx.x * TILE
        for i in range(16):
            acc[i] = 0
        for k0 in range(0, K, BK):
            for l in range(LOADS):
                e = tid + l * THREADS
                load_tile(A, aoff, sam, sa1, sa2, m0, M, k0, K, K2, e, As)
                load_tile(Bm, boff, sbn, sb1, sb2, n0, N, k0, K, K2, e, Bs)
            cuda.syncthreads()
            for kk in range(BK):
                for i in range(4):
                    a = As[kk, ty + TD * i]
                    for jj in range(4):
                        acc[i * 4 + jj] += a * Bs[kk, tx + TD * jj]
            cuda.syncthreads()
        for i in range(4):
            m = m0 + ty + TD * i
            if m < M:
                for jj in range(4):
                    n = n0 + tx + TD * jj
                    if n < N:
                        v = acc[i * 4 + jj]
                        if has_bias:
                            v += bias[n]
                        o = coff + m * scm + n * scn
                        if accumulate:
                            C[o] += v
                        else:
                            C[o] = v

    @cuda.jit
    def colsum(X, R, N, out):
        """out[n] += sum over the R rows of X (R, N); blocks split rows, atomics combine."""
        n = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if n >= N:
            return
        per = (R + cuda.gridDim.y - 1) // cuda.gridDim.y
        r0 = cuda.blockIdx.y * per
        s = nb_dtype(0)
        for r in range(r0, min(R, r0 + per)):
            s += X[r * N + n]
        cuda.atomic.add(out, n, s)

    return matmul, colsum


_CACHE = {}


def kernels(dtype):
    dtype = np.dtype(dtype)
    if dtype not in _CACHE:
        from numba import from_dtype
        _CACHE[dtype] = _kernels(from_dtype(dtype))
    return _CACHE[dtype]


class Operand:
    """A flat device array read as M x K (or K x N) with a base offset and strides;
    k = k1 * K2 + k2, with s1 the stride of k1 and s2 that of k2."""

    def __init__(self, arr, off, s_outer, s1, s2, K2):
        self.arr, self.off, self.s_outer, self.s1, self.s2, self.K2 = arr, off, s_outer, s1, s2, K2


def matmul(a, b, c, coff, scm, scn, M, N, K, *, bias=None, accumulate=False):
    """C[m, n] (+)= sum_k a(m, k) b(k, n); a.K2 must equal b.K2."""
    if M == 0 or N == 0:
        return
    if K == 0:
        if not accumulate:
            raise ValueError("matmul with K = 0 must accumulate")
        return
    launch(*_matmul_launch(a, b, c, coff, scm, scn, M, N, K, bias, accumulate))


# where _matmul_launch puts a's offset and c's: the arguments a prepared launch varies
A_OFF, C_OFF = 1, 11


def _matmul_launch(a, b, c, coff, scm, scn, M, N, K, bias=None, accumulate=False):
    """(kernel, grid, threads, arguments) of matmul's launch."""
    assert a.K2 == b.K2
    mm, _ = kernels(c.dtype)
    grid = (math.ceil(N / TILE), math.ceil(M / TILE))
    bias_arr = bias if bias is not None else c
    return mm, grid, THREADS, (a.arr, a.off, a.s_outer, a.s1, a.s2, b.arr, b.off, b.s1, b.s2,
                               b.s_outer, c, coff, scm, scn, M, N, K, a.K2, bias_arr,
                               bias is not None, accumulate)


def _prepared_matmul(a, b, c, scm, scn, M, N, K, vary):
    """matmul as a prepared launch (cuda_launch.prepared): f(*offsets) sets the arguments
    at `vary` (A_OFF, C_OFF) and launches, writing no other parameter (a per-step product
    ran matmul's whole argument packing every step). M, N, K > 0."""
    return prepared(*_matmul_launch(a, b, c, 0, scm, scn, M, N, K), vary=vary)


def colsum(x, rows, cols, out):
    """out[:cols] += x.reshape(rows, cols).sum(0) (x flat on the device)."""
    if rows == 0 or cols == 0:
        return
    _, cs = kernels(out.dtype)
    split = max(1, min(256, rows // 64))
    launch(cs, (math.ceil(cols / 128), split), 128, (x, rows, cols, out))


# The same entry points as cuda_blas (the backend uses whichever is available).
def projection(x, w_ih, bias, out, TB, GH, I):
    """out (TB, GH) = x (TB, I) @ w_ih^T (+ bias)."""
    matmul(Operand(x, 0, I, 0, 1, I), Operand(w_ih, 0, I, 0, 1, I),
           out, 0, GH, 1, TB, GH, I, bias=bias, accumulate=False)


def gradients(dgi, dgh, x, hbuf, w_ih, dw_ih, dw_hh, db_ih, db_hh, dx, T, B, I, H, GH, Bp, rev):
    """dW_ih = dgi^T x, dW_hh = dgh^T h_in, db = column sums, dx = dgi W_ih (all written)."""
    TB = T * B
    # dW_ih[m, i] = sum_tb dgi[tb, m] x[tb, i]
    matmul(Operand(dgi, 0, 1, 0, GH, TB), Operand(x, 0, 1, 0, I, TB),
           dw_ih, 0, I, 1, GH, I, TB)
    # dW_hh[m, j] = sum_{t,b} dgh[t, b, m] h_in(t)[j, b], h_in(t) = hbuf slot t + rev
    matmul(Operand(dgh, 0, 1, B * GH, GH, B), Operand(hbuf, rev * H * Bp, Bp, H * Bp, 1, B),
           dw_hh, 0, H, 1, GH, H, TB)
    for db, g in ((db_ih, dgi), (db_hh, dgh)):
        fill(db, 0)   # colsum adds with atomics
        colsum(g, TB, GH, db)
    if dx is not None and I:
        # dx[tb, i] = sum_m dgi[tb, m] W_ih[m, i]
        matmul(Operand(dgi, 0, GH, 0, 1, GH), Operand(w_ih, 0, 1, 0, I, GH),
               dx, 0, I, 1, TB, I, GH)


def step_forward(hbuf, w_hh, pre, B, H, GH, Bp):
    """f(hoff): pre (B, GH) = h (B, H) @ W_hh^T, h stored (H, Bp) at hbuf[hoff:]."""
    return _prepared_matmul(Operand(hbuf, 0, 1, 0, Bp, H), Operand(w_hh, 0, H, 0, 1, H),
                            pre, GH, 1, B, GH, H, vary=(A_OFF,))


def step_backward(dgh, w_hh, pre, B, H, GH):
    """f(goff): pre (B, H) = dgh (B, GH) @ W_hh, dgh at dgh[goff:]."""
    return _prepared_matmul(Operand(dgh, 0, GH, 0, 1, GH), Operand(w_hh, 0, 1, 0, H, GH),
                            pre, H, 1, B, H, GH, vary=(A_OFF,))


def gemm(a, b, c, M, N, K, *, a_t=False, b_t=False):
    """f(aoff=0, coff=0): row-major C (M, N) at c[coff:] = op(A) op(B), with A (M, K) at
    a[aoff:] ((K, M) read transposed when a_t) and B (K, N) ((N, K) when b_t); every operand
    contiguous. The projected LSTM's per-step and weight-gradient products."""
    if M == 0 or N == 0:
        return lambda aoff=0, coff=0: None
    if K == 0:
        raise ValueError("gemm: K = 0 (nothing to sum)")
    sam, sa2 = (1, M) if a_t else (K, 1)
    sbn, sb2 = (K, 1) if b_t else (1, N)
    call = _prepared_matmul(Operand(a, 0, sam, 0, sa2, K), Operand(b, 0, sbn, 0, sb2, K),
                            c, N, 1, M, N, K, vary=(A_OFF, C_OFF))
    return lambda aoff=0, coff=0: call(aoff, coff)


def states_by_row(hbuf, out, T, B, H, Bp, first):
    """out (T*B, H): row t*B + b is state column b of hbuf slot first + t (slots of
    (H, Bp)), the layout the weight-gradient product reads h_in in."""
    if out.size:
        launch(_states_kernel, math.ceil(out.size / 256), 256, (hbuf, out, B, H, Bp, first))


@cuda.jit
def _states_kernel(hbuf, out, B, H, Bp, first):
    i = cuda.grid(1)
    if i < out.size:
        tb = i // H
        t = tb // B
        out[i] = hbuf[((first + t) * H + i - tb * H) * Bp + tb - t * B]


def fill(a, value):
    """Set every element of device array a to value."""
    if a.size:
        launch(_fill_kernel, math.ceil(a.size / 256), 256, (a, value))


@cuda.jit
def _fill_kernel(a, v):
    i = cuda.grid(1)
    if i < a.size:
        a[i] = v

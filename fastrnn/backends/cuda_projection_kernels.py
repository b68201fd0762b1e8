"""Numba CUDA elementwise kernels of the projected LSTM (PyTorch's proj_size = P), one launch
a step each; the step's products run between them (cuda_projection.py).

Layouts (flat, row-major, time t of the sequence, sequence b):
  xp, gates, dg  (T, B, 4H): xp = x W_ih^T without biases; gates i, f, g, o after their
                             nonlinearities; dg the gate pre-activations' gradients
  c_in, c_out, m (T, B, H): the cell state before and after the step, m = o * tanh(c_out)
                             (inference: m is one (B, H) row block, no c_in/c_out/gates)
  h_in, y, dhs   (T, B, P): the state before the step, the output, the gradient reaching
                             h' = W_hr m
  pre (B, 4H), hcur (B, P), c (B, H), dm (B, H), dh and hnew (B, P): one step's rows
Step s of the forward works on time t = s (t = T-1-s when reversed); phase s of BPTT on
the step taken s-th from the end. A sequence past its length keeps its h and c, has
m = 0 and y = 0, and gets dg = 0.
"""

from numba import cuda

from .cuda_cells import cell_math
from .cuda_recurrence import bptt_time as _bptt_time

bptt_time = cuda.jit(device=True, inline=True)(_bptt_time)


def _build(nb):
    zero = nb(0)
    cm = cell_math(nb)

    @cuda.jit
    def fwd_gates(s, T, rev, train, pre, xp, b_ih, b_hh, has_bias, lengths, hcur, c, gates, c_in, c_out, m,
                  h_in, B, H, P):
        """One thread per (b, j): the gates from pre + xp + biases, the new cell, and m;
        in training also the step's gates, cells and input state h_in[t]."""
        i = cuda.grid(1)
        if i >= B * H:
            return
        t = T - 1 - s if rev else s
        b = i // H
        j = i - b * H
        GH = 4 * H
        xo = (t * B + b) * GH + j
        po = b * GH + j
        a = cuda.local.array(4, nb)
        for g in range(4):
            v = pre[po + g * H] + xp[xo + g * H]
            if has_bias:
                v += b_ih[g * H + j] + b_hh[g * H + j]
            a[g] = v
        cp = c[i]
        ig, fg, gg, og, cn, mv = cm.lstm_fwd(a[0], a[1], a[2], a[3], cp)
        valid = t < lengths[b]
        if valid:
            c[i] = cn
        row = t * B + b
        mv = mv if valid else zero
        if train:
            m[row * H + j] = mv
            gates[xo] = ig
            gates[xo + H] = fg
            gates[xo + 2 * H] = gg
            gates[xo + 3 * H] = og
            c_in[row * H + j] = cp
            c_out[row * H + j] = cn
            for p in range(j, P, H):   # P may exceed H: the row's threads copy it in strides
                h_in[row * P + p] = hcur[b * P + p]
        else:
            m[i] = mv

    @cuda.jit
    def fwd_commit(s, T, rev, lengths, y, hcur, B, P):
        """One thread per (b, p), after y[t] = m W_hr^T: a valid sequence's h becomes y[t];
        a finished one keeps its h, and its y row is zero (m was)."""
        i = cuda.grid(1)
        if i >= B * P:
            return
        t = T - 1 - s if rev else s
        b = i // P
        o = t * B * P + i
        if t < lengths[b]:
            hcur[i] = y[o]
        else:
            y[o] = zero   # m's zero row gives 0 already, unless W_hr holds inf or nan

    @cuda.jit
    def bwd_carry(s, T, rev, lengths, dy, has_dy, hnew, dh, dhs, B, P):
        """One thread per (b, p), phase s: the carry dh takes the last phase's hnew = dg W_hh
        where that step was valid; dhs[t] = dh + dy[t] where this one is, else 0. Phase T
        only finishes the carry (dh0)."""
        i = cuda.grid(1)
        if i >= B * P:
            return
        b = i // P
        if s > 0 and bptt_time(s - 1, T, rev) < lengths[b]:
            dh[i] = hnew[i]
        if s < T:
            t = bptt_time(s, T, rev)
            v = zero
            if t < lengths[b]:
                v = dh[i]
                if has_dy:
                    v += dy[t * B * P + i]
            dhs[t * B * P + i] = v

    @cuda.jit
    def bwd_gates(s, T, rev, lengths, gates, c_in, c_out, dm, dc, dg, B, H):
        """One thread per (b, j), after dm = dhs[t] W_hr: the gates' gradients dg[t] and
        the cell carry dc."""
        i = cuda.grid(1)
        if i >= B * H:
            return
        t = bptt_time(s, T, rev)
        b = i // H
        j = i - b * H
        row = t * B + b
        go = row * 4 * H + j
        if t < lengths[b]:
            fg = gates[go + H]
            di, df, dgg, do, dct = cm.lstm_bwd(dm[i], dc[i], gates[go], fg, gates[go + 2 * H], gates[go + 3 * H],
                                               c_out[row * H + j], c_in[row * H + j])
            dg[go] = di
            dg[go + H] = df
            dg[go + 2 * H] = dgg
            dg[go + 3 * H] = do
            dc[i] = dct * fg
        else:
            for g in range(4):
                dg[go + g * H] = zero

    return dict(fwd_gates=fwd_gates, fwd_commit=fwd_commit, bwd_carry=bwd_carry, bwd_gates=bwd_gates)


_CACHE = {}


def kernels(dtype):
    """The four kernels for float32 or float64 (numpy dtype)."""
    from numba import from_dtype
    hit = _CACHE.get(dtype)
    if hit is None:
        hit = _CACHE[dtype] = _build(from_dtype(dtype))
    return hit

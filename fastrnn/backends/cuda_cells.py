"""The cells' equations (DESIGN.md) as Numba CUDA device functions, for one (unit,
sequence) of a step: the recurrence kernels (cuda_recurrence.py, cuda_local.py) and the
projected LSTM's (cuda_projection_kernels.py) call these and keep only their own loads
and stores. Inline: the kernels compile as if the lines were written out in them.

Forward: gate pre-activations in, the gates (what training saves) and the new state out.
BPTT: the gradient reaching the step's output (dho), the saved gates in, the gates'
pre-activation gradients out.
"""
import math
from collections import namedtuple

from numba import cuda

CellMath = namedtuple("CellMath", "sigm lstm_fwd gru_fwd rnn_fwd lstm_bwd gru_bwd rnn_bwd")


def cell_math(nb_dtype, relu=False):
    """The device functions for one element type; rnn_fwd/rnn_bwd are tanh's, or relu's."""
    one, zero = nb_dtype(1), nb_dtype(0)
    tanh = not relu

    @cuda.jit(device=True, inline=True)
    def sigm(a):
        return one / (one + math.exp(-a))

    @cuda.jit(device=True, inline=True)
    def lstm_fwd(ai, af, ag, ao, c):
        """(i, f, g, o, c', h') from the four pre-activations and the previous c."""
        ig = sigm(ai)
        fg = sigm(af)
        gg = math.tanh(ag)
        og = sigm(ao)
        cn = fg * c + ig * gg
        return ig, fg, gg, og, cn, og * math.tanh(cn)

    @cuda.jit(device=True, inline=True)
    def gru_fwd(ar, az, xn, hn_, hprev):
        """(r, z, n, h'): xn is n's input side with b_in, hn_ = W_hn h + b_hn."""
        rg = sigm(ar)
        zg = sigm(az)
        ng = math.tanh(xn + rg * hn_)
        return rg, zg, ng, (one - zg) * ng + zg * hprev

    @cuda.jit(device=True, inline=True)
    def rnn_fwd(a):
        if tanh:
            return math.tanh(a)
        return a if a > zero else zero

    @cuda.jit(device=True, inline=True)
    def lstm_bwd(dho, dc, ig, fg, gg, og, c_out, c_in):
        """(di, df, dg, do, dc_t): dc the cell gradient from the step after, dc_t the
        cell's whole gradient at this step (the step before gets dc_t * f)."""
        tc = math.tanh(c_out)
        dct = dc + dho * og * (one - tc * tc)
        return (dct * gg * ig * (one - ig), dct * c_in * fg * (one - fg), dct * ig * (one - gg * gg),
                dho * tc * og * (one - og), dct)

    @cuda.jit(device=True, inline=True)
    def gru_bwd(dho, rg, zg, ng, hin, hn_):
        """(dr, dz, dn, dn * r): the last is the gradient of hn_ = W_hn h + b_hn."""
        dn = dho * (one - zg) * (one - ng * ng)
        dz = dho * (hin - ng) * zg * (one - zg)
        return dn * hn_ * rg * (one - rg), dz, dn, dn * rg

    @cuda.jit(device=True, inline=True)
    def rnn_bwd(dho, y):
        """The pre-activation's gradient from the output y = act(a)."""
        if tanh:
            return dho * (one - y * y)
        return dho if y > zero else zero

    return CellMath(sigm, lstm_fwd, gru_fwd, rnn_fwd, lstm_bwd, gru_bwd, rnn_bwd)

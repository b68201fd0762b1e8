"""The cuda backend's LSTM with a projection (PyTorch's proj_size = P > 0): one layer, one
direction. cuda.forward_layer and cuda.backward_layer hand over here when a w_hr is given;
the shapes are already checked (checks.check_forward_args with w_hr), the arrays are on
the device and the backend's lock is held.

A step is four launches: the product pre = h W_hh^T, the gates (fwd_gates), the product
y[t] = m W_hr^T and the state update (fwd_commit); BPTT mirrors it (bwd_carry, dm = dhs[t]
W_hr, bwd_gates, dg[t] W_hh). The products are cuBLAS where CuPy is installed, else the
tiled Numba kernel (cuda_dense.gemm), as for the unprojected path's large-batch steps. The
projection needs every unit's m before any h', a second grid-wide barrier a step, so the
persistent kernels do not cover it. Layouts: cuda_projection_kernels' docstring.
"""
import math

from numba import cuda

from ..cells import get_cell
from . import cuda as be   # the backend's scratch buffers, products and output helpers
from . import cuda_dense as dense
from .checks import check_backward_grads
from .cuda_launch import SIMULATOR, launch, prepared
from .cuda_memory import device_array
from .cuda_projection_kernels import kernels

THREADS = 32 if SIMULATOR else 256   # the simulator runs each thread as a Python thread

_SPEC = get_cell("lstm")
_WORKSPACE = ("h_in", "gates", "c_in", "c_out", "m")


def _prepared(kern, n, args):
    """A per-step launch of kern over n threads, the step index (args[0]) given per call."""
    return prepared(kern, max(1, math.ceil(n / THREADS)), THREADS, (0,) + args, vary=0)


def forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, train, host):
    """Forward of one layer-direction on device arrays; host: return numpy arrays."""
    T, B, I = x.shape
    P, H = w_hr.shape
    dt, GH = x.dtype, 4 * H
    y = device_array((T, B, P), dt)
    h_T, c_T = device_array((B, P), dt), device_array((B, H), dt)   # the running h and c
    _copy(h0, h_T)
    _copy(c0, c_T)
    ws = {}
    if train:
        ws = {k: device_array(n, dt) for k, n in (("h_in", T * B * P), ("gates", T * B * GH),
                                                   ("c_in", T * B * H), ("c_out", T * B * H),
                                                   ("m", T * B * H))}
    if T and B:
        k = kernels(dt)
        dummy = be._scratch("dummy", 1, dt)
        xp = be._scratch("xp", T * B * GH, dt)
        if I:   # xp = x W_ih^T; the gates add the biases
            be._products().projection(x, w_ih, None, xp, T * B, GH, I)
        else:
            dense.fill(xp, 0)
        pre = be._scratch("pre", B * GH, dt)
        m = ws["m"] if train else be._scratch("m", B * H, dt)
        has_bias = b_ih is not None
        dlen = be._device_lengths(lengths)
        gates = _prepared(k["fwd_gates"], B * H, (
            T, int(reverse), int(train), pre, xp, b_ih if has_bias else dummy, b_hh if has_bias else dummy,
            has_bias, dlen, h_T, c_T, *(ws.get(n, dummy) for n in _WORKSPACE[1:4]), m, ws.get("h_in", dummy),
            B, H, P))
        commit = _prepared(k["fwd_commit"], B * P, (T, int(reverse), dlen, y, h_T, B, P))
        products = be._products()
        hidden = products.gemm(h_T, w_hh, pre, B, GH, P, b_t=True)
        project = products.gemm(m, w_hr, y, B, P, H, b_t=True)
        for s in range(T):
            t = T - 1 - s if reverse else s
            hidden()
            gates(s)
            project(t * B * H if train else 0, t * B * P)
            commit(s)
    be.last_path["forward"] = "projection"
    saved = None
    if train:
        saved = be._saved(_SPEC, x, w_ih, w_hh, lengths, reverse, host, T, B, H, ws)
        saved.update(w_hr=w_hr, P=P)
    return be._out(host, y, h_T, c_T, saved)


def backward(saved, dy, dh_T, dc_T, need_dx):
    """BPTT from `saved` (kept); returns dx, dh0 (B,P), dc0 (B,H), dw_ih, dw_hh, db_ih,
    db_hh, dw_hr, on the host when the forward's x was."""
    x, w_ih, w_hh, w_hr, lengths = (saved[n] for n in ("x", "w_ih", "w_hh", "w_hr", "lengths"))
    T, B, H, P, host, rev = saved["T"], saved["B"], saved["H"], saved["P"], saved["host"], int(saved["reverse"])
    I, dt, GH = x.shape[2], x.dtype, 4 * H
    dy, dh_T, dc_T = (be._to_device(n, a)[0] for n, a in (("dy", dy), ("dh_T", dh_T), ("dc_T", dc_T)))
    check_backward_grads(_SPEC, dy, dh_T, dc_T, T, B, H, dt, device_ok=True, P=P)
    dw_ih, dw_hh, dw_hr = (device_array(w.shape, dt) for w in (w_ih, w_hh, w_hr))
    db_ih, db_hh = device_array(GH, dt), device_array(GH, dt)
    dx = device_array((T, B, I), dt) if need_dx else None
    dh, dc = device_array((B, P), dt), device_array((B, H), dt)   # the carries, then dh0, dc0
    _copy(dh_T, dh)
    _copy(dc_T, dc)
    if T == 0 or B == 0:
        for a in (dw_ih, dw_hh, dw_hr, db_ih, db_hh, dx):
            if a is not None:
                dense.fill(a, 0)
        return _grads_out(host, dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh, dw_hr)
    ws = saved["ws"]
    k = kernels(dt)
    dummy = be._scratch("dummy", 1, dt)
    dg = be._scratch("dgi", T * B * GH, dt)   # (the unprojected path's scratch buffers)
    dhs = be._scratch("dgh", T * B * P, dt)
    dm = be._scratch("pre", B * H, dt)
    hnew = be._scratch("hnew", B * P, dt)
    dlen = be._device_lengths(lengths)
    carry = _prepared(k["bwd_carry"], B * P, (T, rev, dlen, dy if dy is not None else dummy, dy is not None, hnew,
                                              dh, dhs, B, P))
    gates = _prepared(k["bwd_gates"], B * H, (T, rev, dlen, ws["gates"], ws["c_in"], ws["c_out"], dm, dc, dg, B, H))
    products = be._products()
    to_m = products.gemm(dhs, w_hr, dm, B, H, P)
    to_h = products.gemm(dg, w_hh, hnew, B, P, GH)
    for s in range(T):
        t = s if rev else T - 1 - s
        carry(s)
        to_m(t * B * P)
        gates(s)
        to_h(t * B * GH)
    carry(T)
    # the weight gradients over all T*B rows at once, and dx
    TB = T * B
    products.gemm(dg, x, dw_ih, GH, I, TB, a_t=True)()
    products.gemm(dg, ws["h_in"], dw_hh, GH, P, TB, a_t=True)()
    products.gemm(dhs, ws["m"], dw_hr, P, H, TB, a_t=True)()
    for db in (db_ih, db_hh):
        dense.fill(db, 0)   # colsum adds with atomics
        dense.colsum(dg, TB, GH, db)
    if dx is not None:
        products.gemm(dg, w_ih, dx, TB, I, GH)()
    return _grads_out(host, dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh, dw_hr)


def _copy(src, dst):
    """dst = src (device arrays with the same number of elements), or 0 where src is None."""
    if src is None:
        dense.fill(dst, 0)
    elif dst.size:
        launch(_copy_kernel, math.ceil(dst.size / THREADS), THREADS, (src, dst))


def _grads_out(host, dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr):
    return be._grads_out(host, dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh) + (
        dw_hr.copy_to_host() if host else dw_hr,)


@cuda.jit
def _copy_kernel(src, dst):
    i = cuda.grid(1)
    if i < dst.size:
        dst[i] = src[i]

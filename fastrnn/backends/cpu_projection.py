"""The cpu backend's LSTM with a projection (PyTorch's proj_size = P > 0): one layer, one
direction, on fastrnn_lstmp_forward/backward (csrc/projection.inc). cpu.forward_layer and
cpu.backward_layer hand over here when a w_hr is given; the shapes are already checked
(checks.check_forward_args with w_hr).

Training workspace, by time step: h_in (T,B,P) the state before the step, gates (T,B,4H),
c_in and c_out (T,B,H), m (T,B,H) = o * tanh(c'). Steps past a sequence's length write
zeros to m and leave their other rows unwritten (backward does not read them), so the
arrays come from the pool unzeroed.

bf16 (precision='bfloat16'): the fastrnn_lstmp_*_bf16 entry points, every product on
bfloat16 operands with float32 sums; their packing is bfloat16 pairs, in the bfloat16
cache. Small calls read the float weights as they are (the direct kernel's bfloat16
dots round them as they load them).
"""

from ..threads import get_num_threads
from .checks import check_backward_grads
from .pool import aligned_empty

_WORKSPACE = ("h_in", "gates", "c_in", "c_out", "m")


def pack(w_ih, w_hh, w_hr, nthreads, bf16=False):
    """The weights packed into the kernels' per-thread panels (cpu.packed_cache keeps them
    per parameter version, as for the unprojected cells); bf16: as bfloat16 pairs
    (cpu.packed_cache_bf16 keeps those)."""
    from .cpu import _check_status, _native, _ptr
    (P, H), I = w_hr.shape, w_ih.shape[1]
    size_fn, _ = _native("lstmp_packed_size", w_ih.dtype, bf16)
    pack_fn, ctype = _native("lstmp_pack", w_ih.dtype, bf16)
    size = size_fn(I, H, P, nthreads)
    if size == 0:
        raise RuntimeError(f"fastrnn cpu lstmp pack: kernel rejected its arguments (I={I}, H={H}, P={P})")
    packed = aligned_empty(size, w_ih.dtype)
    _check_status(pack_fn(I, H, P, _ptr(w_ih, ctype), _ptr(w_hh, ctype), _ptr(w_hr, ctype), _ptr(packed, ctype),
                          nthreads), "lstmp pack")
    return packed


def _packed(w_ih, w_hh, w_hr, given, nthreads, bf16):
    """The cached packing (compared bit for bit at each call, as cpu.forward_layer's)."""
    from .cpu import packed_cache, packed_cache_bf16
    callers = all(a is b for a, b in zip((w_ih, w_hh, w_hr), given))   # not per-call copies
    cache = packed_cache_bf16 if bf16 else packed_cache
    return cache.get(_LSTMP_CODE, w_ih, w_hh, nthreads, frozen_ok=callers, extra=(w_hr,))


_LSTMP_CODE = -1   # the packed caches' key for the projected LSTM (the cells' codes are >= 0)


def forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, train, bf16=False):
    from .cpu import _check_status, _contig, _direct_pays, _native, _ptr, name, workspace_pool
    given = (w_ih, w_hh, w_hr)
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = map(_contig, (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr))
    T, B, I = x.shape
    P, H = w_hr.shape
    dt = x.dtype
    shapes = {"h_in": (T, B, P), "gates": (T, B, 4 * H), "c_in": (T, B, H), "c_out": (T, B, H), "m": (T, B, H)}
    ws = {k: workspace_pool.empty(s, dt) for k, s in shapes.items()} if train else {}
    y, h_T, c_T = aligned_empty((T, B, P), dt), aligned_empty((B, P), dt), aligned_empty((B, H), dt)
    nth = get_num_threads()
    # a few (step, sequence) rows: the weights as they are (cpu.DIRECT_MAX_ROWS), training
    # too; BPTT then packs its threads' parts of W_hh and W_hr itself
    direct = _direct_pays(T, B, bf16)
    fn, ctype = _native("lstmp_forward_direct" if direct else "lstmp_forward", dt, bf16)
    p = lambda a: _ptr(a, ctype)
    weights = (p(x), p(w_ih), p(w_hh), p(w_hr)) + (() if direct else (p(_packed(w_ih, w_hh, w_hr, given, nth, bf16)),))
    status = fn(T, B, I, H, P, int(bool(reverse)), *weights, p(b_ih), p(b_hh),
                p(h0), p(c0), _ptr(lengths, "int32_t *"), p(y), p(h_T), p(c_T),
                *(p(ws.get(k)) for k in _WORKSPACE), nth)
    _check_status(status, "lstmp forward")
    saved = None
    if train:
        saved = dict(ws, cell="lstm", backend=name, x=x, w_ih=w_ih, w_hh=w_hh, w_hr=w_hr, lengths=lengths,
                     reverse=bool(reverse), T=T, B=B, given=given, packed=not direct, bf16=bf16)
    return y, h_T, c_T, saved


def backward(spec, saved, dy, dh_T, dc_T, need_dx, retain, grads_out):
    """BPTT from `saved`; returns dx, dh0 (B,P), dc0 (B,H), dw_ih, dw_hh, db_ih, db_hh, dw_hr."""
    from .cpu import _check_status, _contig, _native, _ptr, workspace_pool
    if grads_out is not None:
        raise ValueError("grads_out: not supported with a projection (w_hr); use the returned gradients")
    x, w_ih, w_hh, w_hr = saved["x"], saved["w_ih"], saved["w_hh"], saved["w_hr"]
    T, B, I = x.shape
    P, H = w_hr.shape
    dt = x.dtype
    check_backward_grads(spec, dy, dh_T, dc_T, T, B, H, dt, P=P)
    dy, dh_T, dc_T = map(_contig, (dy, dh_T, dc_T))
    dg = workspace_pool.empty((T, B, 4 * H), dt)
    dhs = workspace_pool.empty((T, B, P), dt)
    dx = aligned_empty(x.shape, dt) if need_dx else None
    dh0, dc0 = aligned_empty((B, P), dt), aligned_empty((B, H), dt)
    dw_ih, dw_hh, dw_hr = (aligned_empty(w.shape, dt) for w in (w_ih, w_hh, w_hr))
    db_ih, db_hh = aligned_empty(4 * H, dt), aligned_empty(4 * H, dt)
    bf16 = saved["bf16"]
    fn, ctype = _native("lstmp_backward", dt, bf16)
    p = lambda a: _ptr(a, ctype)
    nth = get_num_threads()
    # normally the forward's packing; the weights as they are now if they changed since
    # (as the reference backend, which reads the live arrays); none after an unpacked forward
    packed = _packed(w_ih, w_hh, w_hr, saved["given"], nth, bf16) if saved["packed"] else None
    status = fn(T, B, I, H, P, int(saved["reverse"]), p(x), p(w_ih), p(w_hh), p(w_hr), p(packed),
                p(dy), p(dh_T), p(dc_T), _ptr(saved["lengths"], "int32_t *"),
                *(p(saved[k]) for k in _WORKSPACE), p(dg), p(dhs), p(dx), p(dh0), p(dc0),
                p(dw_ih), p(dw_hh), p(dw_hr), p(db_ih), p(db_hh), 0, nth)
    _check_status(status, "lstmp backward")
    workspace_pool.release(dg, dhs)
    if not retain:
        workspace_pool.release(*(saved.get(k) for k in _WORKSPACE))
        saved.clear()
        saved["consumed"] = True
    return dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr

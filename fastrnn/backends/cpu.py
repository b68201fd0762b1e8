"""The cpu backend: fused C/OpenMP kernels (csrc/, via cffi) for one layer-direction.

One C call runs a whole forward or backward inside one OpenMP parallel region
(csrc/recurrence.inc): the input projection, the time loop with one barrier per step, and
after BPTT the weight-gradient products, all on the same threads with the same packed
GEMM micro-kernels. No BLAS runs in the hot path: a second thread pool (numpy's
OpenBLAS) spinning beside OpenMP's costs more than it gives on a few cores.
The C code never sees an unchecked array: checks.py validates, this file makes contiguous.
"""
import numpy as np

from ..bf16 import bits_to_float32, check_dense_args, check_precision, weights_format
from ..cells import get_cell
from ..lookup import Lookup
from ..threads import get_num_threads
from . import cpu_projection
from .checks import check_array, check_backward_grads, check_forward_args, overlapping
from .packed_weights import PackedWeightsCache, frozen_block_active
from .pool import ArrayPool, aligned_empty

name = "cpu"
# forward_layer takes a Lookup x (embedding rows by token): the kernels fold the table
# into the input projection when it has fewer rows than the T*B inputs (lookup.py)
accepts_lookup = True
# backward_layer adds parameter gradients into the caller's arrays (grads_out=...)
accumulates_grads = True

try:
    from .._fastrnn_cpu import ffi, lib
    _import_error = None
except ImportError as exc:  # extension not built (no compiler or OpenMP at install time)
    ffi = lib = None
    _import_error = exc

# The kernels compute the input projection a chunk of steps at a time, each thread for its
# own columns: this many bytes per thread, so the chunk is still in L2 when the time loop
# reads it back step by step (a chunk that spills to L3 made B=32 epilogues 20-40% slower),
# and inference memory stays O(B*H) however long the sequence (DESIGN.md: train=False keeps
# no workspace).
PROJECTION_CHUNK_BYTES = 1 << 19

# Calls of at most DIRECT_MAX_ROWS (step, sequence) rows over at most DIRECT_MAX_STEPS
# steps, or half as many rows over any number of steps, reads the caller's weights as they
# are (csrc/direct.inc) instead of the packed panels, whose per-call compare with the packed
# version reads every weight twice. Measured against the packed path (Intel Xeon, 2 threads,
# one layer, I = H in {128, 256, 512, 1024}, every cell): T = 1 at B <= 16 1.3-6x faster,
# at B = 32 1.0-1.5x, at B = 64 0.74-1.21x; T = 2..8 at 32 rows 0.96-1.56x; T = 16 at B = 1
# 1.0-1.8x; T = 32 at B = 1 0.72-1.15x (the packed steps are faster once their compare
# is spread over many). Training calls of these sizes take it too, writing the packed
# forward's workspace; BPTT then packs its threads' W_hh slices itself instead of comparing
# them with the cache's. Forward + backward against the packed path (Intel Xeon, 2 threads,
# processes alternating, H = 256): T = B = 1 GRU 353 -> 245 us, plain RNN 172 -> 125; GRU
# B = 16 and 32 at T = 1 5-12% faster, T = 2-16 at up to 32 rows 1-11%; LSTM H = 512 T = B = 1
# 1.45 -> 1.19 ms, at T = 4, B = 8 4% slower (kept: one rule for both); LSTMP H = 512,
# P = 128 900 -> 670 us at T = B = 1, 5-16% faster at T = 4-16.
DIRECT_MAX_ROWS = 32
DIRECT_MAX_STEPS = 8
# Inside frozen_weights() the packed path skips that compare: there the direct kernel won
# only at T = 1 with B <= 4 (1.0-1.5x; at B = 8, 16 the packed panels were up to 1.7x faster).
DIRECT_MAX_FROZEN_BATCH = 4
# bfloat16 (precision="bfloat16"; measured in inference, and training's small calls follow
# the same rule): the packed products run at twice float's rate
# on half the bytes, so the direct kernel (which rounds the float weights as it reads them)
# pays for less. Zen 4, 2 threads, I = H in {256, 512, 1024}, LSTM and GRU: at T = 1 and
# B <= 8 1.2-3.3x faster than the packed path with its compare; at B = 16, or from T = 2 on,
# 0.47-0.96x. Inside frozen_weights() the packed panels won (LSTM H = 512, B = 1: 66 against
# 108 us), so there bfloat16 never goes direct.
DIRECT_MAX_BATCH_BF16 = 8

# Training workspace and backward scratch are recycled: backward_layer consumes its
# `saved` and returns the buffers here for the next forward_layer.
workspace_pool = ArrayPool()
_WORKSPACE = ("h_in", "gates", "c_states", "hh_n")   # the arrays the pool takes back


def _pack(code, I, H, w_ih, w_hh, nthreads, w_hr=None, bptt=True):
    """W_ih and W_hh (and an LSTM's projection w_hr) packed into the kernels' per-thread
    panels for `nthreads` threads; bptt False: the forward's panels only (not with w_hr)."""
    if w_hr is not None:
        return cpu_projection.pack(w_ih, w_hh, w_hr, nthreads)
    packed_size, _ = _native("packed_size", w_ih.dtype)
    pack, ctype = _native("pack", w_ih.dtype)
    size = packed_size(code, I, H, nthreads, int(bptt))
    if size == 0:
        raise RuntimeError(f"fastrnn cpu pack: kernel rejected its arguments (I={I}, H={H})")
    packed = aligned_empty(size, w_ih.dtype)   # the micro-kernels' 64-byte panel loads
    status = pack(code, I, H, _ptr(w_ih, ctype), _ptr(w_hh, ctype), _ptr(packed, ctype), nthreads, int(bptt))
    _check_status(status, "pack")
    return packed


def _same_bits(a, b):
    """Bit-for-bit equality of two C-contiguous arrays of one shape and dtype (memcmp)."""
    return bool(lib.fastrnn_same_bytes(_ptr(a, "char *"), _ptr(b, "char *"), a.nbytes, get_num_threads()))


def _copy(a):
    """A copy of a C-contiguous array, split over the kernels' threads."""
    out = aligned_empty(a.shape, a.dtype)
    lib.fastrnn_copy_bytes(_ptr(out, "char *"), _ptr(a, "char *"), a.nbytes, get_num_threads())
    return out


# Packed weights by parameter version (see packed_weights.py); clear() frees them.
packed_cache = PackedWeightsCache(_pack, same_bits=_same_bits, copy=_copy)


def _pack_bf16(code, I, H, w_ih, w_hh, nthreads, w_hr=None, bptt=True):
    """W_ih and W_hh (and an LSTM's projection w_hr) rounded to bfloat16 pairs in the bf16
    kernels' panels (csrc/gemm_bf16.inc); bfloat16 weights (uint16 bits) through a float
    copy, which rounds to the same values."""
    if w_hr is not None:
        return cpu_projection.pack(w_ih, w_hh, w_hr, nthreads, bf16=True)
    if w_ih.dtype == np.uint16:
        w_ih, w_hh = bits_to_float32(w_ih), bits_to_float32(w_hh)
    size = lib.fastrnn_packed_size_bf16(code, I, H, nthreads, int(bptt))
    if size == 0:
        raise RuntimeError(f"fastrnn cpu pack_bf16: kernel rejected its arguments (I={I}, H={H})")
    packed = aligned_empty(size, np.float32)   # 32-bit slots, each a pair of bfloat16
    status = lib.fastrnn_pack_bf16(code, I, H, _ptr(w_ih, "float *"), _ptr(w_hh, "float *"),
                                   _ptr(packed, "float *"), nthreads, int(bptt))
    _check_status(status, "pack_bf16")
    return packed


# The same for precision='bfloat16' (its own panels, half the bytes)
packed_cache_bf16 = PackedWeightsCache(_pack_bf16, same_bits=_same_bits, copy=_copy)


def bf16_unavailable_reason():
    """None when precision='bfloat16' runs here, else why not."""
    if lib is None:
        return unavailable_reason()
    if not lib.fastrnn_has_bf16():
        return (f"this CPU has no AVX512_BF16 instructions (the kernels run {isa()}); "
                "precision='bfloat16' runs on the reference backend only")
    return None


def unavailable_reason():
    if lib is None:
        return (f"C extension not built ({_import_error}); reinstall with a C compiler "
                "and OpenMP (pip install -e .)")
    return None


def isa():
    """Instruction set the kernels dispatch to on this machine."""
    return ffi.string(lib.fastrnn_isa()).decode()


def splits_by_batch(cell, B, H, dtype=np.float32, threads=None, precision="float32"):
    """True when the kernels split a layer's recurrence by batch rows for these sizes (each
    thread runs all units of its rows, no barrier per step), False when by hidden units."""
    bf16 = check_precision(precision, dtype) == "bfloat16"
    fn = _native("by_batch", np.dtype(dtype), bf16)[0]
    return bool(fn(get_cell(cell).code, int(B), int(H), int(threads or get_num_threads())))


def omp_num_procs():
    """The CPUs the OpenMP runtime counts for this process: those it could use when the
    runtime started (before OMP_PROC_BIND pinned the caller). Not omp_get_max_threads,
    which torch.set_num_threads(1) sets to 1 for the whole process (fastrnn then ran on one
    thread or two depending on which came first)."""
    return max(1, int(lib.fastrnn_omp_num_procs()))


def _native(name, dtype, bf16=False):
    """The C entry point fastrnn_<name>_f32/_f64 for dtype, and its pointer type; bf16:
    fastrnn_<name>_bf16 (bfloat16 products on float arrays)."""
    if bf16:
        return getattr(lib, f"fastrnn_{name}_bf16"), "float *"
    single = dtype == np.float32
    return getattr(lib, f"fastrnn_{name}_{'f32' if single else 'f64'}"), ("float *" if single else "double *")


_array_types = {}   # "float *" -> the cffi type float[] (from_buffer takes it unparsed)


def _ptr(a, ctype):
    """Pointer to the first element of `a` (the caller keeps `a` alive), NULL for None.
    A C-contiguous array goes through the buffer protocol with a ready cffi type (0.13 us,
    against 0.36 us from a type string and 0.76 us for `a.ctypes.data`; a training step
    makes ~150 of these calls, a decoding step 16 a layer); numpy refuses that buffer for
    strided views (matmul's transposed operands), which go through `ctypes.data`."""
    if a is None:
        return ffi.NULL
    try:
        return ffi.from_buffer(_array_types[ctype], a)
    except KeyError:
        _array_types[ctype] = ffi.typeof(ctype[:-1] + "[]")
        return _ptr(a, ctype)
    except ValueError:   # "ndarray is not C-contiguous"
        return ffi.cast(ctype, a.ctypes.data)


ZERO_MIN_BYTES = 256 * 1024   # smaller arrays: numpy's fill costs less than the call


def zero_fill(arrays):
    """Set every array to 0 in place: big C-contiguous ones by memset on the kernels'
    threads (a word LM's 57 MB of gradients: 4-6 ms with numpy's fill, 1.1-1.4 ms here),
    the rest with numpy's fill."""
    nth = get_num_threads()
    for a in arrays:
        if a.nbytes >= ZERO_MIN_BYTES and a.flags.c_contiguous and a.flags.writeable:
            lib.fastrnn_zero_bytes(_ptr(a, "char *"), a.nbytes, nth)
        else:
            a.fill(0)


def _check_status(status, what):
    if status == 1:
        raise MemoryError(f"fastrnn cpu {what}: out of memory for kernel buffers")
    if status == 3:
        raise RuntimeError(f"fastrnn cpu {what}: {bf16_unavailable_reason()}")
    if status == 4:
        raise RuntimeError(f"fastrnn cpu {what}: fewer threads than the packed weights were made for, "
                           "and no float weights to pack from")
    if status != 0:
        raise RuntimeError(f"fastrnn cpu {what}: kernel rejected its arguments (status {status})")


def _contig(a):
    return None if a is None else np.ascontiguousarray(a)


def _chunk_steps(T, B, GH, itemsize, threads):
    """Steps per input-projection chunk (at least 1, at most T)."""
    per_step = max(1, B * GH * itemsize // max(1, threads))
    return max(1, min(T, PROJECTION_CHUNK_BYTES // per_step))


def _lookup_input(x, T, B):
    """(x for the kernel, tokens or None, V, the Lookup to scatter dx through or None).
    A table with more rows than there are inputs is cheaper expanded."""
    if not isinstance(x, Lookup):
        return x, None, 0, None
    V = x.table.shape[0]
    if V > T * B:
        return x.dense(), None, 0, x
    return x.table, np.ascontiguousarray(x.ids, dtype=np.int32).reshape(-1), V, None


def forward_layer(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, *, lengths=None, reverse=False, train=True,
                  w_hr=None, precision="float32"):
    # bfloat16 weights (uint16 bits; precision='bfloat16' only) are read as they are
    w_ih, w_hh, held = weights_format(w_ih, w_hh, precision, w_hr)
    spec, T, B, I, H, lengths = check_forward_args(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths,
                                                   w_hr=w_hr, weight_dtype=np.uint16 if held else None)
    bf16 = check_precision(precision, x.dtype) == "bfloat16"
    if bf16:   # a CPU with AVX512_BF16
        reason = bf16_unavailable_reason()
        if reason:
            raise RuntimeError(f"precision='bfloat16' on the cpu backend: {reason}")
    if w_hr is not None:   # an LSTM with a projection (proj_size)
        return cpu_projection.forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, train, bf16)
    if H == 0:   # no units: nothing to compute (the kernels take H >= 1)
        return _no_units_forward(spec, x, w_ih, w_hh, T, B, lengths, reverse, train)
    # the kernels take I >= 1: no input features run as one zero feature (it projects to 0);
    # backward gives dx and dW_ih their 0-wide shapes back
    padded = None
    if I == 0:
        padded = _dx_shape(x)
        x, w_ih, I = np.zeros((T, B, 1), x.dtype), _zero_column(spec.gates * H, w_ih.dtype), 1
    # a small call reads the weights as they are (csrc/direct.inc), a training one too: its
    # backward then packs its threads' W_hh slices itself instead of comparing them
    direct = _direct_pays(T, B, bf16)
    if direct and isinstance(x, Lookup):   # at most DIRECT_MAX_ROWS rows: cheaper expanded
        x, tokens, V, expanded = x.dense(), None, 0, x
    else:
        x, tokens, V, expanded = _lookup_input(x, T, B)
    given = (w_ih, w_hh)
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = map(_contig, (x, w_ih, w_hh, b_ih, b_hh, h0, c0))
    # the caller's own arrays (not per-call copies): frozen_weights may then trust them
    callers = w_ih is given[0] and w_hh is given[1]
    dt, GH = x.dtype, spec.gates * H
    lstm, gru = spec.has_cell_state, spec.name == "gru"

    # outputs the kernels write: 64-byte aligned (pool.py says why)
    y = aligned_empty((T, B, H), dt)
    h_T = aligned_empty((B, H), dt)
    c_T = aligned_empty((B, H), dt) if lstm else None
    ws = {}
    if train:
        names = ("h_in", "gates") + (("hh_n",) if gru else ())
        ws = {n: workspace_pool.empty((T, B, GH if n == "gates" else H), dt) for n in names}
        if lstm:   # T + 1 cell states: a step's c_in is the c_out of the step before it
            ws["c_states"] = cs = workspace_pool.empty((T + 1, B, H), dt)
            ws["c_in"], ws["c_out"] = (cs[1:], cs[:-1]) if reverse else (cs[:-1], cs[1:])
    nth = get_num_threads()
    workspace = [ws.get(n) for n in ("h_in", "gates", "c_in", "c_out", "hh_n")] if train else (None,) * 5
    if direct and bf16:
        p = lambda a: _ptr(a, "float *")
        wp = lambda a: _ptr(a, "uint16_t *" if held else "float *")
        status = lib.fastrnn_forward_direct_bf16(
            spec.code, T, B, I, H, int(bool(reverse)), p(x), wp(w_ih), wp(w_hh), int(held), p(b_ih), p(b_hh),
            p(h0), p(c0), _ptr(lengths, "int32_t *"), p(y), p(h_T), p(c_T), *map(p, workspace), nth)
        _check_status(status, "forward_direct_bf16")
    elif direct:
        fn, ctype = _native("forward_direct", dt)
        p = lambda a: _ptr(a, ctype)
        status = fn(spec.code, T, B, I, H, int(bool(reverse)), p(x), p(w_ih), p(w_hh), p(b_ih), p(b_hh),
                    p(h0), p(c0), _ptr(lengths, "int32_t *"), p(y), p(h_T), p(c_T), *map(p, workspace), nth)
        _check_status(status, "forward_direct")
    elif bf16:   # csrc/gemm_bf16.inc's panels
        p = lambda a: _ptr(a, "float *")
        packed = packed_cache_bf16.get(spec.code, w_ih, w_hh, nth, frozen_ok=callers, bptt=train)
        run = lambda wi, wh: lib.fastrnn_forward_bf16(
            spec.code, T, B, I, H, int(bool(reverse)), _chunk_steps(T, B, GH, dt.itemsize, nth),
            p(x), V, _ptr(tokens, "int32_t *"), p(wi), p(wh), p(packed), p(b_ih), p(b_hh),
            p(h0), p(c0), _ptr(lengths, "int32_t *"), p(y), p(h_T), p(c_T), *map(p, workspace), nth)
        # held weights are not float: the kernel reads only the panels, unless the runtime
        # grants fewer threads than they were packed for (FASTRNN_ETEAM), and then float copies
        status = run(None, None) if held else run(w_ih, w_hh)
        if status == lib.FASTRNN_ETEAM and held:
            status = run(bits_to_float32(w_ih), bits_to_float32(w_hh))
        _check_status(status, "forward_bf16")
    else:
        fn, ctype = _native("forward", dt)
        p = lambda a: _ptr(a, ctype)
        packed = packed_cache.get(spec.code, w_ih, w_hh, nth, frozen_ok=callers, bptt=train)
        status = fn(spec.code, T, B, I, H, int(bool(reverse)), _chunk_steps(T, B, GH, dt.itemsize, nth),
                    p(x), V, _ptr(tokens, "int32_t *"), p(w_ih), p(w_hh), p(packed), p(b_ih), p(b_hh),
                    p(h0), p(c0), _ptr(lengths, "int32_t *"), p(y), p(h_T), p(c_T), *map(p, workspace), nth)
        _check_status(status, "forward")
    saved = None
    if train:
        saved = dict(ws, cell=spec.name, backend=name, x=x, tokens=tokens, expanded=expanded, T=T, B=B,
                     w_ih=w_ih, w_hh=w_hh, callers_weights=callers, lengths=lengths, reverse=bool(reverse),
                     padded_input=padded, packed=not direct, bf16=bf16, dtype=dt)
    return y, h_T, c_T, saved


def _direct_pays(T, B, bf16=False):
    """Whether a call is small enough for the unpacked kernel (see DIRECT_MAX_ROWS and
    DIRECT_MAX_BATCH_BF16)."""
    if bf16:
        return T == 1 and B <= DIRECT_MAX_BATCH_BF16 and not frozen_block_active()
    if frozen_block_active():
        return T == 1 and B <= DIRECT_MAX_FROZEN_BATCH
    rows = T * B
    return rows <= DIRECT_MAX_ROWS and (T <= DIRECT_MAX_STEPS or rows <= DIRECT_MAX_ROWS // 2)


def _no_units_forward(spec, x, w_ih, w_hh, T, B, lengths, reverse, train):
    """forward_layer for H = 0: empty outputs; `saved` holds what backward needs for the
    zero gradients of x and the shapes of the (empty) weight gradients."""
    dt = x.dtype
    empty = np.empty((B, 0), dt)
    saved = None
    if train:
        saved = dict(cell=spec.name, backend=name, gates=None, no_units=_dx_shape(x), T=T, B=B, w_ih=w_ih,
                     w_hh=w_hh, lengths=lengths, reverse=bool(reverse), dtype=dt)
    return (np.empty((T, B, 0), dt), empty, empty.copy() if spec.has_cell_state else None, saved)


_zero_columns = {}


def _zero_column(rows, dtype):
    """A (rows, 1) zero W_ih, one per shape: the packed-weights cache then keeps hitting."""
    key = (rows, np.dtype(dtype).str)
    if key not in _zero_columns:
        _zero_columns[key] = np.zeros((rows, 1), dtype)
    return _zero_columns[key]


def _dx_shape(x):
    """The shape of backward's dx for input x: the table's for a Lookup."""
    return x.table.shape if isinstance(x, Lookup) else x.shape


def backward_layer(cell, saved, dy, dh_T, dc_T, *, need_dx=True, retain=False, grads_out=None):
    """BPTT of one layer-direction. Consumes `saved` (its buffers are recycled) unless
    retain=True, which allows another backward over the same forward. For a Lookup input,
    dx is the table's gradient (V, I).

    With a projection (the forward had w_hr) dw_hr comes last, and grads_out is refused.

    grads_out: optional (dw_ih, dw_hh, db_ih, db_hh), C-contiguous arrays of the weights'
    shapes and dtype that the parameter gradients are added to in place (a model's running
    gradients: no temporary, no separate add pass); they are also what is returned."""
    if saved is None:
        raise ValueError("saved: no workspace; run forward_layer with train=True before backward_layer")
    spec = get_cell(cell)
    if isinstance(saved, dict) and saved.get("consumed"):
        raise ValueError("saved: already used by a backward_layer call (each forward allows one backward)")
    if not isinstance(saved, dict) or saved.get("cell") != spec.name or saved.get("backend") != name:
        raise ValueError(f"saved: expected the workspace of a cpu {spec.name!r} forward_layer call")
    if "w_hr" in saved:   # returns dw_hr last
        return cpu_projection.backward(spec, saved, dy, dh_T, dc_T, need_dx, retain, grads_out)
    w_ih, w_hh, T, B = saved["w_ih"], saved["w_hh"], saved["T"], saved["B"]
    # float32 for bfloat16 weights held as uint16 bits
    H, dt, padded = w_hh.shape[1], saved["dtype"], saved.get("padded_input")
    GH = spec.gates * H
    check_backward_grads(spec, dy, dh_T, dc_T, T, B, H, dt)
    # no input features (padded: dx's shape): the kernels ran one zero feature, whose
    # gradients are dropped; the caller's dW_ih has no columns
    ih_shape = (GH, 0) if padded is not None else w_ih.shape
    if grads_out is None:
        dw_ih, dw_hh = aligned_empty(ih_shape, dt), aligned_empty(w_hh.shape, dt)
        db_ih, db_hh = aligned_empty(GH, dt), aligned_empty(GH, dt)
    else:
        dw_ih, dw_hh, db_ih, db_hh = _check_grads_out(grads_out, ih_shape, w_hh.shape, GH, dt)
    if saved.get("no_units") is not None:   # H = 0: the weight gradients are empty
        dx = np.zeros(saved["no_units"], dt) if need_dx else None
        if not retain:
            saved.clear()
            saved["consumed"] = True
        return (dx, np.empty((B, 0), dt), np.empty((B, 0), dt) if spec.has_cell_state else None,
                dw_ih, dw_hh, db_ih, db_hh)
    # the kernels' dW_ih: the zero feature's column goes to a scratch array
    kernel_dw_ih = np.zeros(w_ih.shape, dt) if padded is not None else dw_ih
    x, tokens = saved["x"], saved["tokens"]
    I = x.shape[-1]
    V = x.shape[0] if tokens is not None else 0
    dy, dh_T, dc_T = map(_contig, (dy, dh_T, dc_T))
    bf16 = saved.get("bf16", False)
    bwd, ctype = _native("backward", dt, bf16)
    p = lambda a: _ptr(a, ctype)
    nth = get_num_threads()
    # normally the forward's packing; the weights as they are now if they changed since
    # (as the reference backend, which reads the live arrays). BPTT reads only the W_hh
    # panels (dx reads W_ih as it is), so only W_hh is compared. Forward + backward at
    # H = 256, T = B = 1 (Intel Xeon, 2 threads, processes alternating): GRU 379 -> 343 us,
    # LSTM 500 -> 456, plain RNN 173 -> 164; GRU B = 32 3-8% faster.
    packed = None   # the forward read the weights unpacked: the kernel packs its own W_hh slices
    if saved["packed"]:
        cache = packed_cache_bf16 if bf16 else packed_cache
        packed = cache.get(spec.code, w_ih, w_hh, nth, frozen_ok=saved["callers_weights"],
                           recurrent_only=True)
    if bf16 and w_ih.dtype == np.uint16:   # held bfloat16 weights: dx reads W_ih as floats
        w_ih, w_hh = bits_to_float32(w_ih), bits_to_float32(w_hh)

    dgi = workspace_pool.empty((T, B, GH), dt)  # scratch: gate gradients of every step
    dgh_n = workspace_pool.empty((T, B, H), dt) if spec.name == "gru" else None
    dx = aligned_empty(x.shape, dt) if need_dx and padded is None else None   # (V, I) with tokens
    dh0 = aligned_empty((B, H), dt)
    dc0 = aligned_empty((B, H), dt) if spec.has_cell_state else None
    status = bwd(spec.code, T, B, I, H, int(saved["reverse"]), p(x), V, _ptr(tokens, "int32_t *"),
                 p(w_ih), p(w_hh), p(packed),
                 p(dy), p(dh_T), p(dc_T), _ptr(saved["lengths"], "int32_t *"),
                 p(saved["h_in"]), p(saved["gates"]), p(saved.get("c_in")), p(saved.get("c_out")),
                 p(saved.get("hh_n")), p(dgi), p(dgh_n), p(dx), p(dh0), p(dc0),
                 p(kernel_dw_ih), p(dw_hh), p(db_ih), p(db_hh), int(grads_out is not None), nth)
    _check_status(status, "backward")
    if dx is not None and saved["expanded"] is not None:
        dx = saved["expanded"].table_grad(dx)
    if padded is not None and need_dx:
        dx = np.empty(padded, dt)   # 0 features wide: nothing to fill
    workspace_pool.release(dgi, dgh_n)
    if not retain:
        workspace_pool.release(*(saved.get(n) for n in _WORKSPACE))
        saved.clear()
        saved["consumed"] = True
    return dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh


def release_workspace(saved):
    """Give a forward's training workspace back to the pool without a backward (the caller
    will not use `saved` again): for a caller that keeps it for backward_layer(retain=True)
    until it knows no other backward will come (fastrnn.torch, when torch frees the graph)."""
    if not isinstance(saved, dict) or saved.get("consumed") or saved.get("backend") != name:
        return
    names = cpu_projection._WORKSPACE if "w_hr" in saved else _WORKSPACE
    workspace_pool.release(*(saved.get(n) for n in names))
    saved.clear()
    saved["consumed"] = True


def _check_grads_out(grads_out, ih_shape, hh_shape, GH, dt):
    if not isinstance(grads_out, (tuple, list)) or len(grads_out) != 4:
        raise TypeError("grads_out: expected a tuple (dw_ih, dw_hh, db_ih, db_hh)")
    names = ("dw_ih", "dw_hh", "db_ih", "db_hh")
    for i, (name, a, shape) in enumerate(zip(names, grads_out, (ih_shape, hh_shape, (GH,), (GH,)))):
        if (not isinstance(a, np.ndarray) or a.shape != shape or a.dtype != dt
                or not a.flags.c_contiguous or not a.flags.writeable):
            got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
            raise ValueError(f"grads_out[{i}] ({name}): expected a writeable C-contiguous "
                             f"{dt} array of shape {shape}, got {got}")
    if overlapping(grads_out):
        raise ValueError("grads_out: expected four arrays that do not overlap")
    return grads_out


# ----- language-model helpers: the same micro-kernel and thread team ------------------
def _strides(a):
    """Element strides of a 2-D array, made non-negative and integral (copy if needed)."""
    if any(s < 0 or s % a.itemsize for s in a.strides):
        a = np.ascontiguousarray(a)
    return a, a.strides[0] // a.itemsize, a.strides[1] // a.itemsize


def to_bf16_bits(a):
    """float32 values rounded to bfloat16 and held as uint16 bits (bf16.to_bf16_bits, the
    same bits) in one threaded C pass: the NumPy version took 32 ms for a 10,000 x 512
    decoder, this 0.7 ms. Without AVX512_BF16 the kernel's ENOTSUP says why."""
    if not isinstance(a, np.ndarray) or a.dtype != np.float32:
        raise TypeError(f"a: expected a float32 numpy.ndarray, got {getattr(a, 'dtype', type(a).__name__)}")
    a = np.ascontiguousarray(a)
    out = aligned_empty(a.shape, np.uint16)
    _check_status(lib.fastrnn_to_bf16(a.size, _ptr(a, "float *"), _ptr(out, "uint16_t *"), get_num_threads()),
                  "to_bf16_bits")
    return out


def dense_bf16(x, w, bias=None):
    """x (n, K) @ w (V, K).T + bias in bfloat16 products (the reference's dense_bf16): w's
    rows split over the threads, each read once for all n rows of x (for a few rows: a
    language model's logits as it generates). w float32, or bfloat16 bits (uint16: half
    the bytes). Without AVX512_BF16 the kernel's ENOTSUP says why."""
    x, w, bias, held = check_dense_args(x, w, bias)
    (n, K), V = x.shape, w.shape[0]
    out = aligned_empty((n, V), np.float32)
    status = lib.fastrnn_dense_bf16(V, K, n, _ptr(w, "uint16_t *" if held else "float *"), int(held),
                                    _ptr(x, "float *"), K, _ptr(bias, "float *"), _ptr(out, "float *"), V,
                                    get_num_threads())
    _check_status(status, "dense_bf16")
    return out


def matmul(a, b, out=None, accumulate=False, precision="float32"):
    """a (M, K) @ b (K, N) on the fastrnn kernels; transposed views cost no copy.
    precision 'bfloat16' (float32 arrays): a and b rounded to bfloat16 as the kernels read
    them, float32 sums; ENOTSUP's message where the CPU has no AVX512_BF16."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"a, b: expected (M, K) and (K, N), got {a.shape} and {b.shape}")
    if a.dtype != b.dtype or a.dtype not in (np.float32, np.float64):
        raise TypeError(f"a, b: expected one float dtype, got {a.dtype} and {b.dtype}")
    bf16 = check_precision(precision, a.dtype) == "bfloat16"
    M, K = a.shape
    N = b.shape[1]
    if out is None:
        out = aligned_empty((M, N), a.dtype)
        accumulate = False
    elif out.shape != (M, N) or out.dtype != a.dtype or \
            (out.size and (out.strides[1] != out.itemsize or out.strides[0] < 0)):   # (empty: strides 0)
        raise ValueError(f"out: expected a row-contiguous ({M}, {N}) {a.dtype} array")
    a, sam, sak = _strides(a)
    b, sbk, sbn = _strides(b)
    fn, ctype = _native("matmul", a.dtype, bf16)
    status = fn(M, N, K, _ptr(a, ctype), sam, sak, _ptr(b, ctype), sbk, sbn, _ptr(out, ctype),
                out.strides[0] // out.itemsize, int(bool(accumulate)), get_num_threads())
    _check_status(status, "matmul")
    return out


def sumsq(a):
    """Sum of squares of a C-contiguous float32/float64 array, accumulated in double."""
    if not isinstance(a, np.ndarray) or a.dtype not in (np.float32, np.float64) or not a.flags.c_contiguous:
        raise ValueError("a: expected a C-contiguous float32 or float64 array")
    fn, ctype = _native("sumsq", a.dtype)
    return float(fn(a.size, _ptr(a, ctype), get_num_threads()))


def adam_step(p, g, m, v, *, step, b1, b2, c2, eps, weight_decay):
    """One fused torch.optim.Adam step in place (see csrc/optim.inc): p, g, m, v are
    contiguous arrays of one float dtype and size."""
    arrays = (("p", p), ("g", g), ("m", m), ("v", v))
    for name, a in arrays:
        if not isinstance(a, np.ndarray) or a.dtype != p.dtype or a.size != p.size or not a.flags.c_contiguous:
            raise ValueError(f"{name}: expected a C-contiguous {p.dtype} array of {p.size} values")
    if p.dtype not in (np.float32, np.float64) or not p.flags.writeable:
        raise ValueError(f"p: expected a writeable float32 or float64 array, got {p.dtype}")
    fn, ctype = _native("adam", p.dtype)
    status = fn(p.size, *(_ptr(a, ctype) for _, a in arrays), float(step), float(b1), float(b2),
                float(c2), float(eps), float(weight_decay), get_num_threads())
    _check_status(status, "adam")


def scatter_rows(out, ids, rows):
    """out[ids[i]] += rows[i] for every i (an embedding table's gradient), in C with the
    threads splitting the columns; returns out. out: a C-contiguous writeable (V, E)
    float array, rows (n, E) of its dtype, ids (n,) integers in [0, V)."""
    if not (isinstance(out, np.ndarray) and out.ndim == 2 and out.dtype in (np.float32, np.float64)
            and out.flags.c_contiguous and out.flags.writeable):
        got = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
        raise ValueError(f"out: expected a writeable C-contiguous 2-D float32 or float64 array, got {got}")
    V, E = out.shape
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise ValueError(f"ids: expected a 1-D integer array, got {ids.dtype} {ids.shape}")
    n = ids.shape[0]
    if n and (ids.min() < 0 or ids.max() >= V):
        raise ValueError(f"ids: expected values in [0, {V}) (rows of out), got min {ids.min()}, max {ids.max()}")
    rows = check_array("rows", np.ascontiguousarray(rows), (n, E), out.dtype)
    fn, ctype = _native("scatter_rows", out.dtype)
    status = fn(n, E, _ptr(np.ascontiguousarray(ids, dtype=np.int32), "int32_t *"), _ptr(rows, ctype),
                _ptr(out, ctype), get_num_threads())
    _check_status(status, "scatter_rows")
    return out


def softmax_xent(logits, targets, scale=1.0, want_grad=True, in_place=False):
    """Fused softmax cross-entropy: per-row loss and grad = scale * (softmax - onehot);
    rows with target < 0 are ignored. in_place: the gradient overwrites `logits` (a
    C-contiguous writeable array), which is returned as grad."""
    if in_place and want_grad and not (isinstance(logits, np.ndarray) and logits.flags.c_contiguous
                                       and logits.flags.writeable):
        raise ValueError("logits: in_place needs a writeable C-contiguous array")
    logits = np.ascontiguousarray(logits)
    if logits.ndim != 2 or logits.dtype not in (np.float32, np.float64):
        raise ValueError(f"logits: expected a 2-D float32 or float64 array, got {logits.dtype} {logits.shape}")
    N, V = logits.shape
    targets = np.asarray(targets)
    if targets.shape != (N,) or targets.dtype.kind not in "iu":
        raise ValueError(f"targets: expected a ({N},) integer array, got {targets.dtype} {targets.shape}")
    if N and targets.max() >= V:   # checked before the cast: int32 would wrap larger ids
        raise ValueError(f"targets: expected values < {V} (the vocabulary size), got {targets.max()}")
    targets = np.ascontiguousarray(np.maximum(targets, -1), dtype=np.int32)
    fn, ctype = _native("softmax_xent", logits.dtype)
    loss = np.empty(N, logits.dtype)
    grad = None if not want_grad else logits if in_place else aligned_empty(logits.shape, logits.dtype)
    status = fn(N, V, _ptr(logits, ctype), _ptr(targets, "int32_t *"), _ptr(loss, ctype),
                _ptr(grad, ctype), float(scale), get_num_threads())
    _check_status(status, "softmax_xent")
    return loss, grad

"""The cuda backend: Numba CUDA kernels for one layer-direction (DESIGN.md's contract).

forward_layer: input projection (a matrix product: cuda_blas.py where CuPy is installed,
else cuda_dense.py; both have the same two entry points), then the whole
recurrence in one launch: where all of W_hh fits on one SM, the local kernels
(cuda_local.py: each block runs whole sequences, no grid barrier), else one persistent
cooperative launch (cuda_recurrence.py: blocks own units, a grid barrier a step).
backward_layer: BPTT in one launch the same way, then the weight gradients and dx as
matrix products.
An LSTM with a projection (w_hr) runs in cuda_projection.py instead.
From B*H >= STEP_GEMM_MIN_BH a step is instead one library matrix product and one launch
of the step's elementwise work (the step-gemm path). Arrays made here come from a pool
(cuda_memory.py).

Arrays: numpy inputs are copied to the device and results come back as numpy; inputs
with __cuda_array_interface__ (Numba device arrays, CuPy arrays, torch CUDA tensors) are
used in place and results are Numba device arrays. Everything stays on the default
stream, so work is ordered with CuPy and torch's default streams.
"""
import math
import os
import threading

import numpy as np
from numba import cuda

from ..cells import get_cell
from . import cuda_blas as blas
from . import cuda_dense as dense
from . import cuda_local as local
from . import cuda_projection as projection
from . import cuda_recurrence as rec
from . import cuda_setup as setup
from . import switches
from .checks import check_backward_grads, check_forward_args, check_lengths
from .cuda_launch import LaunchRefused, NotCoResident, current_context, launch, prepared
from .cuda_memory import device_array, from_interface

name = "cuda"

SIMULATOR = bool(os.environ.get("NUMBA_ENABLE_CUDASIM"))
# The simulator runs every thread as a Python thread: small blocks, a few "SMs".
THREADS = rec.SIM_THREADS if SIMULATOR else 256
STAGE_LIMIT = 32 * 1024      # bytes of h (or dgh) rows staged in shared memory per chunk
PERSISTENT_SHARED_CAP = 160 * 1024
SLICE_TERMS = 8              # at least this many summed terms per thread slice
MAX_SLICES = 32              # slices of a tile are lanes of one warp (shuffle reduction)
PERSISTENT_ENV = "FASTRNN_CUDA_PERSISTENT"   # "0" forces the one-launch-per-step path
STEP_GEMM_ENV = "FASTRNN_CUDA_STEP_GEMM"     # "1" forces the per-step library product, "0" never
BT_ENV = "FASTRNN_CUDA_BT"   # "1" or "4" forces the sequences per thread (for timing both)
# at most this many blocks (default one per SM): fewer blocks, each with more units, for
# timing the latency-bound small layers (fewer arrivals at each grid barrier)
MAX_BLOCKS_ENV = "FASTRNN_CUDA_MAX_BLOCKS"
# batch blocks: the blocks split the batch this many ways as well as the units. Each block
# then stages only its sequences' state columns each step instead of the whole batch's,
# which at B >= 64 costs most of a step. The env var forces a count; by default a batch of
# at least BATCH_SPLIT_MIN_B splits AUTO_BATCH_BLOCKS ways (the first that keeps the
# weights on chip). Measured on an H100 (benchmarks/results/gpu-session-2026-11-24-*/
# ab-bblocks{4,8}.json, H=256, T=256): at B=64, 8 blocks ran 2.05-2.22x the unsplit
# kernels (RNN inference and training, LSTM training) and 4 blocks 1.88-1.94x. At B=256
# against step-gemm, 8 blocks ran the plain RNN 2.4x faster, and GRU training 1.17x with
# step-gemm's own time varying as much (4 blocks: 1.39x and 0.70x), so the split replaces
# step-gemm only for one-gate cells up to H = BATCH_SPLIT_MAX_H
BATCH_BLOCKS_ENV = "FASTRNN_CUDA_BATCH_BLOCKS"
AUTO_BATCH_BLOCKS = (8, 4)
BATCH_SPLIT_MIN_B = 64
BATCH_SPLIT_MAX_H = 256
# the persistent kernels' barrier: "cg" numba's grid sync (default), "flag" cuda_recurrence's
# flag_sync (one atomic a block; to be timed against cg on a GPU, benchmarks/gpu_ab.py)
GRID_SYNC_ENV = "FASTRNN_CUDA_GRID_SYNC"
STEP_GEMM_MIN_BH = 32768     # B * H from which a step's product is a library matrix product
# the local kernels (cuda_local.py: a block holds all of W_hh and runs whole sequences, no
# grid barrier): "0" never; by default wherever the weights fit on one SM and the batch in
# one wave of blocks, unless a switch above forces another path
LOCAL_ENV = "FASTRNN_CUDA_LOCAL"


def unavailable_reason():
    try:
        if not cuda.is_available():
            return "no CUDA GPU or driver found by numba.cuda"
    except Exception as exc:  # a broken driver must not break import fastrnn
        return f"numba.cuda failed: {exc}"
    return None


def _device_limits():
    """(multiprocessors, max dynamic shared memory per block in bytes, device name).
    Cached per context (one per device): numba's get_current_device() queries the driver
    and takes a lock on every call outside its own API calls, and every plan() asks."""
    key = current_context()
    hit = _limits_cache.get(key)
    if hit is None:
        hit = _limits_cache[key] = _query_limits()
    return hit


_limits_cache = {}


def _optin_shared(dev):
    """The most dynamic shared memory a block of `dev` may opt in to."""
    try:
        return dev.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
    except Exception:
        return dev.MAX_SHARED_MEMORY_PER_BLOCK


def _query_limits():
    if SIMULATOR:   # 3 "SMs" so that the one-launch-per-step path runs several blocks
        return 3, 48 * 1024, "Numba CUDA simulator"
    dev = cuda.get_current_device()
    name_ = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
    smem = _optin_shared(dev)
    # Measured on an H100: cooperative grids of one 256-thread block per SM launched with
    # up to 160 KiB of dynamic shared memory per block, and not with 164 KiB.
    return dev.MULTIPROCESSOR_COUNT, min(smem, PERSISTENT_SHARED_CAP), name_


def plan(cell, H, B, dtype=np.float32, backward=False, persistent=True):
    """How a layer of this shape runs: blocks, units per block, thread slices, shared
    memory, and whether the persistent kernel is used (else one launch per step)."""
    key = (cell, H, B, np.dtype(dtype), backward, persistent, switches.get(PERSISTENT_ENV),
           switches.get(STEP_GEMM_ENV), switches.get(BT_ENV), switches.get(MAX_BLOCKS_ENV),
           switches.get(BATCH_BLOCKS_ENV), switches.get(LOCAL_ENV), _device_limits(), SLICE_TERMS, MAX_SLICES, STAGE_LIMIT,
           STEP_GEMM_MIN_BH, AUTO_BATCH_BLOCKS, BATCH_SPLIT_MIN_B, BATCH_SPLIT_MAX_H,
           tuple(sorted(local.REG_WEIGHTS.items())), local.MAX_THREADS, local.UNIT_ROWS)
    hit = _plans.get(key)
    if hit is None:
        hit = _plans[key] = _plan(cell, H, B, dtype, backward, persistent)
    return dict(hit)


_plans = {}


def _positive_env(name):
    """The positive integer in environment variable `name`, None when unset."""
    v = switches.get(name)
    if v is not None and (not v.isdigit() or int(v) < 1):
        raise ValueError(f"{name}: expected a positive integer, got {v!r}")
    return None if v is None else int(v)


def _plan(cell, H, B, dtype, backward, persistent):
    """The layout of the units-split kernels (_unit_plan), with "local": the local
    kernels' layout where they run (LOCAL_ENV), else None. Both write the state history
    with the same Bp, so a forward and a backward may take different paths."""
    p = _unit_plan(cell, H, B, dtype, backward, persistent)
    p["local"] = _local_layout(cell, H, B, dtype, backward) if persistent else None
    return p


def _local_layout(cell, H, B, dtype, backward):
    mode = switches.get(LOCAL_ENV, "auto")
    if mode not in ("0", "auto"):
        raise ValueError(f"{LOCAL_ENV}: expected 0 (never) or auto, got {mode!r}")
    forced = any(switches.get(e) is not None for e in (STEP_GEMM_ENV, BATCH_BLOCKS_ENV, BT_ENV,
                                                          MAX_BLOCKS_ENV))
    if mode == "0" or forced or switches.get(PERSISTENT_ENV) == "0":
        return None
    return local.layout(get_cell(cell).gates, H, B, np.dtype(dtype).itemsize, backward,
                        _device_limits()[0], _local_shared(),
                        max_threads=THREADS if SIMULATOR else local.MAX_THREADS)


def _local_shared():
    """Dynamic shared memory a local kernel's block may have: the device's opt-in limit.
    Not PERSISTENT_SHARED_CAP: that cap is for the cooperative grids, and a local launch
    the driver refuses falls back to the units-split kernels (_run_local)."""
    # read on a plan's first use only (plans are cached); numba keeps device attributes
    return _device_limits()[1] if SIMULATOR else _optin_shared(cuda.get_current_device())


def _unit_plan(cell, H, B, dtype, backward, persistent):
    """Step-gemm, the batch split and the layout (see BATCH_BLOCKS_ENV): the forced
    split, else the first split in AUTO_BATCH_BLOCKS whose weights stay on chip where
    the batch is large enough, else unsplit. Step-gemm plans never split (the product is
    a library one, the step's elementwise work splits by units)."""
    mode = switches.get(STEP_GEMM_ENV, "auto")
    if mode == "1":
        return _layout(cell, H, B, dtype, backward, persistent, 1, True)
    auto_gemm = mode != "0" and B * H >= STEP_GEMM_MIN_BH
    forced = _positive_env(BATCH_BLOCKS_ENV)
    if forced is not None:
        return _layout(cell, H, B, dtype, backward, persistent, 1 if auto_gemm else forced, auto_gemm)
    over_gemm = get_cell(cell).gates == 1 and H <= BATCH_SPLIT_MAX_H
    if B >= BATCH_SPLIT_MIN_B and (over_gemm or not auto_gemm):
        for nbb in AUTO_BATCH_BLOCKS:
            p = _layout(cell, H, B, dtype, backward, persistent, nbb, False)
            if p["persistent"]:
                return p
    return _layout(cell, H, B, dtype, backward, persistent, 1, auto_gemm)


def _layout(cell, H, B, dtype, backward, persistent, nbb, step_gemm):
    spec = get_cell(cell)
    G, item = spec.gates, np.dtype(dtype).itemsize
    nsm, smem_max, _ = _device_limits()
    nbb = min(nbb, max(B, 1))   # at most one batch block a sequence
    allow_persistent = persistent and switches.get(PERSISTENT_ENV, "1") != "0"
    if SIMULATOR and allow_persistent:
        if nbb > 1:   # the simulator runs blocks one after another: grid sync needs one block
            allow_persistent = False
        else:
            nsm = 1
    most = _positive_env(MAX_BLOCKS_ENV)
    if most is not None:
        nsm = min(nsm, most)
    nbb = min(nbb, nsm)
    hs = -(-H // max(1, nsm // nbb))
    # Batches per thread: 4 reuses each weight read 4 times, but runs the gate epilogue
    # of 4 sequences one after another. Measured on an H100 (benchmarks/results): faster
    # once the (unit, sequence) pairs fill a block (H=512, B=64: 1.3-1.4x), slower below
    # (B=8: 0.8x), so 4 only then. (A block's pairs: its share of the batch.)
    per = -(-B // nbb)
    BT = 4 if per > 64 or hs * per >= THREADS else 1
    forced = switches.get(BT_ENV)
    if forced is not None:
        if forced not in ("1", "4"):
            raise ValueError(f"{BT_ENV}: expected 1 or 4, got {forced!r}")
        BT = int(forced)
    K = G * H if backward else H
    tiles = -(-B // BT)               # batch tiles of BT sequences
    nbb = max(1, min(nbb, tiles))
    Bs = -(-tiles // nbb) * BT        # sequences of a block: b0 = batch block * Bs
    Bp = Bs * nbb
    ublocks = -(-H // hs)
    blocks = ublocks * nbb            # block = unit block * nbb + batch block
    pairs = hs * (Bs // BT)
    common = dict(BT=BT, Bp=Bp, Bs=Bs, nbb=nbb, hs=hs, ublocks=ublocks, blocks=blocks, threads=THREADS)
    if step_gemm:
        # A step = a matrix product (cuBLAS where CuPy is, else cuda_dense) and a launch of
        # the gates' elementwise work: at large batches the product is a real GEMM, which
        # the in-kernel product (one unit x BT sequences a thread) runs far below.
        return dict(common, S=1, rounds=-(-pairs // THREADS), KC=1, shared_bytes=0, weight_bytes=0,
                    persistent=False, step_gemm=True)
    if pairs >= THREADS:
        S, rounds = 1, -(-pairs // THREADS)
    else:   # split the summed index, keeping >= SLICE_TERMS terms per thread slice
        S = 1
        while (S * 2 <= min(MAX_SLICES, THREADS // pairs)
               and S * 2 <= max(1, K // SLICE_TERMS)):
            S *= 2
        rounds = 1
    weights = hs * G * H * item
    row = (Bs | 1) * item                            # staged row stride (odd)
    KC = max(1, min(K, STAGE_LIMIT // row))          # state rows staged per chunk
    persistent = allow_persistent and weights + min(K, 8) * row <= smem_max
    if persistent:
        KC = max(1, min(KC, (smem_max - weights) // row))
    shared = (weights if persistent else 0) + KC * row
    return dict(common, S=S, rounds=rounds, KC=KC, shared_bytes=shared, weight_bytes=weights,
                persistent=persistent, step_gemm=False)


def _flag_sync():
    """Whether the persistent kernels use flag_sync (GRID_SYNC_ENV)."""
    mode = switches.get(GRID_SYNC_ENV, "cg")
    if mode not in ("cg", "flag"):
        raise ValueError(f"{GRID_SYNC_ENV}: expected cg or flag, got {mode!r}")
    return mode == "flag"


def _kernels(spec, dt, p):
    return rec.kernels(spec.code, dt, p["BT"], flag=_flag_sync())


def _grid_counter():
    """flag_sync's counter: one uint32 per context, zeroed once (flag_sync needs its low 31
    bits at 0 and leaves them there)."""
    key = current_context()
    c = _grid_counters.get(key)
    if c is None:
        c = _grid_counters[key] = cuda.to_device(np.zeros(1, np.uint32))
    return c


_grid_counters = {}


def describe():
    """One line for `fastrnn info`."""
    nsm, smem, dev = _device_limits()
    return (f"{dev}, {nsm} SMs, {smem // 1024} KiB shared/block; {_local_reach()}; "
            f"else persistent kernels while a "
            f"block's weight slice fits in shared memory (LSTM float32 H={_max_h('lstm')}, "
            f"GRU H={_max_h('gru')}, RNN H={_max_h('rnn_tanh')}), one launch per step above; "
            f"{_batch_split()}; "
            f"from B*H={STEP_GEMM_MIN_BH} a step is a {_products().NAME} matrix product and a "
            f"launch of the gates' elementwise work (RNN H<={BATCH_SPLIT_MAX_H}: the split "
            f"kernels); an LSTM with a projection: two "
            f"products and two launches a step; grid sync {'flag' if _flag_sync() else 'cg'}")


def _local_reach():
    """The local kernels' reach as `describe` reports it."""
    L = _local_layout("rnn_tanh", 1, 1, np.float32, False)
    if L is None:
        return f"no local kernels ({LOCAL_ENV} or a forcing switch)"
    nsm = _device_limits()[0]
    most = max(local.REG_WEIGHTS) * nsm
    reach = ", ".join(f"{c.split('_')[0].upper()} H<={_local_max_h(c)}" for c in ("rnn_tanh", "lstm", "gru"))
    return (f"local kernels (a block holds all of W_hh and runs whole sequences: no grid "
            f"barrier) where they fit, float32 {reach}, B<={most} (fewer at the largest H), "
            f"{_local_shared() // 1024} KiB shared/block")


def _local_max_h(cell):
    """The largest H (to 16) whose forward and BPTT both run the local kernels at B=1."""
    H = 16
    while H < 4096 and all(_local_layout(cell, H + 16, 1, np.float32, bw) for bw in (False, True)):
        H += 16
    return H


def _batch_split():
    """The batch split as `describe` reports it: forced, or the defaults in order."""
    forced = switches.get(BATCH_BLOCKS_ENV)
    if forced:
        return f"the blocks split the batch {forced} ways ({BATCH_BLOCKS_ENV})"
    return (f"from B={BATCH_SPLIT_MIN_B} the blocks split the batch "
            f"{' or '.join(map(str, AUTO_BATCH_BLOCKS))} ways too")


def _max_h(cell):
    H = 64
    while plan(cell, H * 2, 1)["persistent"] and H < (1 << 16):
        H *= 2
    lo, hi = H, H * 2
    while hi - lo > 16:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if plan(cell, mid, 1)["persistent"] else (lo, mid)
    return lo


# ----------------------------------------------------------------------- arrays
def _to_device(name_, a):
    """(device array, came_from_host) for numpy or __cuda_array_interface__ input."""
    if a is None:
        return None, False
    if isinstance(a, np.ndarray):
        return cuda.to_device(np.ascontiguousarray(a)), True
    if hasattr(a, "copy_to_host"):
        d = a
    else:
        # read once: torch builds the dict in Python at every read
        desc = getattr(a, "__cuda_array_interface__", None)
        if desc is None:
            raise TypeError(f"{name_}: expected a numpy.ndarray or a CUDA device array, got {type(a).__name__}")
        d = from_interface(a, desc)
    if not d.is_c_contiguous():
        raise ValueError(f"{name_}: expected a C-contiguous device array")
    return d, False


_scratch_bufs = {}
_lock = threading.RLock()   # scratch buffers are shared: one call at a time enqueues work


def _scratch(key, n, dtype, value=None):
    """A reused device buffer of n elements (no cudaMalloc/cudaFree per call: those cost
    more than a small layer's kernels). Only for arrays that die within the call; work on
    the one default stream keeps reuse in order. value: every element set to it when the
    buffer is made, for buffers that are only read (a vector of ones)."""
    dtype = np.dtype(dtype)
    full_key = (key, dtype, current_context())
    hit = _scratch_bufs.get(full_key)
    if hit is None or hit[0].size < n:
        buf = cuda.device_array(max(n, 1), dtype=dtype)
        if value is not None:
            dense.fill(buf, value)
        hit = _scratch_bufs[full_key] = (buf, {})
    views = hit[1]     # slicing a device array costs tens of microseconds: keep the views
    if n not in views:
        views[n] = hit[0][:max(n, 1)]
    return views[n]


_lengths_cache = {}


def _device_lengths(lengths):
    """The lengths on the device; the last few distinct vectors stay cached per context (a
    host to device copy per call costs more than a short layer's kernels)."""
    key = (lengths.tobytes(), current_context())
    hit = _lengths_cache.get(key)
    if hit is None:
        if len(_lengths_cache) >= 16:
            _lengths_cache.pop(next(iter(_lengths_cache)))
        hit = _lengths_cache[key] = cuda.to_device(lengths)
    return hit


def _host_lengths(lengths, T, B):
    if lengths is not None and not isinstance(lengths, np.ndarray):
        if hasattr(lengths, "copy_to_host"):
            lengths = lengths.copy_to_host()
        elif (desc := getattr(lengths, "__cuda_array_interface__", None)) is not None:   # read once
            lengths = from_interface(lengths, desc).copy_to_host()
    lengths = check_lengths(lengths, T, B)
    return np.full(B, T, np.int32) if lengths is None else lengths


# ----------------------------------------------------------------------- launches
def _launch(kern, grid, args, shared, cooperative=False):
    """A recurrence kernel launch: THREADS per block, `shared` bytes of dynamic shared
    memory; cooperative launches raise NotCoResident when the grid cannot be resident."""
    launch(kern, grid, THREADS, args, shared, cooperative)


def _pack(w_hh, G, H, p, backward):
    """Pack W_hh into the per-block layout of cuda_recurrence (module docstring): k fastest
    when thread slices split the summed index (S > 1), units fastest otherwise."""
    hs = p["hs"]
    n = p["ublocks"] * hs * G * H
    out = _scratch("packed", n, w_hh.dtype)
    launch(_pack_kernel, math.ceil(n / 256), 256, (w_hh, out, G, H, hs, backward, p["S"] > 1))
    return out


@cuda.jit
def _pack_kernel(w, out, G, H, hs, backward, kfast):
    i = cuda.grid(1)
    if i >= out.size:
        return
    GH = G * H
    per = hs * GH
    blk = i // per
    e = i - blk * per
    if kfast:         # e = u*G*H + r, r = g*H + k (forward) or the row r of W_hh (backward)
        u = e // GH
        r = e - u * GH
        j = blk * hs + u
        if j >= H:
            out[i] = 0
        elif backward:    # W_hh[r, j]
            out[i] = w[r * H + j]
        else:             # r = g*H + k  ->  W_hh[g*H + j, k]
            g = r // H
            out[i] = w[(g * H + j) * H + (r - g * H)]
    elif backward:    # e = r*hs + u  ->  W_hh[r, j]
        r = e // hs
        j = blk * hs + (e - r * hs)
        out[i] = w[r * H + j] if j < H else 0
    else:             # e = k*hs*G + u*G + g  ->  W_hh[g*H + j, k]
        k = e // (hs * G)
        ug = e - k * hs * G
        u = ug // G
        j = blk * hs + u
        out[i] = w[((ug - u * G) * H + j) * H + k] if j < H else 0


# ----------------------------------------------------------------------- forward
def forward_layer(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, *, lengths=None, reverse=False, train=True,
                  w_hr=None):
    """w_hr (P, H): an LSTM's projection (cuda_projection.py)."""
    with _lock:
        return _forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, train, w_hr)


def _forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, train, w_hr):
    (x, host), (h0, _), (c0, _), (w_ih, _), (w_hh, _), (b_ih, _), (b_hh, _), (w_hr, _) = (
        _to_device(n, a) for n, a in (("x", x), ("h0", h0), ("c0", c0), ("w_ih", w_ih),
                                      ("w_hh", w_hh), ("b_ih", b_ih), ("b_hh", b_hh), ("w_hr", w_hr)))
    if x is not None and x.ndim == 3 and w_hh is not None and w_hh.ndim == 2:
        lengths = _host_lengths(lengths, x.shape[0], x.shape[1])
    spec, T, B, I, H, _ = check_forward_args(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, None,
                                             device_ok=True, w_hr=w_hr)
    if w_hr is not None:
        return projection.forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, train, host)
    dt, G = x.dtype, spec.gates
    GH = G * H
    y = device_array((T, B, H), dt)
    h_T = device_array((B, H), dt)   # = h0, c0 (init_state), then updated in place
    c_T = device_array((B, H), dt) if spec.has_cell_state else None
    if T == 0 or B == 0 or H == 0:
        setup.init_state(h0, c0, h_T, c_T, None, 0, 0, B, H, B)
        dense.fill(y, 0)
        saved = _saved(spec, x, w_ih, w_hh, lengths, reverse, host, T, B, H, None) if train else None
        return _out(host, y, h_T, c_T, saved)

    p = plan(cell, H, B, dt)
    Bp = p["Bp"]
    dummy = _scratch("dummy", 1, dt)
    has_bias = b_ih is not None
    xp = _scratch("xp", T * B * GH, dt)
    # xp[tb, n] = sum_i x[tb, i] W_ih[n, i]; the recurrence kernel adds the biases
    if I:
        _products().projection(x, w_ih, None, xp, T * B, GH, I)
    else:
        dense.fill(xp, 0)
    slots = T + 1 if train else 2
    hbuf = device_array(slots * H * Bp, dt) if train else _scratch("hbuf", 2 * H * Bp, dt)
    first = reverse * T if train else 0
    setup.init_state(h0, c0, h_T, c_T, hbuf, slots, first, B, H, Bp)
    cst = c_T if c_T is not None else dummy
    gates = device_array(T * B * GH, dt) if train else dummy
    cin = device_array(T * B * H, dt) if train and spec.name == "lstm" else dummy
    cout = device_array(T * B * H, dt) if train and spec.name == "lstm" else dummy
    hhn = device_array(T * B * H, dt) if train and spec.name == "gru" else dummy
    k = _kernels(spec, dt, p)
    args = (xp, b_ih if has_bias else dummy, b_hh if has_bias else dummy, has_bias,
            _device_lengths(lengths), hbuf, cst, y, h_T, gates, cin, cout, hhn)

    def run(p):
        if _run_local(spec, dt, p["local"], False, (w_hh,) + args + (T, B, H, Bp, int(reverse), int(train)),
                      "forward"):
            return True
        shape = (T, B, H, Bp, p["hs"], p["S"], p["rounds"], int(reverse), int(train), p["KC"], p["Bs"],
                 p["nbb"])
        if p["step_gemm"]:
            pre = _scratch("pre", B * GH, dt)
            step = prepared(k["fwd_prestep"], p["blocks"], THREADS, (pre,) + args + (0,) + shape,
                            vary=len(args) + 1)
            product = _products().step_forward(hbuf, w_hh, pre, B, H, GH, Bp)
            for s in range(T):
                product(rec.step_slots(s, T, reverse, train)[1] * H * Bp)
                step(s)
            last_path["forward"] = "step-gemm"
            return True
        Wf = _pack(w_hh, G, H, p, backward=False)
        if p["persistent"]:
            return _run_persistent(k["fwd_persistent"], p, (Wf,) + args + shape + (_grid_counter(),),
                                   "forward")
        for s in range(T):
            _launch(k["fwd_onestep"], p["blocks"], (Wf,) + args + (s,) + shape, p["shared_bytes"])
        last_path["forward"] = "per-step"
        return True
    run(p) or run(plan(cell, H, B, dt, persistent=False))
    saved = None
    if train:
        saved = _saved(spec, x, w_ih, w_hh, lengths, reverse, host, T, B, H,
                       dict(gates=gates, c_in=cin, c_out=cout, hh_n=hhn, hbuf=hbuf, Bp=Bp))
    return _out(host, y, h_T, c_T, saved)


last_path = {}   # "forward"/"backward" -> "persistent" or "per-step" (for benchmarks)


def _run_local(spec, dt, L, backward, args, which):
    """Launch the local kernel of layout L (None: not for this layer); False if the
    driver refuses the launch (its resources), which is remembered: the caller then runs
    the units-split kernels."""
    if L is None:
        return False
    kern = local.kernel(spec.code, dt, backward, L["S"], L["KS"], L["R"], L["BQ"], L["NT"], L["U"])
    key = (id(kern), L["shared_bytes"], current_context())
    if key in _local_refused:
        return False
    try:
        launch(kern, L["blocks"], L["NT"], args, L["shared_bytes"])
    except LaunchRefused as exc:
        _local_refused[key] = str(exc)
        return False
    last_path[which] = "local"
    return True


_local_refused = {}   # local kernels the driver would not launch -> its error


def _run_persistent(kern, p, args, which):
    """Launch the persistent kernel if the grid is co-resident; False if it is not."""
    try:
        _launch(kern, p["blocks"], args, p["shared_bytes"], cooperative=True)
    except NotCoResident:
        return False
    last_path[which] = "persistent"
    return True


def _products():
    """cuBLAS through CuPy where present (cuda_blas), else the Numba kernels (cuda_dense)."""
    return blas if blas.available() else dense


def _saved(spec, x, w_ih, w_hh, lengths, reverse, host, T, B, H, ws):
    return dict(cell=spec.name, backend=name, x=x, w_ih=w_ih, w_hh=w_hh, lengths=lengths,
                reverse=bool(reverse), host=host, T=T, B=B, H=H, ws=ws)


def _out(host, y, h_T, c_T, saved):
    if host:
        return (y.copy_to_host(), h_T.copy_to_host(), None if c_T is None else c_T.copy_to_host(),
                saved)
    return y, h_T, c_T, saved


# ----------------------------------------------------------------------- backward
def backward_layer(cell, saved, dy, dh_T, dc_T, *, need_dx=True, retain=True):
    """BPTT for one layer-direction. `saved` is kept (a second backward gives the same
    result); retain is accepted for the cpu backend's signature."""
    with _lock:
        return _backward(cell, saved, dy, dh_T, dc_T, need_dx)


def _backward(cell, saved, dy, dh_T, dc_T, need_dx):
    spec = get_cell(cell)
    if saved is None:
        raise ValueError("saved: no workspace; run forward_layer with train=True before backward_layer")
    if not isinstance(saved, dict) or saved.get("cell") != spec.name or saved.get("backend") != name:
        raise ValueError(f"saved: expected the workspace of a cuda {spec.name!r} forward_layer call")
    if "w_hr" in saved:
        return projection.backward(saved, dy, dh_T, dc_T, need_dx)
    x, w_ih, w_hh, lengths = saved["x"], saved["w_ih"], saved["w_hh"], saved["lengths"]
    T, B, H, host, rev = saved["T"], saved["B"], saved["H"], saved["host"], int(saved["reverse"])
    I, dt, G = x.shape[2], x.dtype, spec.gates
    GH = G * H
    (dy, _), (dh_T, _), (dc_T, _) = (_to_device(n, a) for n, a in (("dy", dy), ("dh_T", dh_T),
                                                                  ("dc_T", dc_T)))
    check_backward_grads(spec, dy, dh_T, dc_T, T, B, H, dt, device_ok=True)
    # the weight and bias gradients are written whole by the products (no zeroing)
    dw_ih = device_array((GH, I), dt)
    dw_hh = device_array((GH, H), dt)
    db_ih = device_array(GH, dt)
    db_hh = device_array(GH, dt)
    dx = device_array((T, B, I), dt) if need_dx else None
    carry = device_array((B, H), dt)   # = dh_T, dc_T or zeros (init_grads)
    dc = device_array((B, H), dt) if spec.has_cell_state else None
    if T == 0 or B == 0 or H == 0:
        setup.init_grads(dh_T, dc_T, carry, dc, carry, B, B)
        for a in (dw_ih, dw_hh, db_ih, db_hh, dx):
            if a is not None:
                dense.fill(a, 0)
        return _grads_out(host, dx, carry, dc, dw_ih, dw_hh, db_ih, db_hh)
    dh0 = device_array((B, H), dt)

    ws = saved["ws"]
    p = plan(cell, H, B, dt, backward=True)
    assert p["Bp"] == ws["Bp"]
    Bp = p["Bp"]
    dgi = _scratch("dgi", T * B * GH, dt)
    dgh = _scratch("dgh", T * B * GH, dt) if spec.name == "gru" else dgi
    dgT = _scratch("dgT", 2 * GH * Bp, dt)
    setup.init_grads(dh_T, dc_T, carry, dc, dgT, B, Bp)
    dummy = _scratch("dummy", 1, dt)
    k = _kernels(spec, dt, p)
    head = (rev, _device_lengths(lengths), ws["gates"], ws["c_in"], ws["c_out"], ws["hh_n"],
            ws["hbuf"], dy if dy is not None else dummy, dy is not None, carry,
            dc if dc is not None else dummy, dgi, dgh)
    tail = head + (dgT, dh0, B, H, Bp)

    def run(p):
        # the local kernel keeps the last phase's dgh on the SM: no dgT
        if _run_local(spec, dt, p["local"], True, (w_hh, T) + head + (dh0, B, H, Bp), "backward"):
            return True
        shape = (p["hs"], p["S"], p["rounds"], p["KC"], p["Bs"], p["nbb"])
        if p["step_gemm"]:
            pre = _scratch("pre", B * H, dt)
            step = prepared(k["bwd_prestep"], p["blocks"], THREADS, (pre, 0, T) + tail + shape,
                            vary=1)
            product = _products().step_backward(dgh, w_hh, pre, B, H, GH)
            for s in range(T + 1):
                if s > 0:   # pre = dgh of the previous phase @ W_hh
                    product(rec.bptt_time(s - 1, T, rev) * B * GH)
                step(s)
            last_path["backward"] = "step-gemm"
            return True
        Wb = _pack(w_hh, G, H, p, backward=True)
        if p["persistent"]:
            return _run_persistent(k["bwd_persistent"], p, (Wb, T) + tail + shape + (_grid_counter(),),
                                   "backward")
        for s in range(T + 1):
            _launch(k["bwd_onestep"], p["blocks"], (Wb, s, T) + tail + shape, p["shared_bytes"])
        last_path["backward"] = "per-step"
        return True
    run(p) or run(plan(cell, H, B, dt, backward=True, persistent=False))

    _products().gradients(dgi, dgh, x, ws["hbuf"], w_ih, dw_ih, dw_hh, db_ih, db_hh, dx,
                          T, B, I, H, GH, Bp, rev)
    return _grads_out(host, dx, dh0, dc, dw_ih, dw_hh, db_ih, db_hh)


def _grads_out(host, dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh):
    out = (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh)
    if host:
        return tuple(None if a is None else a.copy_to_host() for a in out)
    return out

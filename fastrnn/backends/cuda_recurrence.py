"""Numba CUDA recurrence kernels: forward and BPTT for one layer-direction.

Work split (DESIGN.md, "how a fast backend is fast"): unit block `ub` owns hidden units
j in [ub*hs, ub*hs + hs) with all G gates of each, so a step's product, gates and
nonlinearity fuse and a step needs one grid-wide barrier. With nbb > 1 batch blocks
(FASTRNN_CUDA_BATCH_BLOCKS) block ub*nbb + bb runs those units for sequences
[bb*Bs, bb*Bs + Bs) only, and stages only their state columns (Bs of each row's Bp);
nbb = 1, Bs = Bp is the units-only split.

Layouts the kernels assume (flat device arrays):
  Wf   forward weights packed per block, unit u = j - blk*hs:
         S = 1: Wf[blk*hs*G*H + k*hs*G + u*G + g] = W_hh[g*H + j, k]   (units fastest)
         S > 1: Wf[blk*hs*G*H + u*G*H + g*H + k] = W_hh[g*H + j, k]   (k fastest)
  Wb   backward weights packed per block:
         S = 1: Wb[blk*G*H*hs + r*hs + u]  = W_hh[r, j];  S > 1: Wb[blk*G*H*hs + u*G*H + r]
  hbuf state history (slots, H, Bp): the product reads h[k][b] with b fastest;
       train: slot t+rev is the input state of time t; inference: ping-pong slots 0/1
  dgT  (2, G*H, Bp): the hidden-side gate gradients of the last step, same role in BPTT
  xp, gates, dG  (T, B, G*H); xp holds x W_ih^T without biases (the forward adds them)
  y, cin, cout, hhn, dy  (T, B, H);  states (B, H)
Bp is B rounded up to the batch tile BT times nbb; its padding columns stay zero. Staged rows sit
Bp | 1 apart in shared memory (odd: no bank conflicts between slices).

Persistent kernels keep their block's packed weights in shared memory for the whole
sequence and run every step in one launch, with a grid sync per step. When the weights
do not fit on chip the same step code runs from global memory, one launch per step.
At large batches (the prestep kernels) a library matrix product computes the step's
hidden-side product into pre before the launch, and the step code only reads it:
  pre  forward (B, G*H) = h W_hh^T;  BPTT (B, H) = dgh(previous phase) W_hh

A thread computes one unit x BT batches (all G gates); when there are fewer (unit,
batch-tile) tiles than threads, S <= 32 neighbouring lanes split a tile's summed index
(each reads consecutive k of k-fastest weights: no bank conflicts) and warp shuffles add
their partial sums. Every thread reaches every syncthreads and shuffle (uniform loops).
"""
from collections import namedtuple

import numpy as np
from numba import cuda, int32

from .cuda_cells import cell_math
from .cuda_launch import SIMULATOR

SIM_THREADS = 32   # block size the cuda backend uses under the simulator
# Array indices in the hot loops are cast to unsigned: numba then skips its negative-index
# wraparound (a sign test and an add on every access), and the loops walk indices by fixed
# steps, four terms per test of the loop counter. The product loop went from 13-32 to
# 1.6-5.5 SASS instructions per FMA on sm_90 (benchmarks/gpu_sass.py).
ix = np.uint64
STAGE_BYTES = 64   # bytes of state a thread loads at once when staging rows in shared memory
RNN_TANH, RNN_RELU, LSTM, GRU = 0, 1, 2, 3
GATES = {RNN_TANH: 1, RNN_RELU: 1, LSTM: 4, GRU: 3}

# Where a thread works, fixed for a launch (thread_geometry): computed once, so a step of
# the persistent kernels does no integer division (numba's floor division is a ~50-
# instruction sequence). sl: the thread's slice of the summed index (S slices, sbits =
# log2 S). Tiles: coordinates (maj, mnr), mnr < m, stepped by (dmaj, dmnr) a round (see
# tile_at). Staging: the thread's first (row r0, column cc0) and its step (dr, dc).
Geometry = namedtuple("Geometry", "sl S sbits m maj mnr dmaj dmnr r0 cc0 dr dc")


@cuda.jit(device=True, inline=True)
def pow2_bits(S):
    """log2 of S, a power of two (at most 32)."""
    b = 0
    while (1 << b) < S:
        b += 1
    return b


@cuda.jit(device=True, inline=True)
def thread_geometry(S, hs, nq, kfast, Bp):
    """This thread's Geometry for the launch. The S slices that split one tile's summed
    index are neighbouring lanes (S a power of two: shifts). Tile position tp has
    coordinates (maj, mnr) = divmod(tp, m); a round moves them by ntp positions, the
    tiles a block covers at once. With k-fastest weights (kfast) m = nq: neighbouring
    tiles share a unit, so their weight reads are broadcasts; otherwise m = hs: they
    share a batch tile and read neighbouring units."""
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    sbits = pow2_bits(S)
    tp = tid >> sbits
    ntp = nt >> sbits
    m = nq if kfast else hs
    maj = tp // m
    dmaj = ntp // m
    r0 = tid // Bp
    dr = nt // Bp
    return Geometry(tid & (S - 1), S, sbits, m, maj, tp - maj * m, dmaj, ntp - dmaj * m,
                    r0, tid - r0 * Bp, dr, nt - dr * Bp)


@cuda.jit(device=True, inline=True)
def tile_at(maj, mnr, u0, hs, nq, H, kfast):
    """(unit u in the block, batch tile bq, hidden unit j, active) of tile (maj, mnr)."""
    if kfast:
        u, bq = maj, mnr
    else:
        u, bq = mnr, maj
    j = u0 + u
    return u, bq, j, u < hs and bq < nq and j < H


@cuda.jit(device=True, inline=True)
def advance(maj, mnr, dmaj, dmnr, m):
    """(maj, mnr) moved by (dmaj, dmnr), mnr < m (and dmnr < m): the position
    maj * m + mnr advanced by dmaj * m + dmnr without a division."""
    maj += dmaj
    mnr += dmnr
    if mnr >= m:
        mnr -= m
        maj += 1
    return maj, mnr


@cuda.jit(device=True, inline=True)
def next_tile(maj, mnr, geo):
    """The coordinates of this thread's tile in the next round."""
    return advance(maj, mnr, geo.dmaj, geo.dmnr, geo.m)


@cuda.jit(device=True, inline=True)
def flag_sync(bar):
    """A grid barrier on one uint32 in global memory, bar[0] (the persistent kernels with
    FASTRNN_CUDA_GRID_SYNC=flag): one atomic add a block, block 0 adding 2**31 - (blocks
    - 1) and the others 1, so the adds sum to 2**31: the top bit flips once all blocks
    have arrived, and not before, only if the low 31 bits start at 0 (with block 0 in,
    the sum is short of 2**31 by the missing blocks and borrows from the top bit). They
    come back to 0 after every barrier, so a counter zeroed once serves every launch.
    This is the scheme of CUDA's header grid sync; numba's grid.sync() calls cudadevrt's instead
    (a function call a step; 1.2-1.4 us a sync measured on an H100). The whole grid must
    be resident: the kernels are launched cooperatively. Polls with atomic adds of 0:
    numba has no volatile load, and a plain load may be served from a stale L1 line."""
    cuda.syncthreads()
    if cuda.threadIdx.x == 0:
        add = np.uint32(1)
        if cuda.blockIdx.x == 0:
            add = np.uint32(0x80000000 - (cuda.gridDim.x - 1))
        cuda.threadfence()   # this block's writes (ordered by syncthreads) before the arrival
        old = cuda.atomic.add(bar, 0, add)
        while ((old ^ cuda.atomic.add(bar, 0, np.uint32(0))) & np.uint32(0x80000000)) == 0:
            pass
        cuda.threadfence()   # the other blocks' writes before this block's reads
    cuda.syncthreads()


def step_slots(s, T, rev, train):
    """(time t of forward step s, state slot read, state slot written): train keeps every
    state (slot t + rev is the input of time t), inference ping-pongs slots 0/1. Plain
    Python: the kernels compile it, the step-gemm loop (cuda.py) calls it."""
    t = T - 1 - s if rev else s
    if train:
        return t, t + rev, t + 1 - rev
    return t, s % 2, 1 - s % 2


def bptt_time(s, T, rev):
    """The time BPTT phase s works on (phase T, the final dh0, gives -1 or T)."""
    return s if rev else T - 1 - s


def _build(cell, nb_dtype, BT, flag):
    G = GATES[cell]
    GB = G * BT
    STAGE_DEPTH = STAGE_BYTES * 8 // nb_dtype.bitwidth   # 16 float32, 8 float64
    zero = nb_dtype(0)
    cm = cell_math(nb_dtype, relu=cell == RNN_RELU)

    # the persistent kernels' barrier between steps: flag_sync (flag) or numba's grid sync
    if flag:
        @cuda.jit(device=True, inline=True)
        def grid_handle():
            return 0

        @cuda.jit(device=True, inline=True)
        def grid_barrier(grid, bar):
            flag_sync(bar)
    else:
        @cuda.jit(device=True, inline=True)
        def grid_handle():
            return cuda.cg.this_grid()

        @cuda.jit(device=True, inline=True)
        def grid_barrier(grid, bar):
            grid.sync()

    def tile_ops(NG):
        """The staged product and the slice reduction for a thread tile of NG rows x BT
        sequences: NG = G (all gates of a unit, forward) or 1 (one unit, BPTT)."""
        NB = NG * BT

        @cuda.jit(device=True, inline=True)
        def add_term(W, wi, gstride, sm, hi, acc):
            """acc[g*BT+q] += W[wi + g*gstride] * sm[hi + q]: one summed index k."""
            for q in range(BT):
                hv = sm[hi + ix(q)]
                for g in range(NG):
                    acc[g * BT + q] += W[wi + ix(g * gstride)] * hv

        @cuda.jit(device=True, inline=True)
        def staged_product(W, wb, wstride, ustride, gstride, src, sb, sm, so, KC, Bp, Bs, nk, geo,
                           u, bq, active, acc):
            """acc[g*BT+q] = sum_{k = sl, sl+S, ...} W[wb + k*wstride + u*ustride + g*gstride]
            * src[sb + k*Bp + bq*BT + q], with the Bs columns of src's rows (Bp long) from
            sb on copied KC rows at a time into shared memory at sm[so:] by the whole block
            (many loads in flight, then shared-memory reads). Staged rows are Bs | 1 apart:
            an odd stride puts the S lanes' rows k, k+1, ... in different banks. nk = 0
            gives acc = 0. The summed loop walks unsigned indices by fixed steps (see ix)."""
            tid = cuda.threadIdx.x
            nt = cuda.blockDim.x
            sl, S, dr, dc = geo.sl, geo.S, geo.dr, geo.dc   # (dr, dc): the copy loop's step
            Bss = Bs | 1
            hstep = ix(S * Bss)
            wstep = ix(S * wstride)
            buf = cuda.local.array(STAGE_DEPTH, nb_dtype)
            for i in range(NB):
                acc[i] = zero
            c0 = 0
            while c0 < nk:   # while loops: a range() with a step divides for its length
                rows = min(KC, nk - c0)
                cuda.syncthreads()
                n = rows * Bs
                base = sb + c0 * Bp
                r = geo.r0
                cc = geo.cc0
                i0 = tid
                while i0 < n:
                    # STAGE_DEPTH loads in flight at once, then their stores: one wait on
                    # L2 latency instead of one per few values. (r, cc): row and column of
                    # the value, both in src and in shared memory.
                    rl = r
                    cl = cc
                    for v in range(STAGE_DEPTH):
                        if i0 + v * nt < n:
                            buf[v] = src[ix(base + rl * Bp + cl)]
                        rl, cl = advance(rl, cl, dr, dc, Bs)
                    for v in range(STAGE_DEPTH):
                        if i0 + v * nt < n:
                            sm[ix(so + r * Bss + cc)] = buf[v]
                        r, cc = advance(r, cc, dr, dc, Bs)
                    i0 += STAGE_DEPTH * nt
                cuda.syncthreads()
                if active:
                    hi = ix(so + sl * Bss + bq * BT)
                    wi = ix(wb + (c0 + sl) * wstride + u * ustride)
                    terms = (rows - sl + S - 1) >> geo.sbits   # k = sl, sl + S, ... < rows
                    for _ in range(terms & 3):
                        add_term(W, wi, gstride, sm, hi, acc)
                        hi += hstep
                        wi += wstep
                    quads = terms >> 2   # a while loop: numba's range() adds a test per term
                    while quads > 0:     # four terms per loop-counter test
                        for _ in range(4):
                            add_term(W, wi, gstride, sm, hi, acc)
                            hi += hstep
                            wi += wstep
                        quads -= 1
                c0 += KC

        @cuda.jit(device=True, inline=True)
        def shuffle_reduce(acc, S):
            """Sum the S slices' partial acc into slice 0's lane: the S slices of a tile are
            neighbouring lanes of one warp (S a power of two <= 32), so warp shuffles add
            them. Every lane of the warp must call this."""
            off = S // 2
            while off > 0:
                for i in range(NB):
                    acc[i] += cuda.shfl_down_sync(0xffffffff, acc[i], off)
                off //= 2

        @cuda.jit(device=True, inline=True)
        def shared_reduce(acc, S):
            """The simulator's stand-in (it has no warp shuffles): the same sums, through
            shared memory (blocks of SIM_THREADS threads)."""
            red = cuda.shared.array(SIM_THREADS * NB, nb_dtype)
            tid = cuda.threadIdx.x
            cuda.syncthreads()
            for i in range(NB):
                red[tid * NB + i] = acc[i]
            cuda.syncthreads()
            if tid % S == 0:
                for i in range(NB):
                    v = zero
                    for x in range(S):
                        v += red[(tid + x) * NB + i]
                    acc[i] = v
            cuda.syncthreads()

        reduce_slices = shared_reduce if SIMULATOR else shuffle_reduce
        return staged_product, reduce_slices

    fwd_product, fwd_reduce = tile_ops(G)
    bwd_product, bwd_reduce = tile_ops(1)

    @cuda.jit(device=True, inline=True)
    def load_block_weights(sm, Wp, nW, ub):
        """Copy the packed weight slice of unit block ub (nW values) into shared memory."""
        base = ub * nW
        for i in range(cuda.threadIdx.x, nW, cuda.blockDim.x):
            sm[i] = Wp[base + i]

    @cuda.jit(device=True, inline=True)
    def block_tile(nbb, Bs):
        """(unit block, first sequence) of this block: block = unit block * nbb + batch
        block, each batch block taking Bs sequences (all of them when nbb = 1)."""
        ub = cuda.blockIdx.x // nbb
        return ub, (cuda.blockIdx.x - ub * nbb) * Bs

    fwd_slots = cuda.jit(device=True, inline=True)(step_slots)
    bwd_time = cuda.jit(device=True, inline=True)(bptt_time)

    # ------------------------------------------------------------------ forward
    def make_fwd_step(from_pre):
        """The forward step. from_pre, a compile-time constant: the hidden-side product
        was computed before the launch by a library matrix product into pre (B, G*H), and
        the step is only the gates' elementwise work (no staging, no shared memory)."""

        @cuda.jit(device=True)
        def fwd_step(W, wb, src, sb, sm, so, KC, kfast, xp, b_ih, b_hh, has_bias, lengths, hbuf, rslot, wslot,
                     cst, y, hout, gates, cin, cout, hhn, t, last, B, H, Bp, hs, u0, b0, Bs, geo, rounds,
                     train, pre):
            acc = cuda.local.array(GB, nb_dtype)
            xv = cuda.local.array(GB, nb_dtype)   # this step's x W_ih^T + bias, per gate and sequence
            hp = cuda.local.array(BT, nb_dtype)   # previous h
            cp = cuda.local.array(BT, nb_dtype)   # previous c (LSTM)
            ln = cuda.local.array(BT, int32)      # lengths
            nq = Bs // BT   # batch tiles of this block: sequences b0 + bq*BT + q
            GH = G * H
            HB = H * Bp
            maj, mnr = geo.maj, geo.mnr
            for _ in range(rounds):
                u, bq, j, active = tile_at(maj, mnr, u0, hs, nq, H, kfast)
                maj, mnr = next_tile(maj, mnr, geo)
                owner = active and geo.sl == 0
                if owner:
                    # Issue the step's global loads before the product: they arrive while it runs.
                    for g in range(G):
                        bias = zero
                        if has_bias:
                            bias = b_ih[g * H + j]
                            if not (cell == GRU and g == 2):   # b_hn sits inside r * (.)
                                bias += b_hh[g * H + j]
                        for q in range(BT):
                            b = b0 + bq * BT + q
                            if b < B:
                                xv[g * BT + q] = xp[(t * B + b) * GH + g * H + j] + bias
                    for q in range(BT):
                        b = b0 + bq * BT + q
                        if b < B:
                            hp[q] = hbuf[rslot * HB + j * Bp + b]
                            if not from_pre:   # early only where a product follows
                                ln[q] = lengths[b]
                            if cell == LSTM:
                                cp[q] = cst[b * H + j]
                if from_pre:
                    if owner:
                        for g in range(G):
                            for q in range(BT):
                                b = b0 + bq * BT + q
                                if b < B:
                                    acc[g * BT + q] = pre[b * GH + g * H + j]
                elif kfast:   # Wf[u][g][k]
                    fwd_product(W, wb, 1, GH, H, src, sb + b0, sm, so, KC, Bp, Bs, H, geo, u, bq, active, acc)
                else:         # Wf[k][u][g]
                    fwd_product(W, wb, hs * G, G, 1, src, sb + b0, sm, so, KC, Bp, Bs, H, geo, u, bq, active,
                                acc)
                if geo.S > 1 and not from_pre:
                    fwd_reduce(acc, geo.S)
                if owner:
                    bhn = zero
                    if cell == GRU and has_bias:
                        bhn = b_hh[2 * H + j]
                    for q in range(BT):
                        b = b0 + bq * BT + q
                        if b < B:
                            valid = t < (lengths[b] if from_pre else ln[q])
                            hprev = hp[q]
                            xo = (t * B + b) * GH + j
                            if cell == LSTM:
                                c = cp[q]
                                ig, fg, gg, og, cn, hn = cm.lstm_fwd(
                                    acc[q] + xv[q], acc[BT + q] + xv[BT + q],
                                    acc[2 * BT + q] + xv[2 * BT + q], acc[3 * BT + q] + xv[3 * BT + q], c)
                                if valid:
                                    cst[b * H + j] = cn
                                if train:
                                    gates[xo] = ig
                                    gates[xo + H] = fg
                                    gates[xo + 2 * H] = gg
                                    gates[xo + 3 * H] = og
                                    cin[(t * B + b) * H + j] = c
                                    cout[(t * B + b) * H + j] = cn
                            elif cell == GRU:
                                hn_ = acc[2 * BT + q] + bhn
                                rg, zg, ng, hn = cm.gru_fwd(acc[q] + xv[q], acc[BT + q] + xv[BT + q],
                                                            xv[2 * BT + q], hn_, hprev)
                                if train:
                                    gates[xo] = rg
                                    gates[xo + H] = zg
                                    gates[xo + 2 * H] = ng
                                    hhn[(t * B + b) * H + j] = hn_
                            else:
                                hn = cm.rnn_fwd(acc[q] + xv[q])
                                if train:
                                    gates[xo] = hn
                            hnew = hn if valid else hprev
                            hbuf[wslot * HB + j * Bp + b] = hnew
                            y[(t * B + b) * H + j] = hn if valid else zero
                            if last:
                                hout[b * H + j] = hnew

        return fwd_step

    fwd_step = make_fwd_step(False)    # callers pass their shared array as the unused pre
    fwd_step_pre = make_fwd_step(True)

    @cuda.jit
    def fwd_persistent(Wf, xp, b_ih, b_hh, has_bias, lengths, hbuf, cst, y, hout, gates, cin, cout,
                       hhn, T, B, H, Bp, hs, S, rounds, rev, train, KC, Bs, nbb, bar):
        """Shared memory: [packed weights | KC x Bs staged state rows]. bar: flag_sync's."""
        sm = cuda.shared.array(0, nb_dtype)
        ub, b0 = block_tile(nbb, Bs)
        nW = hs * G * H
        load_block_weights(sm, Wf, nW, ub)
        geo = thread_geometry(S, hs, Bs // BT, S > 1, Bs)
        grid = grid_handle()
        for s in range(T):
            t, rslot, wslot = fwd_slots(s, T, rev, train)
            fwd_step(sm, 0, hbuf, rslot * H * Bp, sm, nW, KC, S > 1, xp, b_ih, b_hh, has_bias, lengths,
                     hbuf, rslot, wslot, cst, y, hout, gates, cin, cout, hhn, t, s == T - 1, B, H, Bp, hs,
                     ub * hs, b0, Bs, geo, rounds, train, sm)
            grid_barrier(grid, bar)

    @cuda.jit
    def fwd_onestep(Wf, xp, b_ih, b_hh, has_bias, lengths, hbuf, cst, y, hout, gates, cin, cout, hhn,
                    s, T, B, H, Bp, hs, S, rounds, rev, train, KC, Bs, nbb):
        """Fallback: one step per launch, weights read from global memory.
        Shared memory: [KC x Bs staged state rows]."""
        sm = cuda.shared.array(0, nb_dtype)
        ub, b0 = block_tile(nbb, Bs)
        t, rslot, wslot = fwd_slots(s, T, rev, train)
        geo = thread_geometry(S, hs, Bs // BT, S > 1, Bs)
        fwd_step(Wf, ub * hs * G * H, hbuf, rslot * H * Bp, sm, 0, KC, S > 1, xp, b_ih, b_hh,
                 has_bias, lengths, hbuf, rslot, wslot, cst, y, hout, gates, cin, cout, hhn, t, s == T - 1,
                 B, H, Bp, hs, ub * hs, b0, Bs, geo, rounds, train, sm)

    @cuda.jit
    def fwd_prestep(pre, xp, b_ih, b_hh, has_bias, lengths, hbuf, cst, y, hout, gates, cin, cout, hhn,
                    s, T, B, H, Bp, hs, S, rounds, rev, train, KC, Bs, nbb):
        """One step after a library product wrote pre (B, G*H) = h(previous) W_hh^T."""
        ub, b0 = block_tile(nbb, Bs)
        t, rslot, wslot = fwd_slots(s, T, rev, train)
        geo = thread_geometry(S, hs, Bs // BT, False, Bs)
        fwd_step_pre(pre, 0, pre, 0, pre, 0, KC, False, xp, b_ih, b_hh, has_bias, lengths, hbuf, rslot,
                     wslot, cst, y, hout, gates, cin, cout, hhn, t, s == T - 1, B, H, Bp, hs, ub * hs,
                     b0, Bs, geo, rounds, train, pre)

    # ------------------------------------------------------------------ backward
    # values BPTT reads per (unit, sequence) and step, loaded before the step's product
    NPF = {LSTM: 9, GRU: 7}.get(cell, 3) * BT

    def make_bwd_step(from_pre):
        """The BPTT phase. from_pre, a compile-time constant: W_hh^T dgh of the previous
        phase was computed before the launch into pre (B, H)."""

        @cuda.jit(device=True)
        def bwd_step(W, wb, src, sb, sm, so, KC, kfast, s, T, t, rev, lengths, gates, cin, cout, hhn, hbuf,
                     dy, has_dy, carry, dc, dgi, dgh, dgT, wslot, dh0, B, H, Bp, hs, u0, b0, Bs, geo, rounds,
                     pre):
            """Phase s of BPTT: rec = W_hh^T dgh(previous step); for s < T also the gate
            gradients of time t; for s == T the final dh0."""
            acc = cuda.local.array(BT, nb_dtype)
            pf = cuda.local.array(NPF, nb_dtype)   # pf[v * BT + q]: value v of sequence q
            ln = cuda.local.array(BT, int32)       # lengths
            nq = Bs // BT   # batch tiles of this block: sequences b0 + bq*BT + q
            GH = G * H
            maj, mnr = geo.maj, geo.mnr
            for _ in range(rounds):
                u, bq, j, active = tile_at(maj, mnr, u0, hs, nq, H, kfast)
                maj, mnr = next_tile(maj, mnr, geo)
                owner = active and geo.sl == 0
                if owner and s < T:
                    # Issue the step's global loads before the product: they arrive while it runs.
                    for q in range(BT):
                        b = b0 + bq * BT + q
                        if b < B:
                            go = (t * B + b) * GH + j
                            ho = (t * B + b) * H + j
                            pf[q] = carry[b * H + j]
                            if not from_pre:   # early only where a product follows
                                ln[q] = lengths[b]
                            pf[BT + q] = dy[ho] if has_dy else zero
                            pf[2 * BT + q] = gates[go]
                            if cell == LSTM:
                                pf[3 * BT + q] = gates[go + H]
                                pf[4 * BT + q] = gates[go + 2 * H]
                                pf[5 * BT + q] = gates[go + 3 * H]
                                pf[6 * BT + q] = cout[ho]
                                pf[7 * BT + q] = cin[ho]
                                pf[8 * BT + q] = dc[b * H + j]
                            elif cell == GRU:
                                pf[3 * BT + q] = gates[go + H]
                                pf[4 * BT + q] = gates[go + 2 * H]
                                pf[5 * BT + q] = hbuf[(t + rev) * H * Bp + j * Bp + b]
                                pf[6 * BT + q] = hhn[ho]
                # rec = sum_r W_hh[r, j] dgh_prev[r, b]; none before the first step (s = 0)
                nk = GH if s > 0 else 0
                if from_pre:
                    if owner:
                        for q in range(BT):
                            b = b0 + bq * BT + q
                            if b < B:
                                acc[q] = pre[b * H + j] if s > 0 else zero
                elif kfast:   # Wb[u][r]
                    bwd_product(W, wb, 1, GH, 0, src, sb + b0, sm, so, KC, Bp, Bs, nk, geo, u, bq, active, acc)
                else:         # Wb[r][u]
                    bwd_product(W, wb, hs, 1, 0, src, sb + b0, sm, so, KC, Bp, Bs, nk, geo, u, bq, active,
                                acc)
                if geo.S > 1 and not from_pre:
                    bwd_reduce(acc, geo.S)
                if owner:
                    for q in range(BT):
                        b = b0 + bq * BT + q
                        if b < B:
                            if s == T:
                                dh0[b * H + j] = carry[b * H + j] + acc[q]
                                continue
                            dh = pf[q] + acc[q]
                            dho = dh + pf[BT + q]
                            valid = t < (lengths[b] if from_pre else ln[q])
                            go = (t * B + b) * GH + j
                            tb = wslot * GH * Bp + j * Bp + b
                            if cell == LSTM:
                                fg = pf[3 * BT + q]
                                di, df, dg, do, dct = cm.lstm_bwd(
                                    dho, pf[8 * BT + q], pf[2 * BT + q], fg, pf[4 * BT + q], pf[5 * BT + q],
                                    pf[6 * BT + q], pf[7 * BT + q])
                                if not valid:
                                    di = df = dg = do = zero
                                else:
                                    dc[b * H + j] = dct * fg
                                dgi[go] = di
                                dgi[go + H] = df
                                dgi[go + 2 * H] = dg
                                dgi[go + 3 * H] = do
                                if not from_pre:
                                    dgT[tb] = di
                                    dgT[tb + H * Bp] = df
                                    dgT[tb + 2 * H * Bp] = dg
                                    dgT[tb + 3 * H * Bp] = do
                                carry[b * H + j] = zero if valid else dh
                            elif cell == GRU:
                                zg = pf[3 * BT + q]
                                dr, dz, dn, dnh = cm.gru_bwd(dho, pf[2 * BT + q], zg, pf[4 * BT + q],
                                                             pf[5 * BT + q], pf[6 * BT + q])
                                if not valid:
                                    dr = dz = dn = dnh = zero
                                dgi[go] = dr
                                dgi[go + H] = dz
                                dgi[go + 2 * H] = dn
                                dgh[go] = dr
                                dgh[go + H] = dz
                                dgh[go + 2 * H] = dnh
                                if not from_pre:
                                    dgT[tb] = dr
                                    dgT[tb + H * Bp] = dz
                                    dgT[tb + 2 * H * Bp] = dnh
                                carry[b * H + j] = dho * zg if valid else dh
                            else:
                                dp = cm.rnn_bwd(dho, pf[2 * BT + q])
                                if not valid:
                                    dp = zero
                                dgi[go] = dp
                                if not from_pre:
                                    dgT[tb] = dp
                                carry[b * H + j] = zero if valid else dh

        return bwd_step

    bwd_step = make_bwd_step(False)
    bwd_step_pre = make_bwd_step(True)

    @cuda.jit
    def bwd_persistent(Wb, T, rev, lengths, gates, cin, cout, hhn, hbuf, dy, has_dy, carry, dc,
                       dgi, dgh, dgT, dh0, B, H, Bp, hs, S, rounds, KC, Bs, nbb, bar):
        """Shared memory: [packed weights | KC x Bs staged gradient rows]. bar: flag_sync's."""
        sm = cuda.shared.array(0, nb_dtype)
        ub, b0 = block_tile(nbb, Bs)
        nW = hs * G * H
        load_block_weights(sm, Wb, nW, ub)
        geo = thread_geometry(S, hs, Bs // BT, S > 1, Bs)
        grid = grid_handle()
        for s in range(T + 1):
            t = bwd_time(s, T, rev)
            rs = (s + 1) % 2          # slot the previous phase wrote
            bwd_step(sm, 0, dgT, rs * G * H * Bp, sm, nW, KC, S > 1, s, T, t, rev, lengths, gates,
                     cin, cout, hhn, hbuf, dy, has_dy, carry, dc, dgi, dgh, dgT, s % 2, dh0, B, H, Bp,
                     hs, ub * hs, b0, Bs, geo, rounds, sm)
            grid_barrier(grid, bar)

    @cuda.jit
    def bwd_onestep(Wb, s, T, rev, lengths, gates, cin, cout, hhn, hbuf, dy, has_dy, carry, dc,
                    dgi, dgh, dgT, dh0, B, H, Bp, hs, S, rounds, KC, Bs, nbb):
        sm = cuda.shared.array(0, nb_dtype)
        ub, b0 = block_tile(nbb, Bs)
        t = bwd_time(s, T, rev)
        rs = (s + 1) % 2
        geo = thread_geometry(S, hs, Bs // BT, S > 1, Bs)
        bwd_step(Wb, ub * hs * G * H, dgT, rs * G * H * Bp, sm, 0, KC, S > 1, s, T, t, rev,
                 lengths, gates, cin, cout, hhn, hbuf, dy, has_dy, carry, dc, dgi, dgh, dgT, s % 2,
                 dh0, B, H, Bp, hs, ub * hs, b0, Bs, geo, rounds, sm)

    @cuda.jit
    def bwd_prestep(pre, s, T, rev, lengths, gates, cin, cout, hhn, hbuf, dy, has_dy, carry, dc,
                    dgi, dgh, dgT, dh0, B, H, Bp, hs, S, rounds, KC, Bs, nbb):
        """One BPTT phase after a library product wrote pre (B, H) = dgh(previous) W_hh."""
        ub, b0 = block_tile(nbb, Bs)
        t = bwd_time(s, T, rev)
        geo = thread_geometry(S, hs, Bs // BT, False, Bs)
        bwd_step_pre(pre, 0, pre, 0, pre, 0, KC, False, s, T, t, rev, lengths, gates, cin, cout, hhn,
                     hbuf, dy, has_dy, carry, dc, dgi, dgh, dgT, s % 2, dh0, B, H, Bp, hs, ub * hs,
                     b0, Bs, geo, rounds, pre)

    return dict(fwd_persistent=fwd_persistent, fwd_onestep=fwd_onestep,
                bwd_persistent=bwd_persistent, bwd_onestep=bwd_onestep,
                fwd_prestep=fwd_prestep, bwd_prestep=bwd_prestep)


_CACHE = {}


def kernels(cell_code, dtype, BT, flag=False):
    """The recurrence kernels (persistent, one step, one step after a library product;
    forward and BPTT) for one (cell, dtype, batch tile), compiled lazily. flag: the
    persistent kernels synchronise the grid with flag_sync instead of numba's grid sync."""
    key = (cell_code, np.dtype(dtype), BT, bool(flag))
    if key not in _CACHE:
        from numba import from_dtype
        _CACHE[key] = _build(cell_code, from_dtype(np.dtype(dtype)), BT, bool(flag))
    return _CACHE[key]

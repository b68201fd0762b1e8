"""Numba CUDA recurrence kernels for layers whose whole W_hh fits on one SM (the "local"
path): forward and BPTT for one layer-direction.

A block holds all of W_hh, part in registers and the rest in shared memory, and runs its
BQ sequences from the first step to the last. Blocks never wait for one another: a step
has no grid barrier, the state never leaves the SM, and one syncthreads ends a step. The
batch spreads over the SMs, BQ sequences a block. The persistent kernels
(cuda_recurrence.py) split the units over SMs instead and pay a grid barrier and a trip
through L2 every step: about 4.4 us a step on an H100 whatever the size, where cuDNN
takes 2 for a plain RNN at H=256 (benchmarks/results/gpu-NVIDIA-H100-80GB-HBM3.log).
Here a step costs the SM's own product, G*H*H*BQ FMAs (64K at H=256 for one sequence),
and its shared-memory reads: the state, and the weights that are not in registers.

Layouts (thread tid of NT):
  unit group grp = tid >> SB, slice sl = tid & (S - 1): S = 2**SB neighbouring lanes of
  one warp (added by shuffles) share units j = grp*U + u, u < U, and split the summed
  index: slice sl sums k in [sl*KS, sl*KS + KS) (KS a multiple of 4; terms past the
  summed length have zero weights and zero state). A weight row of the thread is
  r = u*NO + o, NO outputs a unit:
    forward (NO = G, the gates): k indexes h (k < H); row weights W_hh[o*H + j, k]
    BPTT (NO = 1): k indexes the hidden-side gate gradients (k < G*H); W_hh[k, j]
  weights: term i < R in registers w[i*NU + r] (NU = U*NO rows); the rest in shared
    memory at ws[((i - R)*NU + r)*NT + tid]: consecutive threads, consecutive words
  state (h forward, the last phase's hidden-side gate gradients in BPTT), two slots (read
    one, write the other) after the weights: st[slot][q][(k // KS)*KSP + k % KS], q the
    sequence in the block; KSP = KS or KS + 4, whichever is 4 mod 8, so that the slices
    of a warp read rows in different banks
  After the product every lane of a group has the group's sums (butterfly shuffles); the
  gate work of its U*BQ (unit, sequence) items is split over the lanes: lane sl takes
  items e = sl, sl + S, ... (e = u*BQ + q), and keeps their LSTM c (forward), carries dh
  and dc (BPTT) in registers for the whole sequence.
Global arrays as in cuda_recurrence.py: xp, gates, dgi, dgh (T, B, G*H); y, cin, cout,
hhn, dy (T, B, H); states (B, H); hbuf (slots, H, Bp), slot t + rev the input state of
time t (train; inference reads slot 0 only).
"""
import math

import numpy as np
from numba import cuda, int32

from .cuda_cells import cell_math
from .cuda_launch import SIMULATOR
from .cuda_recurrence import GATES, GRU, LSTM, RNN_RELU, ix

# what a BPTT item loads a step ahead: dy, the saved gates, then LSTM c_out, c_in; GRU
# the step's input state and W_hn h + b_hn
BWD_LOADS = {LSTM: 7, GRU: 6}
SIM_RED = 32 * 64   # the simulator's reduction buffer: 32 threads x the most sums a thread has


def state_pitch(KS):
    """KSP: KS padded to 4 mod 8 (see the module docstring)."""
    return KS + 4 if KS % 8 == 0 else KS


def _build(cell, nb_dtype, backward, S, KS, R, BQ, NT, U):
    G = GATES[cell]
    SB = int(math.log2(S))
    NO = 1 if backward else G
    NU = U * NO              # weight rows a thread
    NA = NU * BQ             # sums a thread
    NE = U * BQ              # (unit, sequence) items of a group
    ME = -(-NE // S)         # items a lane
    KSP = state_pitch(KS)
    ROW = S * KSP            # one sequence's state row
    SLOT = BQ * ROW
    NSH = KS - R             # terms a thread reads from shared memory
    NW = max(1, R * NU)
    NL = BWD_LOADS.get(cell, 2) if backward else G   # per item: prefetched values
    NRED = SIM_RED if SIMULATOR else 1
    MEL = ME * NL
    zero = nb_dtype(0)
    cm = cell_math(nb_dtype, relu=cell == RNN_RELU)
    # the plan (cuda.py) sized R for the registers NT threads have (64K a block)
    opts = {} if SIMULATOR else dict(launch_bounds=(NT,))

    @cuda.jit(device=True, inline=True)
    def place(k):
        """Where summed index k sits in a state row."""
        c = k // KS
        return c * KSP + (k - c * KS)

    @cuda.jit(device=True, inline=True)
    def weight(W, o, k, rows, H, j):
        """Row weight (o, k) of unit j: W_hh[o*H + j, k] forward, W_hh[k, j] in BPTT; zero
        past the summed length or the units."""
        if j >= H or k >= rows:
            return zero
        return W[ix(k * H + j)] if backward else W[ix((o * H + j) * H + k)]

    @cuda.jit(device=True, inline=True)
    def setup(W, rows, H, grp, sl, w, sm, so, tid):
        """This thread's weights (registers w; shared memory sm[0:]) and the zeroed state."""
        for i in range(R):
            for u in range(U):
                for o in range(NO):
                    w[i * NU + u * NO + o] = weight(W, o, sl * KS + i, rows, H, grp * U + u)
        for i in range(NSH):
            for u in range(U):
                for o in range(NO):
                    sm[ix((i * NU + u * NO + o) * NT) + tid] = weight(W, o, sl * KS + R + i, rows, H,
                                                                      grp * U + u)
        i = cuda.threadIdx.x
        while i < 2 * SLOT:
            sm[so + ix(i)] = zero
            i += NT

    @cuda.jit(device=True, inline=True)
    def product(w, sm, sbase, tid, acc, red):
        """acc[r*BQ + q] = sum over the group's slices of weight row r times state q: this
        slice's terms (registers, then shared memory), then a butterfly over the S lanes."""
        hq = cuda.local.array(BQ, nb_dtype)
        for a in range(NA):
            acc[a] = zero
        for i in range(R):
            for q in range(BQ):
                hv = sm[sbase + ix(q * ROW + i)]
                for r in range(NU):
                    acc[r * BQ + q] += w[i * NU + r] * hv
        # pointers stepped by constants and a count-down loop: the loop body is the loads
        # and FMAs (a range() here kept a 64-bit counter and rebuilt every address)
        wi = tid
        hi = sbase + ix(R)
        n = NSH
        while n > 0:
            for q in range(BQ):
                hq[q] = sm[hi + ix(q * ROW)]
            for r in range(NU):
                wv = sm[wi + ix(r * NT)]
                for q in range(BQ):
                    acc[r * BQ + q] += wv * hq[q]
            wi += ix(NU * NT)
            hi += ix(1)
            n -= 1
        if S == 1:
            return
        if SIMULATOR:   # no shuffles in the simulator: the same sums through shared memory
            t = cuda.threadIdx.x
            g0 = t - (t & (S - 1))
            cuda.syncthreads()
            for a in range(NA):
                red[t * NA + a] = acc[a]
            cuda.syncthreads()
            for a in range(NA):
                v = zero
                for x in range(S):
                    v += red[(g0 + x) * NA + a]
                acc[a] = v
            cuda.syncthreads()
            return
        off = 1
        while off < S:
            for a in range(NA):
                acc[a] += cuda.shfl_xor_sync(0xffffffff, acc[a], off)
            off *= 2

    @cuda.jit(device=True, inline=True)
    def pick(acc, m, sl, mine):
        """mine[o] = acc of this lane's item m (e = sl + S*m), output o < NO: the item
        depends on the lane, so a select per candidate keeps acc in registers."""
        for e in range(NE):
            if e == sl + S * m:
                for o in range(NO):
                    mine[o] = acc[((e // BQ) * NO + o) * BQ + e % BQ]

    @cuda.jit(device=True, inline=True)
    def items(grp, sl, b0, H, B, lengths, jm, bm, ok, ln):
        """This lane's items: unit jm[m], sequence bm[m], ok[m] whether both exist, length."""
        for m in range(ME):
            e = sl + S * m
            jm[m] = grp * U + e // BQ
            bm[m] = b0 + e % BQ
            ok[m] = e < NE and jm[m] < H and bm[m] < B
            ln[m] = lengths[bm[m]] if ok[m] else 0

    # ------------------------------------------------------------------ forward
    @cuda.jit(device=True, inline=True)
    def load_bias(bx, m, b_ih, b_hh, has_bias, H, j):
        """bx[m*G + g]: the biases added to gate g of item m's unit j (the GRU's b_hn sits
        inside r * (.), so it is left out of gate n)."""
        for g in range(G):
            bias = zero
            if has_bias:
                bias = b_ih[g * H + j]
                if not (cell == GRU and g == 2):
                    bias += b_hh[g * H + j]
            bx[m * G + g] = bias

    @cuda.jit(device=True, inline=True)
    def load_x(xn, bx, m, xp, t, b, B, H, j):
        """xn[m*G + g] = x W_ih^T + biases of time t, item m."""
        for g in range(G):
            xn[m * G + g] = xp[ix((t * B + b) * G * H + g * H + j)] + bx[m * G + g]

    @cuda.jit(**opts)
    def fwd_local(W, xp, b_ih, b_hh, has_bias, lengths, hbuf, cst, y, hout, gates, cin, cout, hhn,
                  T, B, H, Bp, rev, train):
        sm = cuda.shared.array(0, nb_dtype)
        red = cuda.shared.array(NRED, nb_dtype)
        tid = cuda.threadIdx.x
        grp = tid >> SB
        sl = tid & (S - 1)
        b0 = cuda.blockIdx.x * BQ
        GH = G * H
        HB = H * Bp
        w = cuda.local.array(NW, nb_dtype)
        acc = cuda.local.array(NA, nb_dtype)
        mine = cuda.local.array(NO, nb_dtype)
        xv = cuda.local.array(MEL, nb_dtype)   # this step's x W_ih^T + bias, per item and gate
        xn = cuda.local.array(MEL, nb_dtype)   # the next step's
        bx = cuda.local.array(MEL, nb_dtype)   # the biases
        cr = cuda.local.array(ME, nb_dtype)        # LSTM c
        jm = cuda.local.array(ME, int32)
        bm = cuda.local.array(ME, int32)
        ok = cuda.local.array(ME, int32)
        ln = cuda.local.array(ME, int32)
        so = ix(NSH * NU * NT)                      # the state, after the weights
        setup(W, H, H, grp, sl, w, sm, so, ix(tid))
        items(grp, sl, b0, H, B, lengths, jm, bm, ok, ln)
        cuda.syncthreads()
        first = rev * T if train else 0
        for m in range(ME):
            cr[m] = zero
            if ok[m]:
                j, b = jm[m], bm[m]
                sm[so + ix((b - b0) * ROW + place(j))] = hbuf[ix(first * HB + j * Bp + b)]
                if cell == LSTM:
                    cr[m] = cst[ix(b * H + j)]
                load_bias(bx, m, b_ih, b_hh, has_bias, H, j)
                load_x(xn, bx, m, xp, T - 1 if rev else 0, b, B, H, j)
        cuda.syncthreads()
        cur = 0
        for s in range(T):
            t = T - 1 - s if rev else s
            for m in range(ME):   # this step's inputs arrived during the last; fetch the next's
                for g in range(G):
                    xv[m * G + g] = xn[m * G + g]
                if ok[m] and s + 1 < T:
                    load_x(xn, bx, m, xp, t - 1 if rev else t + 1, bm[m], B, H, jm[m])
            product(w, sm, so + ix(cur * SLOT + sl * KSP), ix(tid), acc, red)
            nxt = 1 - cur
            for m in range(ME):
                pick(acc, m, sl, mine)
                if ok[m]:
                    j, b = jm[m], bm[m]
                    valid = t < ln[m]
                    hp = so + ix((b - b0) * ROW + place(j))
                    hprev = sm[hp + ix(cur * SLOT)]
                    xo = ix((t * B + b) * GH + j)
                    ho = ix((t * B + b) * H + j)
                    if cell == LSTM:
                        c = cr[m]
                        ig, fg, gg, og, cn, hn = cm.lstm_fwd(mine[0] + xv[m * G], mine[1] + xv[m * G + 1],
                                                             mine[2] + xv[m * G + 2], mine[3] + xv[m * G + 3], c)
                        if valid:
                            cr[m] = cn
                        if train:
                            gates[xo] = ig
                            gates[xo + ix(H)] = fg
                            gates[xo + ix(2 * H)] = gg
                            gates[xo + ix(3 * H)] = og
                            cin[ho] = c
                            cout[ho] = cn
                    elif cell == GRU:
                        hn_ = mine[2]
                        if has_bias:
                            hn_ += b_hh[2 * H + j]
                        rg, zg, ng, hn = cm.gru_fwd(mine[0] + xv[m * G], mine[1] + xv[m * G + 1],
                                                    xv[m * G + 2], hn_, hprev)
                        if train:
                            gates[xo] = rg
                            gates[xo + ix(H)] = zg
                            gates[xo + ix(2 * H)] = ng
                            hhn[ho] = hn_
                    else:
                        hn = cm.rnn_fwd(mine[0] + xv[m * G])
                        if train:
                            gates[xo] = hn
                    hnew = hn if valid else hprev
                    sm[hp + ix(nxt * SLOT)] = hnew
                    y[ho] = hn if valid else zero
                    if train:
                        hbuf[ix((t + 1 - rev) * HB + j * Bp + b)] = hnew
            cuda.syncthreads()
            cur = nxt
        for m in range(ME):
            if ok[m]:
                j, b = jm[m], bm[m]
                hout[ix(b * H + j)] = sm[so + ix(cur * SLOT + (b - b0) * ROW + place(j))]
                if cell == LSTM:
                    cst[ix(b * H + j)] = cr[m]

    # ------------------------------------------------------------------ backward
    @cuda.jit(device=True, inline=True)
    def load_phase(pn, m, t, b, B, H, Bp, j, rev, gates, cin, cout, hhn, hbuf, dy, has_dy):
        """pn[m*NL + v]: what item m's gate gradients of time t read (BWD_LOADS)."""
        go = ix((t * B + b) * G * H + j)
        ho = ix((t * B + b) * H + j)
        v = m * NL
        pn[v] = dy[ho] if has_dy else zero
        pn[v + 1] = gates[go]
        if cell == LSTM:
            pn[v + 2] = gates[go + ix(H)]
            pn[v + 3] = gates[go + ix(2 * H)]
            pn[v + 4] = gates[go + ix(3 * H)]
            pn[v + 5] = cout[ho]
            pn[v + 6] = cin[ho]
        elif cell == GRU:
            pn[v + 2] = gates[go + ix(H)]
            pn[v + 3] = gates[go + ix(2 * H)]
            pn[v + 4] = hbuf[ix((t + rev) * H * Bp + j * Bp + b)]
            pn[v + 5] = hhn[ho]

    @cuda.jit(**opts)
    def bwd_local(W, T, rev, lengths, gates, cin, cout, hhn, hbuf, dy, has_dy, carry, dc,
                  dgi, dgh, dh0, B, H, Bp):
        sm = cuda.shared.array(0, nb_dtype)
        red = cuda.shared.array(NRED, nb_dtype)
        tid = cuda.threadIdx.x
        grp = tid >> SB
        sl = tid & (S - 1)
        b0 = cuda.blockIdx.x * BQ
        GH = G * H
        w = cuda.local.array(NW, nb_dtype)
        acc = cuda.local.array(NA, nb_dtype)
        mine = cuda.local.array(1, nb_dtype)
        pf = cuda.local.array(MEL, nb_dtype)
        pn = cuda.local.array(MEL, nb_dtype)
        cr = cuda.local.array(ME, nb_dtype)       # dh carried to the step before
        dcr = cuda.local.array(ME, nb_dtype)      # LSTM: dc carried
        jm = cuda.local.array(ME, int32)
        bm = cuda.local.array(ME, int32)
        ok = cuda.local.array(ME, int32)
        ln = cuda.local.array(ME, int32)
        so = ix(NSH * NU * NT)
        setup(W, GH, H, grp, sl, w, sm, so, ix(tid))
        items(grp, sl, b0, H, B, lengths, jm, bm, ok, ln)
        for m in range(ME):
            cr[m] = zero
            dcr[m] = zero
            if ok[m]:
                j, b = jm[m], bm[m]
                cr[m] = carry[ix(b * H + j)]
                if cell == LSTM:
                    dcr[m] = dc[ix(b * H + j)]
                load_phase(pn, m, 0 if rev else T - 1, b, B, H, Bp, j, rev, gates, cin, cout, hhn,
                           hbuf, dy, has_dy)
        cuda.syncthreads()
        cur = 0
        for s in range(T + 1):
            t = s if rev else T - 1 - s
            if s < T:
                for m in range(ME):
                    for v in range(NL):
                        pf[m * NL + v] = pn[m * NL + v]
                    if ok[m] and s + 1 < T:
                        load_phase(pn, m, t + 1 if rev else t - 1, bm[m], B, H, Bp, jm[m], rev, gates,
                                   cin, cout, hhn, hbuf, dy, has_dy)
            # W_hh^T times the last phase's gradients (the state is zero before the first)
            product(w, sm, so + ix(cur * SLOT + sl * KSP), ix(tid), acc, red)
            nxt = 1 - cur
            for m in range(ME):
                pick(acc, m, sl, mine)
                if ok[m]:
                    j, b = jm[m], bm[m]
                    dh = cr[m] + mine[0]
                    if s == T:
                        dh0[ix(b * H + j)] = dh
                        continue
                    v = m * NL
                    dho = dh + pf[v]
                    valid = t < ln[m]
                    go = ix((t * B + b) * GH + j)
                    st = so + ix(nxt * SLOT + (b - b0) * ROW)
                    if cell == LSTM:
                        fg = pf[v + 2]
                        di, df, dg, do, dct = cm.lstm_bwd(dho, dcr[m], pf[v + 1], fg, pf[v + 3], pf[v + 4],
                                                          pf[v + 5], pf[v + 6])
                        if not valid:
                            di = df = dg = do = zero
                        else:
                            dcr[m] = dct * fg
                        dgi[go] = di
                        dgi[go + ix(H)] = df
                        dgi[go + ix(2 * H)] = dg
                        dgi[go + ix(3 * H)] = do
                        sm[st + ix(place(j))] = di
                        sm[st + ix(place(H + j))] = df
                        sm[st + ix(place(2 * H + j))] = dg
                        sm[st + ix(place(3 * H + j))] = do
                        cr[m] = zero if valid else dh
                    elif cell == GRU:
                        zg = pf[v + 2]
                        dr, dz, dn, dnh = cm.gru_bwd(dho, pf[v + 1], zg, pf[v + 3], pf[v + 4], pf[v + 5])
                        if not valid:
                            dr = dz = dn = dnh = zero
                        dgi[go] = dr
                        dgi[go + ix(H)] = dz
                        dgi[go + ix(2 * H)] = dn
                        dgh[go] = dr
                        dgh[go + ix(H)] = dz
                        dgh[go + ix(2 * H)] = dnh
                        sm[st + ix(place(j))] = dr
                        sm[st + ix(place(H + j))] = dz
                        sm[st + ix(place(2 * H + j))] = dnh
                        cr[m] = dho * zg if valid else dh
                    else:
                        dp = cm.rnn_bwd(dho, pf[v + 1])
                        if not valid:
                            dp = zero
                        dgi[go] = dp
                        sm[st + ix(place(j))] = dp
                        cr[m] = zero if valid else dh
            cuda.syncthreads()
            cur = nxt
        if cell == LSTM:
            for m in range(ME):
                if ok[m]:
                    dc[ix(bm[m] * H + jm[m])] = dcr[m]

    return bwd_local if backward else fwd_local


_CACHE = {}


def kernel(cell_code, dtype, backward, S, KS, R, BQ, NT, U):
    """fwd_local (backward False) or bwd_local for one (cell, dtype) and thread layout,
    compiled lazily."""
    key = (cell_code, np.dtype(dtype), bool(backward), S, KS, R, BQ, NT, U)
    if key not in _CACHE:
        from numba import from_dtype
        _CACHE[key] = _build(cell_code, from_dtype(np.dtype(dtype)), bool(backward), S, KS, R, BQ, NT, U)
    return _CACHE[key]


# Weight registers a thread, by sequences a block (BQ): with 512 threads a thread has 128
# registers, and ptxas -v for sm_90 (benchmarks/gpu_sass.py) showed no spills up to these
# float32 weight counts for every cell, forward and BPTT (and spills at 80 for BQ = 1).
REG_WEIGHTS = {1: 72, 2: 64, 4: 48}
MAX_THREADS = 512
# weight rows a thread multiplies by each state value it reads (U units of NO rows): more
# rows, fewer state reads and more sums to add across the slices (4: chosen from the
# instruction counts; benchmarks/gpu_local_sweep.py times 2 and 8 against it)
UNIT_ROWS = 4


def layout(G, H, B, itemsize, backward, nsm, smem, max_threads=MAX_THREADS, reg_weights=None,
           unit_rows=None):
    """The thread layout of the local kernels for a layer, or None where they do not
    apply: the weights do not fit in registers + smem bytes of shared memory, or the
    batch needs more than one wave of nsm blocks of the largest BQ."""
    reg_weights = REG_WEIGHTS if reg_weights is None else reg_weights
    unit_rows = UNIT_ROWS if unit_rows is None else unit_rows
    BQ = next((q for q in sorted(reg_weights) if -(-B // q) <= nsm), None)
    if BQ is None or H < 1:
        return None
    NO = 1 if backward else G
    U = max(1, unit_rows // NO)            # units a thread: >= unit_rows weight rows per state read
    rows = G * H if backward else H        # the summed length
    groups = -(-H // U)
    if groups > max_threads:
        return None
    S = 1                                  # slices: fill the block, >= 4 terms each
    while S < 32 and groups * S * 2 <= max_threads and S * 2 * 4 <= rows:
        S *= 2
    KS = -(-(-(-rows // S)) // 4) * 4
    NT = -(-groups * S // 32) * 32
    NU = U * NO
    R = min(KS, reg_weights[BQ] * 4 // itemsize // NU)
    shared = ((KS - R) * NU * NT + 2 * BQ * S * state_pitch(KS)) * itemsize
    if shared > smem:
        return None
    return dict(S=S, KS=KS, R=R, BQ=BQ, NT=NT, U=U, blocks=-(-B // BQ), shared_bytes=shared)

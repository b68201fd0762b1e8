"""The per-call set-up of the cuda backend's state buffers, one kernel launch each.

A launch costs several microseconds of host time (Python and the driver), and at short
sequences a layer call is mostly host time. The forward's set-up (copy h0 and c0 to the
final-state arrays, store h0 into the state history, zero its padding) was four
launches and is one; BPTT's (the gradient carries and the padding of its staging
buffer) was three and is one.

Layouts (cuda_recurrence's module docstring): hbuf (slots, H, Bp) and dgT (2, G*H, Bp),
b fastest; Bp >= B, and the padding columns b >= B are kept zero. The recurrence writes
every valid column of every slot before reading it, so only the padding, and the slot
that holds h0, need writing here.
"""
import math

from numba import cuda

from .cuda_launch import launch


@cuda.jit
def _init_state_kernel(h0, c0, h_T, c_T, has_c, hbuf, slot0, nslots, first, B, H, Bp):
    i = cuda.grid(1)
    if i < B * H:
        h_T[i] = h0[i]
        if has_c:
            c_T[i] = c0[i]
    HB = H * Bp
    if i < nslots * HB:
        slot = slot0 + i // HB
        r = i - (slot - slot0) * HB
        j = r // Bp
        b = r - j * Bp
        if b >= B:
            hbuf[slot * HB + r] = 0
        elif slot == first:
            hbuf[slot * HB + r] = h0[b * H + j]


def init_state(h0, c0, h_T, c_T, hbuf, slots, first, B, H, Bp):
    """h_T = h0, c_T = c0 (c0 None for cells without one); slot `first` of hbuf (slots of
    H x Bp) = h0 stored (H, Bp); the padding columns of every slot zero. hbuf None: only
    the copies."""
    nslots = 0 if hbuf is None else (slots if Bp > B else 1)
    slot0 = 0 if Bp > B else first
    n = max(B * H, nslots * H * Bp)
    if n:
        has_c = c0 is not None
        launch(_init_state_kernel, math.ceil(n / 256), 256,
               (h0, c0 if has_c else h0, h_T, c_T if has_c else h_T, has_c,
                hbuf if hbuf is not None else h_T, slot0, nslots, first, B, H, Bp))


@cuda.jit
def _init_grads_kernel(dh, dcin, has_dh, has_dc, carry, dc, has_cell, dgT, nzero):
    i = cuda.grid(1)
    if i < carry.size:
        carry[i] = dh[i] if has_dh else 0
        if has_cell:
            dc[i] = dcin[i] if has_dc else 0
    if i < nzero:
        dgT[i] = 0


def init_grads(dh_T, dc_T, carry, dc, dgT, B, Bp):
    """carry = dh_T (0 when None); dc = dc_T (0 when None; dc None for cells without a
    cell state); dgT zero when it has padding columns (Bp > B), else left as it is."""
    nzero = dgT.size if Bp > B else 0
    n = max(carry.size, nzero)
    if n:
        has_cell = dc is not None
        launch(_init_grads_kernel, math.ceil(n / 256), 256,
               (dh_T if dh_T is not None else carry, dc_T if dc_T is not None else carry,
                dh_T is not None, dc_T is not None, carry, dc if has_cell else carry, has_cell,
                dgT, nzero))

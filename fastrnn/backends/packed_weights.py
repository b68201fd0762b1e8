"""Weights packed once per parameter version for the cpu kernels (DESIGN.md, "How a fast
backend is fast", point 3).

Packing W_ih and W_hh into the kernels' per-thread panels cost 1-3 ms a call at H=512
(most of a short sequence's time at batch 1). The cache keeps the packed buffer per
(weights, thread count) and reuses it while the weights are bit-for-bit what was packed:
a snapshot is compared at every call (memcmp, about 0.05 ms per 4 MB), so any change — an
optimizer step, load_state_dict, or an edit by hand to the live arrays — repacks.

That compare reads the weights and their snapshot: 0.35 ms at LSTM H = 512, several times
a step's compute at batch 1. Inside `frozen_weights()` the caller promises not to modify
the weights it passes, so each set is compared once, at its first use in the block.
"""
import contextlib
import threading
from collections import OrderedDict

import numpy as np

_frozen = threading.local()   # .verified: {cache key: (w_ih, w_hh)} inside a frozen block


@contextlib.contextmanager
def frozen_weights():
    """A block in which the weights given to the cpu backend are not modified (this
    thread's calls): each set is compared with its packed version once, at its first use,
    instead of at every call. For step-by-step generation and evaluation; not around an
    optimizer step, which modifies them. Nested blocks are one block."""
    if getattr(_frozen, "verified", None) is not None:
        yield
        return
    _frozen.verified = {}
    try:
        yield
    finally:
        _frozen.verified = None


def frozen_block_active():
    """Whether this thread is inside frozen_weights()."""
    return getattr(_frozen, "verified", None) is not None


def _numpy_same_bits(a, b):
    """Bitwise equality (NaN payloads and signed zeros included) of two same-shape arrays."""
    u = np.dtype(f"u{a.itemsize}")
    return np.array_equal(a.view(u), b.view(u))


class PackedWeightsCache:
    """Least-recently-used map (cell, dtype, shapes, data pointers, threads) -> packed buffer.
    `pack(code, I, H, w_ih, w_hh, nthreads, *extra, bptt=...)` returns a freshly packed
    array, with BPTT's panels too where bptt is true (an inference needs only the forward's:
    a third less memory and packing at I = H; a packing of `extra` weights always has both);
    `same_bits(a, b)` compares two C-contiguous same-shape arrays bit for bit and `copy(a)`
    returns a copy of one (the snapshot)."""

    def __init__(self, pack, capacity=16, same_bits=_numpy_same_bits, copy=np.copy):
        self._pack = pack
        self._same_bits = same_bits
        self._copy = copy
        self.capacity = capacity
        self._entries = OrderedDict()   # key -> (snapshots, packed, has BPTT's panels)
        self._lock = threading.Lock()
        self.packs = 0  # how many times weights were packed (tests and `fastrnn info` read it)

    def get(self, code, w_ih, w_hh, nthreads, frozen_ok=False, extra=(), recurrent_only=False, bptt=True):
        """The packed buffer for C-contiguous w_ih (G*H, I) and w_hh (G*H, H), and any
        `extra` weights packed with them (an LSTM's projection w_hr), each compared as well.
        frozen_ok: they are the caller's own arrays, not copies made for this call, so
        inside frozen_weights() one compare covers the block (holding a copy per call
        instead would keep every call's copy alive until the block ends).
        recurrent_only: the caller reads only the W_hh panels (BPTT reads W_ih as it is),
        so a cached entry is compared on w_hh alone: its W_ih panels may be stale, and
        the next full get() compares them.
        bptt: the caller needs BPTT's panels (a training forward, whose backward reads
        them, or a backward); without, a packing of the forward's panels alone serves."""
        weights = (w_ih, w_hh) + tuple(extra)
        compared = (1,) if recurrent_only and not extra else range(len(weights))
        key = (code, w_ih.dtype.str, nthreads) + tuple((w.shape, w.ctypes.data) for w in weights)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
        verified = getattr(_frozen, "verified", None) if frozen_ok else None
        snaps, repack = None, True
        if entry is not None:
            snaps, packed, full = entry
            usable = full or not bptt
            if usable and verified is not None and key in verified:   # compared earlier in this frozen block
                return packed
            if not all(self._same_bits(snaps[i], weights[i]) for i in compared):
                snaps = None    # a new version
            elif usable:
                if len(compared) < len(weights):
                    return packed   # not all compared: not recorded as verified
                repack = False
            elif len(compared) < len(weights):
                snaps = None    # BPTT's panels wanted, W_ih not compared: a fresh snapshot too
        if repack:
            # a new version, new weights, or the same with BPTT's panels added: pack it, and
            # keep a snapshot to recognise it by
            full = bool(bptt or extra)
            packed = self._pack(code, w_ih.shape[1], w_hh.shape[1], w_ih, w_hh, nthreads, *extra, bptt=full)
            with self._lock:
                self.packs += 1
                self._entries[key] = (snaps or tuple(self._copy(w) for w in weights), packed, full)
                self._entries.move_to_end(key)
                while len(self._entries) > self.capacity:
                    self._entries.popitem(last=False)
        if verified is not None:
            # holding the arrays keeps their memory: no other array can take these
            # addresses (the key) before the block ends
            verified[key] = weights
        return packed

    def clear(self):
        with self._lock:
            self._entries.clear()

    def __len__(self):
        return len(self._entries)

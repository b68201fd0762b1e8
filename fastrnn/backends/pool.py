"""A bounded pool of scratch arrays, so a training loop's forward reuses the workspace its
previous backward released instead of taking fresh memory from the OS each step (fresh
pages are zeroed by the kernel on first touch: ~25% of an LSTM training step at B=32)."""
import math
import threading

import numpy as np

# The kernels' vectors and cache lines are 64 bytes. numpy's own arrays start 16 or 32
# bytes past a line, so every 64-byte vector load or store of a row spans two lines, and two
# threads writing neighbouring slices of a row share its boundary lines.
ALIGN = 64


def aligned_empty(shape, dtype):
    """An uninitialised C-contiguous array. From 4 KB its data starts on a 64-byte boundary
    (a view into a byte buffer ALIGN bytes longer, which is its .base); smaller arrays are
    np.empty's as they are: a few lines gain nothing worth the 1.5 us aligning costs, and a
    generated token allocates a dozen."""
    dtype = np.dtype(dtype)
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < 4096:
        return np.empty(shape, dtype)
    raw = np.empty(nbytes + ALIGN, np.uint8)
    return np.ndarray(shape, dtype, raw, -raw.ctypes.data % ALIGN)


def _owns_memory(a):
    """True for an array that owns its memory, or that is the whole of an aligned_empty
    buffer (no other array can be using that memory through the pool's handle)."""
    if a.flags.owndata:
        return True
    base = a.base
    return (isinstance(base, np.ndarray) and base.flags.owndata and base.dtype == np.uint8
            and base.ndim == 1 and base.nbytes == a.nbytes + ALIGN and a.flags.c_contiguous)


class ArrayPool:
    def __init__(self, max_bytes=1 << 30, per_shape=4):
        self.max_bytes, self.per_shape = max_bytes, per_shape
        self._free = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def empty(self, shape, dtype):
        """An uninitialised array (aligned_empty's): a released one of this shape and
        dtype, else a new one."""
        key = (tuple(shape), np.dtype(dtype).str)
        with self._lock:
            stack = self._free.get(key)
            if stack:
                a = stack.pop()
                self._bytes -= a.nbytes
                return a
        return aligned_empty(shape, dtype)

    def release(self, *arrays):
        """Give arrays back; the caller must hold no other reference it will use again."""
        with self._lock:
            for a in arrays:
                if a is None or not _owns_memory(a) or self._bytes + a.nbytes > self.max_bytes:
                    continue
                stack = self._free.setdefault((a.shape, a.dtype.str), [])
                if len(stack) < self.per_shape:
                    stack.append(a)
                    self._bytes += a.nbytes

    def clear(self):
        with self._lock:
            self._free.clear()
            self._bytes = 0

    @property
    def cached_bytes(self):
        return self._bytes

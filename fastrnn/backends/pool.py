"""A bounded pool of scratch arrays, so a training loop's forward reuses the workspace its
previous backward released instead of taking fresh memory from the OS each step (fresh
pages are zeroed by the kernel on first touch: ~25% of an LSTM training step at B=32)."""
import threading

import numpy as np


class ArrayPool:
    def __init__(self, max_bytes=1 << 30, per_shape=4):
        self.max_bytes, self.per_shape = max_bytes, per_shape
        self._free = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def empty(self, shape, dtype):
        """An uninitialised array: a released one of this shape and dtype, else a new one."""
        key = (tuple(shape), np.dtype(dtype).str)
        with self._lock:
            stack = self._free.get(key)
            if stack:
                a = stack.pop()
                self._bytes -= a.nbytes
                return a
        return np.empty(shape, dtype)

    def release(self, *arrays):
        """Give arrays back; the caller must hold no other reference it will use again."""
        with self._lock:
            for a in arrays:
                if a is None or not a.flags.owndata or self._bytes + a.nbytes > self.max_bytes:
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

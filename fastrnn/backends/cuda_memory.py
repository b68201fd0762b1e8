"""Device arrays for the cuda backend, with their buffers reused through a per-context pool.

numba's cuda.device_array costs about 100 microseconds of host time on the H100 machine
(context checks, then cuMemAlloc), and one layer's training call makes about fifteen:
more than its kernels take at short sequences. Here a buffer whose last array (or view)
is gone returns to a free list of its size, and the next array of that size takes it.

The arrays are ordinary numba DeviceNDArrays. Their buffer is reference-counted as
numba's own are (an AutoFreePointer, handed out through OwnedPointers): a view keeps it.
All the backend's work is on the legacy default stream, so a buffer taken again by a
later call is written only after the work that read it before.
"""
import functools
import itertools
import os

import numpy as np
from numba import cuda

from .cuda_launch import SIMULATOR, current_context

POOL_BYTES = 512 << 20   # most bytes kept on free lists per context; beyond, numba frees them
GRANULE = 512            # sizes are rounded up to this, so near-equal requests share a list

_pools = {}


def device_array(shape, dtype):
    """An uninitialised C-contiguous device array (like cuda.device_array)."""
    # plain integer arithmetic: numpy's reductions cost microseconds a call on tuples
    dtype = np.dtype(dtype)
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    strides, n = [], dtype.itemsize
    for s in reversed(shape):
        strides.append(n)
        n *= s
    if SIMULATOR or n == 0 or os.environ.get("FASTRNN_CUDA_POOL", "1") == "0":
        return cuda.device_array(shape, dtype=dtype)
    from numba.cuda.cudadrv.devicearray import DeviceNDArray
    strides = tuple(reversed(strides))
    nbytes = -(-n // GRANULE) * GRANULE
    ctx = current_context()
    pool = _pools.get(ctx)
    if pool is None:
        pool = _pools[ctx] = _Pool()
    return DeviceNDArray(shape, strides, dtype, gpu_data=pool.take(nbytes))


def release():
    """Hand every buffer on the free lists back (numba frees them): for a program that
    needs the device memory for something else."""
    for pool in _pools.values():
        pool.clear()


def pooled_bytes():
    """Bytes on the free lists of the current context (for tests and `fastrnn info`)."""
    pool = _pools.get(current_context())
    return 0 if pool is None else pool.kept


class _Pool:
    def __init__(self):
        self.ctx = cuda.current_context()
        self.free = {}      # nbytes -> numba allocations (OwnedPointer) not in use
        self.kept = 0
        self.live = {}      # key -> AutoFreePointer handed out (kept alive until released)
        self.keys = itertools.count()

    def take(self, nbytes):
        from numba.cuda.cudadrv.driver import AutoFreePointer
        free = self.free.get(nbytes)
        if free:
            backing = free.pop()
            self.kept -= nbytes
        else:
            backing = self._alloc(nbytes)
        key = next(self.keys)
        mem = AutoFreePointer(self.ctx, backing.device_pointer, nbytes,
                              finalizer=functools.partial(self._release, key, nbytes, backing))
        self.live[key] = mem
        return mem.own()

    def _alloc(self, nbytes):
        try:
            return self.ctx.memalloc(nbytes)
        except Exception:   # out of memory, perhaps: give the free lists back and try again
            self.clear()
            return self.ctx.memalloc(nbytes)

    def clear(self):
        self.free.clear()
        self.kept = 0

    def _release(self, key, nbytes, backing):
        """The last array using the buffer is gone (called by numba's reference counting)."""
        self.live.pop(key, None)
        if self.kept + nbytes <= POOL_BYTES:
            self.free.setdefault(nbytes, []).append(backing)
            self.kept += nbytes

"""Device arrays for the cuda backend, with their buffers reused through a per-context pool.

numba's cuda.device_array costs about 100 microseconds of host time on the H100 machine
(context checks, then cuMemAlloc), and one layer's training call makes about fifteen:
more than its kernels take at short sequences. Here a buffer whose last array (or view)
is gone returns to a free list of its size, and the next array of that size takes it.

The arrays are ordinary numba DeviceNDArrays. Their buffer is reference-counted as
numba's own are, through OwnedPointers (an array and each view hold one): when the last
goes, the buffer's _PooledPointer returns it to the free list. One _PooledPointer per
buffer serves every array that takes it, so taking a buffer makes one OwnedPointer
(3.4 us of host time with the array and its release, against 10.3 with a fresh numba
AutoFreePointer per array, benchmarks/gpu_host_mock.py's machine). All the backend's work
is on the legacy default stream, so a buffer taken again by a later call is written only
after the work that read it before.
"""
import numpy as np
from numba import cuda

from . import switches
from .cuda_launch import SIMULATOR, current_context

if not SIMULATOR:
    from numba.cuda.cudadrv.devicearray import DeviceNDArray
    from numba.cuda.cudadrv.driver import MemoryPointer
else:
    MemoryPointer = object

POOL_BYTES = 512 << 20   # most bytes kept on free lists per context; beyond, numba frees them
GRANULE = 512            # sizes are rounded up to this, so near-equal requests share a list

_pools = {}


def device_array(shape, dtype):
    """An uninitialised C-contiguous device array (like cuda.device_array)."""
    # plain integer arithmetic: numpy's reductions cost microseconds a call on tuples
    if not isinstance(dtype, np.dtype):
        dtype = np.dtype(dtype)
    if shape.__class__ is not tuple:
        shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(shape)
    n = dtype.itemsize
    strides = ()
    for s in shape[::-1]:
        strides = (n,) + strides
        n *= int(s)
    if SIMULATOR or n == 0 or switches.get("FASTRNN_CUDA_POOL", "1") == "0":
        return cuda.device_array(shape, dtype=dtype)
    ctx = current_context()
    pool = _pools.get(ctx)
    if pool is None:
        pool = _pools[ctx] = _Pool()
    return DeviceNDArray(shape, strides, dtype, gpu_data=pool.take(-(-n // GRANULE) * GRANULE))


def release():
    """Hand every buffer on the free lists back (numba frees them): for a program that
    needs the device memory for something else."""
    for pool in _pools.values():
        pool.clear()


def pooled_bytes():
    """Bytes on the free lists of the current context (for tests and `fastrnn info`)."""
    pool = _pools.get(current_context())
    return 0 if pool is None else pool.kept


class _PooledPointer(MemoryPointer):
    """One pooled buffer. numba's OwnedPointers count the arrays and views using it (own()
    adds one, each one's finalizer takes one off) and call free() at zero, which hands the
    buffer back to the pool. OwnedPointers hold it by a weak proxy, as numba's own
    allocations are held, so the pool keeps it alive while it is in use."""

    def __init__(self, pool, backing, nbytes):
        super().__init__(pool.ctx, backing.device_pointer, nbytes)   # no finalizer: free() below
        self.refct = 0
        self.backing = backing   # numba's allocation: freed once this pointer is dropped
        self.pool = pool

    def free(self):
        self.pool._release(self)


class _Pool:
    def __init__(self):
        self.ctx = cuda.current_context()
        self.free = {}      # nbytes -> _PooledPointers not in use
        self.kept = 0
        self.live = {}      # id -> _PooledPointer in use (its arrays hold only weak proxies)

    def take(self, nbytes):
        free = self.free.get(nbytes)
        if free:
            ptr = free.pop()
            self.kept -= nbytes
        else:
            ptr = _PooledPointer(self, self._alloc(nbytes), nbytes)
        self.live[id(ptr)] = ptr
        return ptr.own()

    def _alloc(self, nbytes):
        try:
            return self.ctx.memalloc(nbytes)
        except Exception:   # out of memory, perhaps: give the free lists back and try again
            self.clear()
            return self.ctx.memalloc(nbytes)

    def clear(self):
        self.free.clear()
        self.kept = 0

    def _release(self, ptr):
        """The last array using ptr's buffer is gone (called by numba's reference counting)."""
        self.live.pop(id(ptr), None)
        if self.kept + ptr.size <= POOL_BYTES:
            self.free.setdefault(ptr.size, []).append(ptr)
            self.kept += ptr.size

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
    from numba.cuda.cudadrv.driver import MemoryPointer, binding
    CUdeviceptr = binding.CUdeviceptr
else:
    MemoryPointer = object

POOL_BYTES = 512 << 20   # most bytes kept on free lists per context; beyond, numba frees them
GRANULE = 512            # sizes are rounded up to this, so near-equal requests share a list

_pools = {}


def device_array(shape, dtype):
    """An uninitialised C-contiguous device array (like cuda.device_array)."""
    if not isinstance(dtype, np.dtype):
        dtype = np.dtype(dtype)
    if shape.__class__ is not tuple:
        shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(shape)
    strides, n = _c_layout(shape, dtype.itemsize)
    if SIMULATOR or n == 0 or switches.get("FASTRNN_CUDA_POOL", "1") == "0":
        return cuda.device_array(shape, dtype=dtype)
    return _array(shape, strides, dtype, _pool().take(-(-n // GRANULE) * GRANULE))


def _c_layout(shape, itemsize):
    """(C-contiguous strides in bytes, total bytes) of shape; plain integer arithmetic:
    numpy's reductions cost microseconds a call on tuples."""
    n = itemsize
    strides = ()
    for s in shape[::-1]:
        strides = (n,) + strides
        n *= int(s)
    return strides, n


def _pool():
    """The current context's pool (made at its first use)."""
    ctx = current_context()
    pool = _pools.get(ctx)
    if pool is None:
        pool = _pools[ctx] = _Pool()
    return pool


# __cuda_array_interface__ streams whose work our launches already follow: the legacy
# default stream (1), where the backend enqueues everything, and the per-thread default
# stream (2), which the legacy one waits for; None: the exporter names none.
ORDERED_STREAMS = (None, 1, 2)
_dtypes = {}   # typestr -> numpy dtype


def from_interface(obj, desc):
    """A DeviceNDArray over obj's buffer (desc: its __cuda_array_interface__), obj kept
    alive by the array. numba's import (cuda.from_cuda_array_interface) took 5.3 us of host
    time an array with the driver mocked: two context checks, a stream object, shape and
    dtype parsing. Here a C-contiguous buffer on an ordered stream (no host wait needed)
    becomes an array in ~2.5; anything else (a mask, other strides, another stream, which
    numba waits for, an empty buffer) goes to numba's import."""
    stream = desc.get("stream")
    if SIMULATOR or stream not in ORDERED_STREAMS or desc.get("mask") is not None:
        return cuda.from_cuda_array_interface(desc, owner=obj, sync=stream not in ORDERED_STREAMS)
    shape = desc["shape"]
    dtype = _dtypes.get(desc["typestr"])
    if dtype is None:
        dtype = _dtypes[desc["typestr"]] = np.dtype(desc["typestr"])
    strides, n = _c_layout(shape, dtype.itemsize)
    given = desc.get("strides")
    if n == 0 or (given is not None and tuple(given) != strides):
        return cuda.from_cuda_array_interface(desc, owner=obj, sync=False)
    data = MemoryPointer(_pool().ctx, CUdeviceptr(desc["data"][0]), n, owner=obj)
    return _array(tuple(shape), strides, dtype, data)


# What numba's DeviceNDArray constructor sets: all but gpu_data follow from the layout.
_ARRAY_ATTRS = {"ndim", "_dummy", "shape", "strides", "dtype", "size", "alloc_size", "gpu_data", "stream"}
_layouts = {}   # (shape, strides, dtype) -> the attributes of an array of that layout, or None


def _array(shape, strides, dtype, data):
    """DeviceNDArray(shape, strides, dtype, gpu_data=data) in 0.3 us of host time instead
    of 1.6 (numba's constructor describes the layout anew each time; a call makes ten or
    more arrays): the attributes of the first array of each layout, with data for its
    buffer. A numba whose arrays hold other attributes gets its constructor every time."""
    key = (shape, strides, dtype)
    attrs = _layouts.get(key, False)
    if attrs is False:
        a = DeviceNDArray(shape, strides, dtype, gpu_data=data)
        if len(_layouts) >= 4096:
            _layouts.clear()
        attrs = _layouts[key] = {k: v for k, v in vars(a).items() if k != "gpu_data"} \
            if vars(a).keys() == _ARRAY_ATTRS and a.stream == 0 else None
        return a
    if attrs is None:
        return DeviceNDArray(shape, strides, dtype, gpu_data=data)
    a = _new(DeviceNDArray)
    d = a.__dict__
    d.update(attrs)
    d["gpu_data"] = data
    return a


_new = object.__new__


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

"""What the cuda backend's kernels need to run under numba's CUDA simulator
(NUMBA_ENABLE_CUDASIM=1, CI's stand-in for a GPU). Nothing here runs on a real device.

The simulator runs each thread of a block as a Python thread. Two things about that:

* Speed. Its block manager polls the threads in a loop that holds the GIL, so at Python's
  default 5 ms switch interval a thread that could run waits out the manager's slice at
  every syncthreads. `launching()` shortens the interval for the launch (tests/: 2-3x).
* A race. A static `cuda.shared.array` is allocated by the first thread of the block that
  reaches it (numba-cuda's FakeCUDAShared.array: look up, allocate, store), and a thread
  switch between the look-up and the store gives two threads two different arrays: their
  sums never meet and the results are wrong. Rare at the default interval, often at short
  ones. `atomic_shared_arrays()` makes the store a dict.setdefault, atomic under the GIL.
"""
import sys
from contextlib import contextmanager

import numpy as np

SWITCH_INTERVAL = 5e-4   # seconds; tests/ under the simulator ran fastest at 2e-4 to 1e-3


@contextmanager
def launching():
    """A simulated launch: a short GIL switch interval, the caller's restored afterwards."""
    saved = sys.getswitchinterval()
    sys.setswitchinterval(min(saved, SWITCH_INTERVAL))
    try:
        yield
    finally:
        sys.setswitchinterval(saved)


def atomic_shared_arrays():
    """Replace the simulator's static shared-array allocation with one where every thread of
    a block gets the same array. The key is the original's (the calling file and line). Left
    as it is where the simulator's internals are not the ones this was written against."""
    from numba.cuda.simulator import kernelapi
    cls = kernelapi.FakeCUDAShared
    if getattr(cls.array, "fastrnn_atomic", False):
        return
    try:
        if not isinstance(cls(0)._allocations, dict):
            return
    except Exception:   # another numba-cuda: its own allocation stays
        return
    original = cls.array

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:   # dynamic shared memory: nothing allocated
            return original(self, shape, dtype, alignment)
        dtype = kernelapi.numpy_support.as_dtype(dtype) if isinstance(dtype, kernelapi.types.Type) else dtype
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)
        res = self._allocations.get(key)
        if res is None:
            res = self._allocations.setdefault(key, np.empty(shape, dtype))
        return res
    array.fastrnn_atomic = True
    cls.array = array

"""The cuda backend's buffer pool and array import (cuda_memory.py), run on the CPU: numba's
real pointer and array classes over a fake context whose allocations are plain numbers.
Both are all host Python; the simulator does not use them, so this runs in a child process
without NUMBA_ENABLE_CUDASIM."""
import os
import subprocess
import sys
import textwrap

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

FAKE_CONTEXT = textwrap.dedent("""
    import contextlib
    import gc
    import numpy as np
    from numba.cuda.cudadrv import devices, driver
    from fastrnn.backends import cuda_memory as cm

    devices._runtime.ensure_context = contextlib.nullcontext   # arrays ask for a context

    class Ctx:   # numba's allocations: a MemoryPointer whose finalizer records the free
        addr, freed = 1 << 40, []

        def memalloc(self, n):
            Ctx.addr += 1 << 20
            a = Ctx.addr
            return driver.MemoryPointer(self, a, n, finalizer=lambda: Ctx.freed.append(a))

    ctx = Ctx()
    cm.cuda = type("cuda", (), dict(current_context=staticmethod(lambda: ctx)))
    cm.current_context = lambda: 0
    ptr = lambda a: a.device_ctypes_pointer.value
""")

SCRIPT = FAKE_CONTEXT + textwrap.dedent("""
    a = cm.device_array((37, 5), np.float32)
    assert a.shape == (37, 5) and a.strides == (20, 4) and a.dtype == np.float32
    first = ptr(a)
    view = a[3:]                 # a view keeps the buffer
    del a
    b = cm.device_array((37, 5), np.float32)
    assert ptr(b) != first
    del view
    c = cm.device_array(37 * 5, np.float32)
    assert ptr(c) == first       # back on the free list, taken again
    d = cm.device_array(37 * 5 + 1, np.float32)   # same granule: the next free buffer or new
    assert ptr(d) not in (first, ptr(b))
    del b, c, d
    assert cm.pooled_bytes() == 3 * 1024, cm.pooled_bytes()
    for _ in range(3):           # every take and release balances the counts: one buffer
        e = cm.device_array((8, 4), np.float64)[2:][1:]
        del e
    kept = 3 * 1024 + 512
    assert cm.pooled_bytes() == kept and not cm._pools[0].live and len(cm._pools[0].free[512]) == 1
    assert Ctx.freed == []
    cm.POOL_BYTES = kept         # over the limit a released buffer is dropped and freed
    f = cm.device_array(600, np.float32)
    g = cm.device_array(600, np.float32)
    assert ptr(f) != ptr(g)
    del f, g
    gc.collect()
    assert len(Ctx.freed) == 2 and cm.pooled_bytes() == kept
    cm.release()
    gc.collect()
    assert cm.pooled_bytes() == 0 and len(Ctx.freed) == 6
    print("pool ok")
""")


# Foreign buffers (torch CUDA tensors, CuPy arrays) through from_interface, and the arrays
# made by copying the attributes of a first one of their layout (_array).
IMPORT_SCRIPT = FAKE_CONTEXT + textwrap.dedent("""
    import weakref
    from numba.cuda.cudadrv.devicearray import DeviceNDArray

    class Foreign:   # exports only the interface, as a torch tensor does
        def __init__(self, shape, typestr="<f4", **extra):
            Foreign.addr += 1 << 20
            self.desc = dict(dict(shape=shape, typestr=typestr, data=(Foreign.addr, False),
                                  version=3, strides=None), **extra)

        @property
        def __cuda_array_interface__(self):
            return dict(self.desc)
    Foreign.addr = 1 << 44

    numba_imports = []
    cm.cuda.from_cuda_array_interface = lambda desc, owner, sync: numba_imports.append(sync) or "numba"

    for stream in (None, 1, 2):
        t = Foreign((6, 3, 5), stream=stream)
        a = cm.from_interface(t, t.__cuda_array_interface__)
        assert type(a) is DeviceNDArray and a.shape == (6, 3, 5) and a.strides == (60, 20, 4)
        assert a.dtype == np.float32 and ptr(a) == t.desc["data"][0] and a.is_c_contiguous()
        assert a.gpu_data.size == 360 and a.alloc_size == 360 and a.stream == 0
        v = a[2:][1]                 # views index into the same buffer
        assert v.shape == (3, 5) and ptr(v) == ptr(a) + 3 * 60
        owner = weakref.ref(t)
        del t
        assert owner() is not None   # the array keeps the exporter (and its memory) alive
        del a, v
        gc.collect()
        assert owner() is None
    assert numba_imports == []
    t = Foreign((4, 2), typestr="<f8", strides=(16, 8))       # C strides given: the same array
    a = cm.from_interface(t, t.__cuda_array_interface__)
    assert a.dtype == np.float64 and a.strides == (16, 8) and ptr(a) == t.desc["data"][0]
    # numba's import where the fast path would be wrong: another stream (numba waits for
    # it), other strides, a mask, an empty buffer
    for extra, sync in ((dict(stream=0xBEEF), True), (dict(strides=(4, 16)), False),
                        (dict(mask=object()), False)):
        t = Foreign((4, 4), **extra)
        assert cm.from_interface(t, t.__cuda_array_interface__) == "numba"
        assert numba_imports.pop() is sync
    t = Foreign((0, 4))
    assert cm.from_interface(t, t.__cuda_array_interface__) == "numba"

    # _array: the attributes of numba's constructor's array but the buffer
    for shape, dtype in (((7,), np.float32), ((3, 5), np.float64), ((2, 3, 4), np.int32)):
        for _ in range(3):
            fast = cm.device_array(shape, dtype)
            slow = DeviceNDArray(fast.shape, fast.strides, fast.dtype, gpu_data=fast.gpu_data)
            assert vars(fast).keys() == vars(slow).keys() == cm._ARRAY_ATTRS
            for k in cm._ARRAY_ATTRS - {"gpu_data", "_dummy"}:
                assert getattr(fast, k) == getattr(slow, k), k
            assert fast[1:].shape == slow[1:].shape and ptr(fast[1:]) == ptr(slow[1:])
    x, y = cm.device_array((3, 5), np.float64), cm.device_array((3, 5), np.float64)
    assert ptr(x) != ptr(y) and x.gpu_data is not y.gpu_data
    # an array type with other attributes than those known: numba's constructor every time
    cm._ARRAY_ATTRS = cm._ARRAY_ATTRS | {"something_new"}
    cm._layouts.clear()
    for _ in range(2):
        z = cm.device_array((3, 5), np.float64)
        assert cm._layouts[((3, 5), (40, 8), np.dtype(np.float64))] is None and ptr(z) > 0
    print("import ok")
""")


def _run(script, done):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 0 and done in p.stdout, p.stdout + p.stderr


def test_pool_reuses_a_buffer_only_when_its_arrays_are_gone():
    _run(SCRIPT, "pool ok")


def test_foreign_arrays_are_imported_without_numbas_import_where_it_is_safe():
    _run(IMPORT_SCRIPT, "import ok")

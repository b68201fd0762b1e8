"""The cuda backend's buffer pool (cuda_memory.py), run on the CPU: numba's real pointer
and array classes over a fake context whose allocations are plain numbers. The pool's
bookkeeping is all host Python; the simulator does not use it, so this runs in a child
process without NUMBA_ENABLE_CUDASIM."""
import os
import subprocess
import sys
import textwrap

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

SCRIPT = textwrap.dedent("""
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


def test_pool_reuses_a_buffer_only_when_its_arrays_are_gone():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 0 and "pool ok" in p.stdout, p.stdout + p.stderr

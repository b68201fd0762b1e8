"""Host time of cuda-backend calls on a machine without a GPU: the CUDA driver mocked.

At short sequences a layer call on the GPU is mostly host time (Python, then the driver).
This runs the backend's real Python path (argument checks, plans, pooled device arrays,
parameter buffers of the raw launches) with the kernels compiled for sm_90 but never
launched: the driver's launch calls return at once and device memory is fake addresses.
What it leaves out: the driver calls themselves (a few microseconds a launch on an H100
host) and CuPy (the Numba matrix kernel stands in for cuBLAS). So it measures the Python
part, which a change to the host path moves, not a call's wall time.

It patches numba-cuda internals (0.30), so it is a measuring tool, not a test of the
backend. Needs the sass extra (NVVM, NVRTC): pip install -e '.[sass]'.

    python benchmarks/gpu_host_mock.py [--calls 200] [--profile]
"""
import argparse
import contextlib
import os
import statistics
import sys
import time

os.environ.pop("NUMBA_ENABLE_CUDASIM", None)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# lstmp: an LSTM with a projection to H / 4 (four launches a step, two of them products);
# LSTM H = 256 B = 256: the step-gemm path (a product and a prepared launch a step)
SHAPES = [("lstm", 512, 8, 32, False), ("rnn_tanh", 256, 1, 32, False), ("gru", 512, 8, 32, False),
          ("lstm", 512, 8, 32, True), ("rnn_tanh", 256, 8, 32, True), ("lstmp", 512, 8, 32, False),
          ("lstmp", 512, 8, 32, True), ("lstm", 256, 256, 32, False), ("lstm", 256, 256, 32, True)]
# the same calls with every argument a foreign array (read through __cuda_array_interface__,
# as torch CUDA tensors and CuPy arrays are)
FOREIGN_SHAPES = [("rnn_tanh", 256, 1, 32, False), ("lstm", 512, 8, 32, True)]


class Foreign:
    """A device buffer that only exports __cuda_array_interface__, on the legacy default
    stream: a fresh dict per read, as torch builds one (torch's Python for it is not timed)."""

    def __init__(self, a):
        self.desc = dict(a.__cuda_array_interface__, stream=1)
        self.a = a

    @property
    def __cuda_array_interface__(self):
        return dict(self.desc)


def mock_driver():
    """Patch numba-cuda and fastrnn's launch layer so that nothing reaches a driver."""
    import numpy as np
    from numba import cuda
    import numba.cuda.codegen as codegen
    import numba.cuda.dispatcher as disp
    from numba.cuda import api
    from numba.cuda.cudadrv import devices, driver
    from cuda.bindings import driver as drv
    from fastrnn.backends import cuda as fc, cuda_launch as cl, cuda_memory as cm

    class Device:
        compute_capability = (9, 0)
        id = 0
        name = b"mock sm_90"

    class Context:
        next_addr = 0x7F0000000000

        def memalloc(self, n):
            Context.next_addr += -(-n // 4096) * 4096
            return driver.MemoryPointer(self, Context.next_addr, n)

    ctx = Context()
    Context.create_external_stream = driver.Context.create_external_stream
    api.current_context = lambda: ctx                      # numba's interface import
    disp.get_current_device = lambda: Device()            # kernels compile for sm_90
    cuda.get_current_device = lambda: Device()
    codegen.CUDACodeLibrary._ensure_cc = lambda self, cc: cc if cc is not None else (9, 0, "a")
    disp._Kernel.bind = lambda self: None                  # no module load
    devices._runtime.ensure_context = lambda: contextlib.nullcontext()
    for mod in (cl, cm, fc):
        mod.current_context = lambda: 1
    cm.cuda = type("cuda", (), dict(current_context=staticmethod(lambda: ctx)))
    fc._query_limits = lambda: (132, 160 * 1024, "mock sm_90")
    fc._local_shared = lambda: 227 * 1024
    cuda.device_array = lambda n, dtype=np.float32: cm.device_array(n, dtype)
    cuda.to_device = lambda a: cm.device_array(a.shape, a.dtype)
    drv.cuLaunchKernel = lambda *a: (0,)
    drv.cuLaunchCooperativeKernel = lambda *a: (0,)
    cl.RawKernel._state = lambda self: dict(fn=None, kernel=None, shared=1 << 30, most={})
    cl.RawKernel.check_coresident = lambda self, grid, block, shared, st=None: None


def caller(cell, T, B, H, train, foreign=False):
    import numpy as np
    from numba import cuda
    from fastrnn.backends import cuda as fcuda
    from gpu_profile import call, inputs
    if cell != "lstmp":
        args, dy = inputs(cell, T, B, H, np.random.default_rng(0))
        if foreign:
            args, dy = tuple(None if a is None else Foreign(a) for a in args), Foreign(dy)
        run_once = lambda: call(cell, args, dy, train)
    else:
        P = H // 4
        dev = lambda *s: cuda.to_device(np.zeros(s, np.float32))
        args = (dev(T, B, H), dev(B, P), dev(B, H), dev(4 * H, H), dev(4 * H, P), dev(4 * H), dev(4 * H))
        w_hr, dy = dev(P, H), dev(T, B, P)

        def run_once():
            out = fcuda.forward_layer("lstm", *args, train=train, w_hr=w_hr)
            if train:
                fcuda.backward_layer("lstm", out[3], dy, None, None)

    def run():
        run_once()
    run()
    run()   # compile, fill the pool
    return run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--profile", action="store_true", help="cProfile of the first shape too")
    ap.add_argument("--quick", action="store_true", help="the first shape only")
    a = ap.parse_args(argv)
    from gpu_sass import offline_compiler
    why = offline_compiler()
    if why:
        print(f"gpu_host_mock: cannot compile for the GPU here ({why}); pip install -e '.[sass]'")
        return 3
    mock_driver()
    from fastrnn.backends import cuda_launch as cl
    shapes = [s + (False,) for s in SHAPES] + [s + (True,) for s in FOREIGN_SHAPES]
    for cell, H, B, T, train, foreign in shapes[:1] if a.quick else shapes:
        run = caller(cell, T, B, H, train, foreign)
        n0 = len(cl._compiled_cache)
        times = []
        for _ in range(a.calls):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        assert len(cl._compiled_cache) == n0
        print(f"{cell:8s} H={H:4d} B={B:3d} T={T:4d} {'train' if train else 'inf  '}  "
              f"host {statistics.median(times) * 1e6:7.1f} us a call (median of {a.calls}), "
              f"min {min(times) * 1e6:7.1f}{'  (foreign arrays)' if foreign else ''}")
    if a.profile:
        import cProfile
        import pstats
        cell, H, B, T, train = SHAPES[0]
        run = caller(cell, T, B, H, train)
        prof = cProfile.Profile()
        prof.runcall(lambda: [run() for _ in range(a.calls)])
        pstats.Stats(prof).sort_stats("cumtime").print_stats(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())

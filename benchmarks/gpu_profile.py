"""Where a cuda-backend call spends its time on a real GPU.

1. Fixed cost: wall time per call at T = 1 and T = 32, and a host profile (cProfile) of
   a few calls, so the Python/launch overhead is visible function by function.
2. Kernel time alone: the persistent kernels timed with CUDA events around the launch.
3. Grid-sync cost: a kernel doing n grid syncs, for several grid sizes, with numba's
   grid sync and with cuda_recurrence.flag_sync (FASTRNN_CUDA_GRID_SYNC=flag).
4. Co-residency: how many blocks of each persistent kernel the driver allows per
   launch, as a function of dynamic shared memory (the per-step fallback runs when
   that is below the plan's block count).

    python benchmarks/gpu_profile.py [--out DIR] [--sync-only]
"""
import argparse
import contextlib
import cProfile
import io
import os
import pstats
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from fastrnn.backends import cuda as fcuda          # noqa: E402
from fastrnn.backends import cuda_launch            # noqa: E402
from fastrnn.backends import cuda_recurrence as rec  # noqa: E402
from fastrnn.cells import get_cell                 # noqa: E402
from numba import cuda                             # noqa: E402


def inputs(cell, T, B, H, rng):
    G = get_cell(cell).gates
    dev = lambda *s: cuda.to_device((rng.standard_normal(s) / np.sqrt(H)).astype(np.float32))
    x, w_ih, w_hh, b_ih, b_hh = dev(T, B, H), dev(G * H, H), dev(G * H, H), dev(G * H), dev(G * H)
    h0, c0 = dev(B, H), (dev(B, H) if cell == "lstm" else None)
    return (x, h0, c0, w_ih, w_hh, b_ih, b_hh), dev(T, B, H)


def call(cell, args, dy, train):
    out = fcuda.forward_layer(cell, *args, train=train)
    if train:
        fcuda.backward_layer(cell, out[3], dy, None, None)


def wall(cell, T, B, H, train, rng, reps=30):
    args, dy = inputs(cell, T, B, H, rng)
    for _ in range(3):
        call(cell, args, dy, train)
    cuda.synchronize()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        call(cell, args, dy, train)
        cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def profile(cell, T, B, H, train, rng, out_dir):
    args, dy = inputs(cell, T, B, H, rng)
    for _ in range(3):
        call(cell, args, dy, train)
    cuda.synchronize()
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(20):
        call(cell, args, dy, train)
        cuda.synchronize()
    pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(25)
    text = s.getvalue()
    with open(os.path.join(out_dir, f"profile-{cell}-{'train' if train else 'inf'}.txt"), "w") as f:
        f.write(text)
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("cumtime").print_stats(40)
    with open(os.path.join(out_dir, f"profile-{cell}-{'train' if train else 'inf'}-cum.txt"), "w") as f:
        f.write(s.getvalue())
    return text


@contextlib.contextmanager
def timed_launches(record, modules=(fcuda,), products=False):
    """Time every kernel launch of `modules` (each holds its own name for
    cuda_launch.launch) with CUDA events, and with products=True the cuBLAS products
    (they do not go through launch): record(name, milliseconds) after each."""
    def timed(fn, label):
        def run(*args, **kw):
            e0, e1 = cuda.event(), cuda.event()
            e0.record()
            out = fn(*args, **kw)
            e1.record()
            e1.synchronize()
            record(label or getattr(getattr(args[0], "py_func", None), "__name__", "kernel"),
                   e0.elapsed_time(e1))
            return out
        return run
    wrapped = [(m, "launch") for m in modules]
    if products and fcuda._products() is fcuda.blas:
        wrapped += [(fcuda.blas, n) for n in ("projection", "gradients")]
    saved = [getattr(m, n) for m, n in wrapped]
    for (m, n), fn in zip(wrapped, saved):
        setattr(m, n, timed(fn, None if n == "launch" else n))
    try:
        yield
    finally:
        for (m, n), fn in zip(wrapped, saved):
            setattr(m, n, fn)


def kernel_only(cell, T, B, H, train, rng):
    """Event time of the recurrence launches alone, per call (forward, backward)."""
    args, dy = inputs(cell, T, B, H, rng)
    call(cell, args, dy, train)
    spent = {}
    with timed_launches(lambda name, ms: spent.setdefault(name, []).append(ms)):
        for _ in range(10):
            call(cell, args, dy, train)
    return {k: float(np.median(v)) for k, v in spent.items()}


@cuda.jit
def _sync_loop(n, out):
    g = cuda.cg.this_grid()
    for i in range(n):
        g.sync()
    if cuda.grid(1) == 0:
        out[0] = n


@cuda.jit
def _flag_loop(n, out, bar):
    for i in range(n):
        rec.flag_sync(bar)
    if cuda.grid(1) == 0:
        out[0] = n


def sync_cost(blocks, flag, n=20000):
    """Microseconds per grid sync of an otherwise empty kernel, blocks x 256 threads."""
    out = cuda.device_array(1, np.int32)
    bar = cuda.to_device(np.zeros(1, np.uint32))
    run = (lambda m: _flag_loop[blocks, 256](m, out, bar)) if flag else (
        lambda m: _sync_loop[blocks, 256](m, out))
    run(10)
    cuda.synchronize()
    e0, e1 = cuda.event(), cuda.event()
    e0.record()
    run(n)
    e1.record()
    e1.synchronize()
    return cuda.event_elapsed_time(e0, e1) * 1e3 / n


def print_sync_costs():
    nsm = fcuda._device_limits()[0]
    for blocks in (8, nsm):
        for flag in (False, True):
            print(f"grid sync {'flag' if flag else 'cg  '}, {blocks:3d} blocks x 256 threads: "
                  f"{sync_cost(blocks, flag):.2f} us", flush=True)


def coresidency():
    lines = []
    for name, k in cuda_launch.compiled_kernels():
        if not name.endswith("_persistent"):
            continue
        row = []
        for kb in (0, 48, 96, 128, 144, 152, 156, 160, 164, 180, 200, 220, 227):
            try:
                rk = next(r for r in cuda_launch._compiled_cache.values() if r.overload is k)
                rk.allow_shared(kb * 1024)
                row.append(f"{kb}K:{k.max_cooperative_grid_blocks(fcuda.THREADS, kb * 1024)}")
            except Exception as exc:
                row.append(f"{kb}K:err({type(exc).__name__})")
        lines.append(f"{name} {str(k.argument_types)[:60]} regs={k.regs_per_thread} "
                     f"local={k.local_mem_per_thread} " + " ".join(row))
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--sync-only", action="store_true", help="only the grid-sync costs")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    os.makedirs(args.out, exist_ok=True)
    print("device:", fcuda.describe())
    if args.sync_only:
        print_sync_costs()
        return
    for raw in ("1", "0"):   # launches through the driver, then through numba's dispatcher
        os.environ["FASTRNN_CUDA_RAW_LAUNCH"] = raw
        for cell in ("lstm", "gru", "rnn_tanh"):
            for train in (False, True):
                w = {T: wall(cell, T, 1, 256, train, rng) for T in (1, 32, 256)}
                print(f"raw={raw} {cell:8s} {'train' if train else 'inf  '} H=256 B=1 wall ms: " +
                      " ".join(f"T={T}:{v * 1e3:.3f}" for T, v in w.items()), flush=True)
    os.environ["FASTRNN_CUDA_RAW_LAUNCH"] = "1"
    for cell in ("lstm", "gru", "rnn_tanh"):
        for H, B in ((256, 1), (512, 8), (256, 256), (1024, 64)):
            k = kernel_only(cell, 256, B, H, True, rng)
            print(f"kernels {cell:8s} H={H:4d} B={B:3d} T=256 (us/step): " +
                  " ".join(f"{n}:{v * 1e3 / 256:.2f}" for n, v in k.items()) +
                  f" path={fcuda.last_path}", flush=True)
    text = profile("lstm", 32, 1, 256, True, rng, args.out)
    print("--- profile lstm train T=32, 20 calls (tottime)")
    print("\n".join(text.splitlines()[:30]))
    print_sync_costs()
    # compile the shapes the timing grid fell back on, then ask the driver
    for cell, H, B in (("lstm", 256, 256), ("lstm", 1024, 8), ("gru", 1024, 8)):
        p = fcuda.plan(cell, H, B)
        try:
            wall(cell, 4, B, H, True, rng, reps=1)
        except Exception as exc:
            print("run failed:", cell, H, B, exc)
        print(f"{cell} H={H} B={B} plan={p} path={fcuda.last_path}")
    print("\n".join(coresidency()))


if __name__ == "__main__":
    main()

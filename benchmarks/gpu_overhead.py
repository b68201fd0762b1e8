"""Where the cuda backend's host time goes: a profile of short layer calls, and the cost
of one step of the step-gemm path split into its library product and its kernel launch.

    python benchmarks/gpu_overhead.py [--out DIR]
    python benchmarks/gpu_overhead.py --fixed [--out DIR]   # only the fixed cost of a call

Prints (and writes DIR/gpu-overhead.txt): wall microseconds per call of forward and
forward+backward at T = 1 (fixed cost per call), cProfile's top entries for those calls,
and per step of the step-gemm path: host microseconds of T products alone, T launches
alone, both, and the GPU time of both (CUDA events).
"""
import argparse
import cProfile
import io
import os
import pstats
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from fastrnn.backends import cuda as fcuda          # noqa: E402
from fastrnn.backends import cuda_recurrence as rec  # noqa: E402
from fastrnn.backends.cuda_launch import prepared   # noqa: E402
from numba import cuda                              # noqa: E402
sys.path.insert(0, os.path.dirname(__file__))
from gpu_profile import timed_launches              # noqa: E402


def arrays(cell, T, B, H, rng):
    G = fcuda.get_cell(cell).gates
    dev = lambda *s: cuda.to_device((rng.standard_normal(s) / np.sqrt(H)).astype(np.float32))
    return dict(x=dev(T, B, H), h0=dev(B, H), c0=dev(B, H) if cell == "lstm" else None,
                w_ih=dev(G * H, H), w_hh=dev(G * H, H), b_ih=dev(G * H), b_hh=dev(G * H)), dev(T, B, H)


def per_call(cell, T, B, H, train, rng, reps=200):
    a, dy = arrays(cell, T, B, H, rng)

    def call():
        out = fcuda.forward_layer(cell, **a, train=train)
        if train:
            fcuda.backward_layer(cell, out[3], dy, None, None)
    for _ in range(3):
        call()
    cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        call()
    cuda.synchronize()
    return (time.perf_counter() - t0) / reps * 1e6, call


def step_parts(cell, B, H, T, rng, log):
    """Host and GPU time per step of the step-gemm forward: products, launches, both."""
    a, _ = arrays(cell, T, B, H, rng)
    os.environ[fcuda.STEP_GEMM_ENV] = "1"
    fcuda.forward_layer(cell, **a, train=False)
    cuda.synchronize()
    p = fcuda.plan(cell, H, B)
    G = fcuda.get_cell(cell).gates
    GH, Bp = G * H, p["Bp"]
    pre = cuda.device_array(B * GH, np.float32)
    hbuf = cuda.to_device(np.zeros(2 * H * Bp, np.float32))
    w_hh = a["w_hh"].reshape(GH * H)
    product = fcuda.blas.step_forward(hbuf, w_hh, pre, B, H, GH, Bp)
    numba_product = fcuda.dense.step_forward(hbuf, w_hh, pre, B, H, GH, Bp)   # the no-CuPy path
    k = rec.kernels(fcuda.get_cell(cell).code, np.float32, p["BT"])
    xp = cuda.to_device(np.zeros(T * B * GH, np.float32))
    d = cuda.device_array(1, np.float32)
    lengths = cuda.to_device(np.full(B, T, np.int32))
    cst = cuda.to_device(np.zeros(B * H, np.float32))
    y = cuda.device_array(T * B * H, np.float32)
    hT = cuda.device_array(B * H, np.float32)
    args = (pre, xp, d, d, False, lengths, hbuf, cst, y, hT, d, d, d, d, 0, T, B, H, Bp,
            p["hs"], p["S"], p["rounds"], 0, 0, p["KC"], p["Bs"], p["nbb"])
    step = prepared(k["fwd_prestep"], p["blocks"], fcuda.THREADS, args, vary=14)
    variants = (("cublas", lambda s: product(0)), ("numba", lambda s: numba_product(0)),
                ("launch", step),
                ("both", lambda s: (product(0), step(s))))
    for label, fn in variants:
        fn(0)
        cuda.synchronize()
        e0, e1 = cuda.event(), cuda.event()
        t0 = time.perf_counter()
        e0.record()
        for s in range(T):
            fn(s)
        host = (time.perf_counter() - t0) / T * 1e6
        e1.record()
        e1.synchronize()
        gpu = cuda.event_elapsed_time(e0, e1) * 1e3 / T
        log(f"step-gemm {cell:8s} H={H:4d} B={B:3d} {label:8s} host {host:6.1f} us/step, "
            f"GPU (events, includes waiting for the host) {gpu:6.1f} us/step")
    os.environ.pop(fcuda.STEP_GEMM_ENV)


def fixed_cost(cell, T, B, H, train, rng, log, reps=50, torch_inputs=False):
    """Where a short call's time goes, at the shapes whose targets T = 32 decides: the
    synchronized call (what gpu_check times), the host time until the call returns with
    the GPU idle, calls back to back, and the GPU time of each of its operations (CUDA
    events around every kernel launch and library product), against cuDNN's call.
    torch_inputs: the same arrays as torch CUDA tensors (as fastrnn.torch passes them),
    each imported through __cuda_array_interface__ in the call."""
    a, dy = arrays(cell, T, B, H, rng)
    if torch_inputs:
        import torch
        a = {k: None if v is None else torch.as_tensor(v, device="cuda") for k, v in a.items()}
        dy = torch.as_tensor(dy, device="cuda")

    def call():
        fcuda.last_path.clear()   # this call's paths only
        out = fcuda.forward_layer(cell, **a, train=train)
        if train:
            fcuda.backward_layer(cell, out[3], dy, None, None)
    med = lambda v: float(np.median(v)) * 1e6
    for _ in range(min(3, reps)):
        call()
    cuda.synchronize()
    synced, host = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        call()
        t1 = time.perf_counter()
        cuda.synchronize()
        host.append(t1 - t0)
        synced.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(reps):
        call()
    cuda.synchronize()
    piped = (time.perf_counter() - t0) / reps * 1e6
    ops = {}
    n_timed = min(10, reps)
    with timed_launches(lambda name, ms: ops.setdefault(name, []).append(ms * 1e-3),
                        (fcuda, fcuda.setup, fcuda.dense, fcuda.projection), products=True):
        for _ in range(n_timed):
            call()
    per_call = {k: med(v) * len(v) / n_timed for k, v in ops.items()}   # us a call, all its launches
    torch_s = ""
    try:
        from gpu_check import torch_runner
        peer = torch_runner(cell, T, B, H, train)
        tt = []
        for _ in range(reps):
            t0 = time.perf_counter()
            peer()
            tt.append(time.perf_counter() - t0)
        torch_s = f"; cuDNN synchronized call {med(tt):7.1f}"
    except Exception as exc:   # no torch, or no CUDA in it
        torch_s = f"; cuDNN: {type(exc).__name__}"
    log(f"fixed {cell:8s} H={H:4d} B={B:3d} T={T:4d} {'train' if train else 'inf  '} "
        f"{'torch tensors in ' if torch_inputs else ''}"
        f"local={os.environ.get(fcuda.LOCAL_ENV, 'auto'):4s} path={dict(fcuda.last_path)}: "
        f"synchronized call {med(synced):7.1f} us, host until return {med(host):7.1f}, "
        f"back to back {piped:7.1f}{torch_s}")
    log("      GPU us a call: " + ", ".join(f"{k} {v:.1f}" for k, v in per_call.items())
        + f" (sum {sum(per_call.values()):.1f})")
    return call


# the shapes where T = 32 and 256 miss the targets, and the one LSTM point at 0.99
FIXED_SHAPES = (("rnn_tanh", 256, 1, 1, False), ("rnn_tanh", 256, 1, 32, False),
                ("rnn_tanh", 256, 8, 32, False), ("rnn_tanh", 256, 1, 32, True),
                ("rnn_tanh", 256, 8, 256, False), ("lstm", 512, 8, 32, False))


def fixed_costs(log, shapes=FIXED_SHAPES, reps=50):
    """fixed_cost at each shape with the local kernels on and off, then a host profile of
    the second shape's calls (local kernels on)."""
    rng = np.random.default_rng(0)
    calls = []
    for local in ("auto", "0"):
        os.environ[fcuda.LOCAL_ENV] = local
        for cell, H, B, T, train in shapes:
            calls.append(fixed_cost(cell, T, B, H, train, rng, log, reps))
    os.environ[fcuda.LOCAL_ENV] = "auto"
    second = min(1, len(shapes) - 1)   # rnn_tanh H=256 B=1 T=32 inference
    cell, H, B, T, train = shapes[second]
    try:   # the inputs as fastrnn.torch passes them
        fixed_cost(cell, T, B, H, train, rng, log, reps, torch_inputs=True)
    except Exception as exc:   # no torch, or a build without CUDA
        log(f"torch tensors in: not timed ({type(exc).__name__}: {exc})")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(2 * reps):
        calls[second]()
    cuda.synchronize()
    prof.disable()
    os.environ.pop(fcuda.LOCAL_ENV)
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(20)
    log(s.getvalue())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--fixed", action="store_true", help="only the fixed cost of short calls")
    args = ap.parse_args(argv)
    lines = []

    def log(text):
        print(text, flush=True)
        lines.append(text)
    if args.fixed:
        fixed_costs(log)
        with open(os.path.join(args.out, "gpu-fixed-cost.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
        return 0
    rng = np.random.default_rng(0)
    for cell, B, H in (("rnn_tanh", 256, 256), ("lstm", 128, 256), ("lstm", 256, 256),
                       ("lstm", 256, 512), ("lstm", 256, 1024)):
        step_parts(cell, B, H, 256, rng, log)
    for train in (False, True):
        for pool in ("0", "1"):
            os.environ["FASTRNN_CUDA_POOL"] = pool
            us, call = per_call("lstm", 1, 1, 256, train, rng)
            log(f"per call, lstm H=256 B=1 T=1 {'train' if train else 'inference'}, pool={pool}: "
                f"{us:.1f} us")
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(100):
            call()
        cuda.synchronize()
        prof.disable()
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(15)
        log(s.getvalue())
    with open(os.path.join(args.out, "gpu-overhead.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())

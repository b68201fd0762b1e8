"""Time the local kernels' layout choices against each other on one GPU, in one process.

cuda_local.layout fixes four things from instruction counts and ptxas alone, never timed:
the threads a block (MAX_THREADS, 512: more threads, more slices of the summed index and
more shuffles to add them), the weight rows a thread multiplies by each state value it
reads (UNIT_ROWS, 4), the weight words a thread keeps in registers (REG_WEIGHTS, the rest
is read from shared memory every step) and the sequences a block (BQ: the smallest of
REG_WEIGHTS's keys that fits the batch in one wave of blocks). This times the alternatives, shape by
shape, in rounds that take the variants in turn (so that clock drift falls on all alike),
with the units-split kernels (FASTRNN_CUDA_LOCAL=0) and torch's cuDNN as the peers, so
that one device call is enough to choose them:

    python benchmarks/gpu_local_sweep.py [--shapes SPEC] [--variants a,b] [--rounds 3] [--out F]
    python benchmarks/gpu_local_sweep.py --sass   # no GPU needed: ptxas (sm_90) on every
                                                  # variant's kernels at an H100's limits;
                                                  # exit 1 if one fails or spills

SPEC as in gpu_ab.py: comma-separated cell:H:B:T:mode, mode inf or train (the default
starts with the shapes where issue 4's targets were missed). A variant whose
layouts (forward, and BPTT when training) equal an earlier one's is not timed again, nor
one where the layer does not fit. Prints per shape each variant's median call, its
kernel time (CUDA events around the local launches) and its speed against the default
and cuDNN; writes benchmarks/results/gpu-local-sweep-<device>.json (or --out).
"""
import argparse
import contextlib
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from fastrnn.backends import cuda as fcuda          # noqa: E402
from fastrnn.backends import cuda_local as local    # noqa: E402
from gpu_ab import parse_shapes                     # noqa: E402
from gpu_check import fastrnn_runner, torch_runner  # noqa: E402
from gpu_profile import timed_launches              # noqa: E402

DEFAULT_SHAPES = ("rnn_tanh:256:1:256:inf,rnn_tanh:256:8:256:inf,rnn_tanh:256:8:256:train,"
                  "rnn_tanh:256:256:256:inf,rnn_tanh:256:256:256:train,rnn_tanh:128:8:256:train,"
                  "lstm:128:8:256:inf,lstm:128:8:256:train,lstm:128:256:256:train,"
                  "gru:128:8:256:train,gru:128:64:256:inf,lstm:64:8:256:train")

DEFAULT_REGS = dict(local.REG_WEIGHTS)
# name -> the cuda_local knobs it sets; "units-split" runs with FASTRNN_CUDA_LOCAL=0
VARIANTS = {
    "default": {},
    "threads256": dict(MAX_THREADS=256),
    "threads128": dict(MAX_THREADS=128),
    # fewer threads have more registers each (255 at most): twice the weight words
    "threads256+regs": dict(MAX_THREADS=256, REG_WEIGHTS={q: 2 * w for q, w in DEFAULT_REGS.items()}),
    "rows2": dict(UNIT_ROWS=2),
    "rows8": dict(UNIT_ROWS=8),
    "regs2/3": dict(REG_WEIGHTS={q: w * 2 // 3 for q, w in DEFAULT_REGS.items()}),
    "bq>=2": dict(REG_WEIGHTS={q: w for q, w in DEFAULT_REGS.items() if q >= 2}),
    "bq4": dict(REG_WEIGHTS={q: w for q, w in DEFAULT_REGS.items() if q >= 4}),
    "units-split": None,
}


@contextlib.contextmanager
def variant(name):
    """The local kernels' knobs (or the switch that turns them off) set for one variant;
    cuda.plan keys its cache on them, so the next call plans afresh."""
    knobs = VARIANTS[name]
    saved = {k: getattr(local, k) for k in (knobs or {})}
    saved_env = os.environ.get(fcuda.LOCAL_ENV)
    if knobs is None:
        os.environ[fcuda.LOCAL_ENV] = "0"
    for k, v in (knobs or {}).items():
        setattr(local, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(local, k, v)
        if saved_env is None:
            os.environ.pop(fcuda.LOCAL_ENV, None)
        else:
            os.environ[fcuda.LOCAL_ENV] = saved_env


def layouts(sh):
    """The local layouts of a shape under the current knobs: forward, and BPTT if training."""
    dirs = (False, True) if sh["train"] else (False,)
    return tuple(fcuda.plan(sh["cell"], sh["H"], sh["B"], np.float32, bw)["local"] for bw in dirs)


def median_call(run, reps):
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def kernel_ms(run, reps):
    """Median milliseconds a call spends in local kernels (CUDA events around each launch)."""
    spent = []

    def record(name, ms):
        if "local" in name:
            spent[-1] += ms
    with timed_launches(record):
        for _ in range(reps):
            spent.append(0.0)
            run()
    return statistics.median(spent)


def sweep_shape(sh, names, rounds, reps, rng, with_torch):
    """Rows for one shape: each variant with distinct layouts, timed in rounds."""
    run = fastrnn_runner(sh["cell"], sh["T"], sh["B"], sh["H"], sh["train"], rng)
    todo, seen = [], set()
    for name in names:
        with variant(name):
            lay = layouts(sh)
            if VARIANTS[name] is not None:
                key = json.dumps(lay, sort_keys=True)
                if any(L is None for L in lay) or key in seen:
                    continue
                seen.add(key)
            fcuda.last_path.clear()
            run()
            run()   # compile, warm the pool
            todo.append(dict(variant=name, layouts=list(lay), path=dict(fcuda.last_path), all_s=[]))
    peer = torch_runner(sh["cell"], sh["T"], sh["B"], sh["H"], sh["train"]) if with_torch else None
    if peer:
        peer()
        peer()
    cudnn = []
    for r in range(rounds):
        order = todo if r % 2 == 0 else todo[::-1]
        for row in order:
            with variant(row["variant"]):
                row["all_s"].append(median_call(run, reps))
        if peer:
            cudnn.append(median_call(peer, reps))
    cudnn_s = statistics.median(cudnn) if cudnn else None
    for row in todo:
        with variant(row["variant"]):
            row["kernel_ms"] = kernel_ms(run, reps) if row["path"].get("forward") == "local" else None
        row.update(sh, median_s=statistics.median(row["all_s"]), cudnn_s=cudnn_s)
    base = next((r for r in todo if r["variant"] == "default"), None)
    for row in todo:
        row["vs_default"] = base["median_s"] / row["median_s"] if base else None
        row["vs_cudnn"] = cudnn_s / row["median_s"] if cudnn_s else None
    return todo


def show(rows):
    label = lambda r: f"{r['cell']} H={r['H']} B={r['B']} T={r['T']} {'train' if r['train'] else 'inf'}"
    fmt = lambda v, spec: "-" if v is None else format(v, spec)
    print(f"{'shape':30s} {'variant':12s} {'ms':>8s} {'kernel ms':>9s} {'/default':>8s} {'/cudnn':>7s}  layout")
    for r in rows:
        lay = " | ".join("-" if L is None else
                         f"BQ{L['BQ']} NT{L['NT']} S{L['S']} U{L['U']} R{L['R']}/{L['KS']} blk{L['blocks']}"
                         for L in r["layouts"])
        print(f"{label(r):30s} {r['variant']:12s} {r['median_s'] * 1e3:8.3f} {fmt(r['kernel_ms'], '9.3f')} "
              f"{fmt(r['vs_default'], '8.2f')} {fmt(r['vs_cudnn'], '7.2f')}  {lay}  {r['path']}")
    best = {}
    for r in rows:
        if r["variant"] != "units-split":
            k = label(r)
            if k not in best or r["median_s"] < best[k]["median_s"]:
                best[k] = r
    print("fastest local variant per shape:", "; ".join(f"{k}: {r['variant']} ({fmt(r['vs_default'], '.2f')}x)"
                                                        for k, r in best.items()))


def sass(shapes, names, nsm, smem):
    """Compile each variant's distinct kernels for sm_90 (benchmarks/gpu_sass.py's tools)
    at a GPU's limits, so that a variant that would spill is known before a GPU session."""
    import tempfile
    import gpu_sass
    from fastrnn.cells import get_cell
    from numba import float32
    tools, why = gpu_sass.compilers((9, 0))
    if why:
        print(f"--sass: cannot compile for sm_90 here ({why}; pip install -e '.[sass]')")
        return 3
    work, done, bad = tempfile.mkdtemp(prefix="fastrnn-sweep-sass-"), {}, 0
    for sh in shapes:
        spec = get_cell(sh["cell"])
        for name in names:
            if VARIANTS[name] is None:
                continue
            with variant(name):
                for bw in ((False, True) if sh["train"] else (False,)):
                    L = local.layout(spec.gates, sh["H"], sh["B"], 4, bw, nsm, smem,
                                     max_threads=local.MAX_THREADS)
                    if L is None:
                        continue
                    key = (spec.code, bw) + tuple(L[k] for k in ("S", "KS", "R", "BQ", "NT", "U"))
                    if key in done:
                        continue
                    k = local.kernel(spec.code, np.float32, bw, *key[2:])
                    label = (f"{'bwd' if bw else 'fwd'} {sh['cell']} H={sh['H']} {name}: BQ{L['BQ']} "
                             f"NT{L['NT']} S{L['S']} U{L['U']} R{L['R']}/{L['KS']}")
                    r = done[key] = gpu_sass.compile_one(label, k, float32, (9, 0), tools, work)
                    ok = r["ok"] and not r["spill_stores"] and not r["spill_loads"]
                    bad += not ok
                    print(f"{label:58s} " + (f"regs {r['registers']:3d} spill {r['spill_stores']}/"
                                             f"{r['spill_loads']} loop instr/FMA {r.get('per_fma', '-')}"
                                             if r["ok"] else f"FAILED {r['error']}"))
    print(f"{len(done)} kernels, {bad} failed or spilled")
    return 1 if bad else 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=DEFAULT_SHAPES)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=10, help="calls per measurement (median)")
    ap.add_argument("--no-torch", action="store_true", help="leave out cuDNN")
    ap.add_argument("--budget", type=float, default=420,
                    help="seconds: no shape is started after this (compiling ~100 kernels "
                         "takes most of it)")
    ap.add_argument("--out")
    ap.add_argument("--sass", action="store_true",
                    help="compile the variants' kernels for sm_90 offline (no GPU) and stop")
    ap.add_argument("--sms", type=int, default=132, help="--sass: the GPU's SMs (H100: 132)")
    ap.add_argument("--smem-kib", type=int, default=227,
                    help="--sass: its opt-in shared memory a block (H100: 227)")
    a = ap.parse_args(argv)
    names = a.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"--variants: unknown {unknown}; known: {', '.join(VARIANTS)}")
    if "default" not in names:
        names.insert(0, "default")
    if a.sass:
        return sass(parse_shapes(a.shapes), names, a.sms, a.smem_kib * 1024)
    if fcuda.unavailable_reason():
        print("no cuda backend:", fcuda.unavailable_reason())
        return 2
    shapes = parse_shapes(a.shapes)
    with_torch = False
    if not a.no_torch and not fcuda.SIMULATOR:
        try:
            import torch
            with_torch = torch.cuda.is_available()
        except ImportError:
            pass
    rng = np.random.default_rng(0)
    rows, start = [], time.perf_counter()
    for i, sh in enumerate(shapes):
        if time.perf_counter() - start > a.budget:
            print(f"--budget: {len(shapes) - i} shapes left out")
            break
        rows += sweep_shape(sh, names, a.rounds, a.reps, rng, with_torch)
    show(rows)
    dev = fcuda._device_limits()[2]
    out = a.out or os.path.join(os.path.dirname(__file__), "results",
                                f"gpu-local-sweep-{dev.replace(' ', '-')}.json")
    with open(out, "w") as f:
        json.dump(dict(device=dev, date=time.strftime("%Y-%m-%d"), rounds=a.rounds, reps=a.reps,
                       variants={n: VARIANTS[n] for n in names},
                       rows=rows), f, indent=1)
    print("wrote", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Time the cuda backend of two source trees against each other on one GPU, in one run.

Each tree runs in its own worker process (two fastrnn packages cannot share one
interpreter); the parent asks them in turn, shape by shape and round by round, so that
clock and thermal drift fall on both sides alike. A tree is any directory holding a
`fastrnn` package, e.g. an older revision unpacked with

    mkdir -p ab-base && git archive <rev> fastrnn | tar -x -C ab-base

(on the device machine, carry ab-base: it is not tracked). Prints per shape the two
medians and head/base; writes benchmarks/results/gpu-ab-<device>.json (or --out).

    python benchmarks/gpu_ab.py --base ab-base [--head .] [--rounds 5] [--shapes SPEC]
    python benchmarks/gpu_ab.py --base . --head-env FASTRNN_CUDA_BT=4   # a switch, one tree

SPEC: comma-separated cell:H:B:T:mode, mode inf or train (default: the shapes where the
targets of issue 4 were missed, plus a step-gemm shape as a control).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DEFAULT_SHAPES = ("lstm:1024:8:256:train,gru:1024:8:256:train,lstm:512:8:256:train,"
                  "lstm:512:8:1024:inf,lstm:512:8:32:inf,gru:512:8:32:inf,"
                  "rnn_tanh:256:1:256:inf,rnn_tanh:256:8:256:inf,rnn_tanh:256:8:256:train,"
                  "lstm:256:64:256:train,lstm:1024:8:32:inf,lstm:256:256:256:train")


def worker(tree):
    """Read one JSON shape per line, answer with the median seconds of a call."""
    sys.path.insert(0, os.path.abspath(tree))
    import numpy as np
    from numba import cuda
    from fastrnn.backends import cuda as fcuda   # the tree's, before gpu_profile imports it
    sys.path.insert(1, os.path.dirname(os.path.abspath(__file__)))
    from gpu_profile import call, inputs
    rng = np.random.default_rng(0)
    cache = {}
    name = getattr(cuda.get_current_device(), "name", b"Numba CUDA simulator")
    print(json.dumps(dict(device=name.decode() if isinstance(name, bytes) else str(name))), flush=True)
    for line in sys.stdin:
        q = json.loads(line)
        key = (q["cell"], q["H"], q["B"], q["T"], q["train"])
        if key not in cache:
            cell, H, B, T, train = key
            args, dy = inputs(cell, T, B, H, rng)

            def run(cell=cell, train=train, args=args, dy=dy):
                fcuda.last_path.clear()
                call(cell, args, dy, train)
                cuda.synchronize()
            run()
            run()   # compile and warm the pool
            cache[key] = run
        run = cache[key]
        times = []
        for _ in range(q["reps"]):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        print(json.dumps(dict(median_s=statistics.median(times), path=dict(fcuda.last_path))),
              flush=True)
    return 0


class Side:
    def __init__(self, tree, env):
        self.tree = tree
        self.p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", tree],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  env=dict(os.environ, **env))
        first = self.p.stdout.readline()
        if not first:
            raise RuntimeError(f"worker for {tree} did not start")
        self.device = json.loads(first)["device"]

    def time(self, shape, reps):
        self.p.stdin.write(json.dumps(dict(shape, reps=reps)) + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"worker for {self.tree} exited")
        return json.loads(line)

    def close(self):
        self.p.stdin.close()
        self.p.wait()


def parse_shapes(spec):
    out = []
    for item in spec.split(","):
        cell, H, B, T, mode = item.split(":")
        if mode not in ("inf", "train"):
            raise SystemExit(f"--shapes: mode must be inf or train, got {mode!r} in {item!r}")
        out.append(dict(cell=cell, H=int(H), B=int(B), T=int(T), train=mode == "train"))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--base", help="source tree of the base side")
    ap.add_argument("--head", default=ROOT, help="source tree of the head side (default: this one)")
    ap.add_argument("--base-env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment of the base worker only (repeatable)")
    ap.add_argument("--head-env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment of the head worker only (repeatable)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=5, help="calls per measurement (median)")
    ap.add_argument("--shapes", default=DEFAULT_SHAPES)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    if a.worker:
        return worker(a.worker)
    if not a.base:
        ap.error("--base is required")
    for t in (a.base, a.head):
        if not os.path.isdir(os.path.join(t, "fastrnn")):
            ap.error(f"{t}: no fastrnn package there")
    shapes = parse_shapes(a.shapes)
    envs = []
    for items, flag in ((a.base_env, "--base-env"), (a.head_env, "--head-env")):
        if any("=" not in e for e in items):
            ap.error(f"{flag}: expected KEY=VALUE")
        envs.append(dict(e.split("=", 1) for e in items))
    base, head = Side(a.base, envs[0]), Side(a.head, envs[1])
    res = {i: dict(base=[], head=[]) for i in range(len(shapes))}
    try:
        for r in range(a.rounds):
            for i, sh in enumerate(shapes):
                order = (("base", base), ("head", head)) if r % 2 == 0 else (("head", head), ("base", base))
                for name, side in order:
                    out = side.time(sh, a.reps)
                    res[i][name].append(out["median_s"])
                    res[i][name + "_path"] = out["path"]
    finally:
        base.close()
        head.close()
    dev = head.device
    rows = []
    print(f"{'shape':30s} {'base ms':>9s} {'head ms':>9s} {'base/head':>9s}  paths (head)")
    for i, sh in enumerate(shapes):
        b, h = statistics.median(res[i]["base"]), statistics.median(res[i]["head"])
        label = f"{sh['cell']} H={sh['H']} B={sh['B']} T={sh['T']} {'train' if sh['train'] else 'inf'}"
        rows.append(dict(sh, base_s=b, head_s=h, speedup=b / h, base_all=res[i]["base"],
                         head_all=res[i]["head"], path_base=res[i]["base_path"],
                         path_head=res[i]["head_path"]))
        print(f"{label:30s} {b * 1e3:9.3f} {h * 1e3:9.3f} {b / h:9.2f}  {res[i]['head_path']}")
    out = a.out or os.path.join(ROOT, "benchmarks", "results", f"gpu-ab-{dev.replace(' ', '-')}.json")
    with open(out, "w") as f:
        json.dump(dict(device=dev, base=os.path.abspath(a.base), head=os.path.abspath(a.head),
                       base_env=envs[0], head_env=envs[1],
                       date=time.strftime("%Y-%m-%d"), rounds=a.rounds, reps=a.reps, rows=rows), f, indent=1)
    print("wrote", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

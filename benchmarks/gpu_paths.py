"""Time the cuda backend's two step paths against each other and cuDNN, to place the
batch size from which a step's product is a library matrix product (cuda.STEP_GEMM_MIN_B).

    python benchmarks/gpu_paths.py [--cells lstm,gru,rnn_tanh] [--hs 256,512,1024]
                                   [--bs 16,32,64,128,256] [--T 256] [--out FILE]

For every point: the in-kernel product path (persistent, or per-step where the weights do
not fit) and the step-gemm path, forward and forward+backward, float32, TF32 off.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from gpu_check import fastrnn_runner, timeit, torch_runner   # noqa: E402
from fastrnn.backends import cuda as fcuda                   # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", default="lstm,gru,rnn_tanh")
    ap.add_argument("--hs", default="256,512,1024")
    ap.add_argument("--bs", default="16,32,64,128,256")
    ap.add_argument("--T", type=int, default=256)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if fcuda.unavailable_reason() or fcuda.SIMULATOR:
        print(f"no real GPU: {fcuda.unavailable_reason() or 'simulator'}")
        return 2
    rng = np.random.default_rng(0)
    ints = lambda text: [int(v) for v in text.split(",")]
    rows, T = [], args.T
    for cell in args.cells.split(","):
        for train in (False, True):
            for H in ints(args.hs):
                for B in ints(args.bs):
                    row = dict(cell=cell, mode="train" if train else "inference", H=H, B=B, T=T)
                    for label, env in (("kernel", "0"), ("gemm", "1")):
                        os.environ[fcuda.STEP_GEMM_ENV] = env
                        row[label + "_s"] = timeit(fastrnn_runner(cell, T, B, H, train, rng))
                        row[label + "_path"] = dict(fcuda.last_path)
                    row["cudnn_s"] = timeit(torch_runner(cell, T, B, H, train))
                    rows.append(row)
                    print(f"{cell:8s} {row['mode']:9s} H={H:4d} B={B:3d} kernel/cudnn "
                          f"{row['cudnn_s'] / row['kernel_s']:5.2f}  gemm/cudnn "
                          f"{row['cudnn_s'] / row['gemm_s']:5.2f}  gemm speed-up "
                          f"{row['kernel_s'] / row['gemm_s']:5.2f}", flush=True)
    os.environ.pop(fcuda.STEP_GEMM_ENV)
    res = dict(device=fcuda._device_limits()[2], date=time.strftime("%Y-%m-%d"), T=T, rows=rows)
    out = args.out or os.path.join(os.path.dirname(__file__), "results",
                                   "gpu-paths-" + res["device"].replace(" ", "-") + ".json")
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

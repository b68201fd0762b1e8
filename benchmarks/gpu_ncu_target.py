"""A small program for Nsight Compute: one persistent forward and backward of one layer.

    ncu -k regex:persistent --launch-skip 2 --launch-count 2 python benchmarks/gpu_ncu_target.py lstm 256 1 64
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from fastrnn.backends import cuda as fcuda   # noqa: E402
from fastrnn.cells import get_cell           # noqa: E402
from numba import cuda                       # noqa: E402

cell, H, B, T = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
G = get_cell(cell).gates
rng = np.random.default_rng(0)
dev = lambda *s: cuda.to_device((rng.standard_normal(s) / np.sqrt(H)).astype(np.float32))
args = (dev(T, B, H), dev(B, H), dev(B, H) if cell == "lstm" else None, dev(G * H, H), dev(G * H, H),
        dev(G * H), dev(G * H))
for _ in range(2):
    out = fcuda.forward_layer(cell, *args, train=True)
    fcuda.backward_layer(cell, out[3], dev(T, B, H), None, None)
cuda.synchronize()
print("plan", fcuda.plan(cell, H, B), fcuda.plan(cell, H, B, backward=True))

"""The cuda backend against the reference over randomly drawn layers (fixed seeds): cell,
T, B, I (0 included), H, dtype, ragged lengths and direction, on each kernel path in turn
(local; units-split persistent under either grid barrier, with the batch split, with
4-sequence tiles; one launch a step; step-gemm), forced by its switch and checked to be
the path both directions took. The targeted tests cover each path's edges; these cover
the combinations. Under the simulator in CI (tiny sizes, ~1 s a seed)."""
import numpy as np
import pytest

from fastrnn import backends
from helpers import compare_layer

pytestmark = pytest.mark.skipif("cuda" not in backends.available(),
                                reason=f"cuda backend unavailable: {backends.why_unavailable('cuda')}")

CELLS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]
SWITCHES = ("FASTRNN_CUDA_LOCAL", "FASTRNN_CUDA_STEP_GEMM", "FASTRNN_CUDA_BATCH_BLOCKS",
            "FASTRNN_CUDA_BT", "FASTRNN_CUDA_MAX_BLOCKS", "FASTRNN_CUDA_PERSISTENT",
            "FASTRNN_CUDA_GRID_SYNC")
# (name, switches, the path both directions must take; "units": the units-split kernels,
# persistent where the plan's grid is co-resident, else a launch a step: the simulator
# holds one persistent block, so the batch split runs a launch a step here)
PATHS = [("local", {}, "local"),
         ("persistent", {"FASTRNN_CUDA_LOCAL": "0"}, "units"),
         ("flag barrier", {"FASTRNN_CUDA_LOCAL": "0", "FASTRNN_CUDA_GRID_SYNC": "flag"}, "units"),
         ("batch split", {"FASTRNN_CUDA_BATCH_BLOCKS": "2"}, "units"),
         ("4-sequence tiles", {"FASTRNN_CUDA_BT": "4"}, "units"),
         ("per-step", {"FASTRNN_CUDA_PERSISTENT": "0"}, "per-step"),
         ("step-gemm", {"FASTRNN_CUDA_STEP_GEMM": "1"}, "step-gemm")]


@pytest.mark.filterwarnings("ignore:overflow encountered")   # the flag barrier's uint32 adds wrap
@pytest.mark.parametrize("seed", range(2 * len(PATHS)))
def test_cuda_matches_reference_on_a_random_layer(seed, monkeypatch):
    from fastrnn.backends import cuda
    name, env, path = PATHS[seed % len(PATHS)]
    rng = np.random.default_rng(seed + 4242)
    cell = CELLS[rng.integers(len(CELLS))]
    # B <= 9: the local kernels take every such batch under the simulator's limits
    T, B, I, H = (int(rng.integers(1, 5)), int(rng.integers(1, 10)), int(rng.integers(0, 5)),
                  int(rng.integers(1, 21)))
    dt = [np.float32, np.float64][rng.integers(2)]
    reverse, ragged = bool(rng.integers(2)), bool(rng.integers(2))
    for var in SWITCHES:
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    what = (name, cell, T, B, I, H, dt.__name__, reverse, ragged)
    if path == "units":
        p = cuda.plan(cell, H, B, dt)
        path = "persistent" if p["persistent"] else "per-step"
        # the forced layout is the one planned (the batch split needs 2 sequences)
        assert p["nbb"] == (min(B, 2) if name == "batch split" else 1), what
        assert name != "4-sequence tiles" or p["BT"] == 4, what
    out, grad = compare_layer(cuda, cell, T, B, I, H, dt, reverse, ragged, seed)
    assert cuda.last_path == {"forward": path, "backward": path}, (what, cuda.last_path)
    tol = 1e-12 if dt == np.float64 else 3e-6
    assert out < tol and grad < 10 * tol, (what, out, grad)

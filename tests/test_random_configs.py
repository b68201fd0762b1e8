"""The cpu backend against the reference over randomly drawn module configurations (fixed
seeds): cell, layers, directions, batch_first, bias, proj_size, ragged lengths, hx, dtype,
thread count, and sizes on both sides of the kernels' path choices (the unpacked
small-inference kernel, the split by batch, vector tails). Each configuration runs an
inference call, then a training forward and backward, on both backends."""
import numpy as np
import pytest

import fastrnn
from fastrnn import backends
from helpers import CELLS, make_module, rel_err

pytestmark = pytest.mark.skipif("cpu" not in backends.available(),
                                reason=f"cpu backend unavailable: {backends.why_unavailable('cpu')}")


def draw(seed):
    """One configuration: module keywords, input shape and call arguments."""
    rng = np.random.default_rng(seed)
    cell = CELLS[rng.integers(len(CELLS))]
    H = int(rng.choice([1, 3, 8, 17, 33, 64]))
    kw = dict(num_layers=int(rng.integers(1, 4)), bidirectional=bool(rng.integers(2)),
              batch_first=bool(rng.integers(2)), bias=bool(rng.integers(4)),
              dtype=[np.float32, np.float64][rng.integers(2)])
    if cell == "lstm" and H > 1 and rng.integers(3) == 0:
        kw["proj_size"] = int(rng.integers(1, H))
    T = int(rng.choice([1, 2, 5, 9, 20]))
    B = int(rng.choice([1, 2, 3, 7, 16, 33]))
    I = int(rng.choice([1, 4, 19]))
    lengths = None
    if rng.integers(2):
        lengths = rng.integers(0, T + 1, size=B)
        lengths[rng.integers(B)] = T
    return cell, I, H, kw, T, B, lengths, bool(rng.integers(2)), int(rng.integers(1, 4)), rng


@pytest.mark.parametrize("seed", range(48))
def test_cpu_matches_reference_on_a_random_configuration(seed):
    cell, I, H, kw, T, B, lengths, give_hx, threads, rng = draw(seed)
    mods = {b: make_module(cell, I, H, backend=b, seed=seed, **kw) for b in ("cpu", "reference")}
    m = mods["cpu"]
    dt = m.dtype
    x = rng.standard_normal((B, T, I) if kw["batch_first"] else (T, B, I)).astype(dt)
    L = kw["num_layers"] * (2 if kw["bidirectional"] else 1)
    hx = None
    if give_hx:
        h0 = rng.standard_normal((L, B, m.state_size)).astype(dt)
        hx = (h0, rng.standard_normal((L, B, H)).astype(dt)) if cell == "lstm" else h0
    tol = 1e-4 if dt == np.float32 else 1e-10
    saved = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(threads)
        results = {}
        for name, mod in mods.items():
            mod.eval()
            inf = mod(x, hx, lengths=lengths)
            mod.train()
            out, hn = mod(x, hx, lengths=lengths)
            g = rng.standard_normal(out.shape).astype(dt) if name == "cpu" else results["cpu"][-1]
            gx, ghx = mod.backward(g)
            results[name] = (inf, out, hn, gx, ghx, dict(mod.grads), g)
    finally:
        fastrnn.set_num_threads(saved)
    flat = lambda v: [a for a in (v if isinstance(v, tuple) else (v,)) if a is not None]
    (inf_c, out_c, hn_c, gx_c, ghx_c, gr_c, _), (inf_r, out_r, hn_r, gx_r, ghx_r, gr_r, _) = \
        results["cpu"], results["reference"]
    what = (cell, I, H, kw, T, B, lengths, give_hx, threads)
    for a, b in zip(flat(inf_c[0]) + flat(inf_c[1]), flat(inf_r[0]) + flat(inf_r[1])):
        assert rel_err(a, b) < tol, ("inference", what)
    for a, b in zip([out_c, *flat(hn_c), gx_c, *flat(ghx_c)], [out_r, *flat(hn_r), gx_r, *flat(ghx_r)]):
        assert rel_err(a, b) < tol, ("training", what)
    for k in gr_r:
        assert rel_err(gr_c[k], gr_r[k]) < tol, (k, what)
    # the inference call and the training forward agree
    assert rel_err(inf_c[0], out_c) < tol, ("inference vs training", what)

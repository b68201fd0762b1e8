"""The cuda backend's local kernels (cuda_local.py: a block holds all of W_hh and runs
whole sequences) against the float64 reference, and the plan that chooses them. In CI
under the Numba CUDA simulator (blocks of 32 threads, 3 "SMs"); on a GPU the same tests
run the real kernels, and benchmarks/gpu_check.py checks full sizes."""
import numpy as np
import pytest

from fastrnn import backends
from helpers import compare_layer

pytestmark = pytest.mark.skipif("cuda" not in backends.available(),
                                reason=f"cuda backend unavailable: {backends.why_unavailable('cuda')}")

SWITCHES = ("FASTRNN_CUDA_LOCAL", "FASTRNN_CUDA_STEP_GEMM", "FASTRNN_CUDA_BATCH_BLOCKS",
            "FASTRNN_CUDA_BT", "FASTRNN_CUDA_MAX_BLOCKS", "FASTRNN_CUDA_PERSISTENT")


@pytest.fixture
def cu(monkeypatch):
    from fastrnn.backends import cuda
    for var in SWITCHES:
        monkeypatch.delenv(var, raising=False)
    return cuda


def check(cu, cell, T, B, H, dt=np.float64, reverse=False, ragged=True, seed=0):
    """Forward and BPTT on the local kernels match the reference."""
    assert cu.plan(cell, H, B, dt)["local"] and cu.plan(cell, H, B, dt, backward=True)["local"]
    out, grad = compare_layer(cu, cell, T, B, 3, H, dt, reverse, ragged, seed)
    assert cu.last_path == {"forward": "local", "backward": "local"}
    tol = 1e-12 if dt == np.float64 else 3e-6
    assert out < tol and grad < 10 * tol, (out, grad)


# (T, B, H): S = 1 slice and 4 items a lane (H = 5); slices, 2 and 4 sequences a block
SHAPES = [(3, 2, 5), (4, 5, 8), (3, 10, 12)]


# rnn_relu shares rnn_tanh's code but for the activation: one shape (CI time)
@pytest.mark.parametrize("cell, T, B, H", [(c, *s) for c in ("rnn_tanh", "lstm", "gru") for s in SHAPES]
                         + [("rnn_relu", *SHAPES[1])])
def test_matches_reference(cu, cell, T, B, H):
    check(cu, cell, T, B, H, reverse=False, seed=T + B)
    check(cu, cell, T, B, H, reverse=True, seed=T + B + 1)


@pytest.mark.parametrize("cell, reg_weights", [("rnn_tanh", 4), ("lstm", 24), ("gru", 4), ("gru", 24)])
def test_weights_in_shared_memory(cu, cell, reg_weights, monkeypatch):
    # fewer register weights than terms: none (4 float64 words round to 0 terms) or
    # some in registers, the rest read from shared memory
    from fastrnn.backends import cuda_local
    monkeypatch.setattr(cuda_local, "REG_WEIGHTS", {1: reg_weights, 2: reg_weights, 4: reg_weights})
    L = cu.plan(cell, 12, 4, np.float64, backward=True)["local"]
    assert L["R"] < L["KS"]
    assert (L["R"] == 0) == (reg_weights == 4)
    check(cu, cell, 4, 4, 12, reverse=True, seed=3)
    check(cu, cell, 3, 4, 12, dt=np.float32, seed=4)


def test_no_bias_float32_unragged(cu):
    from helpers import layer_inputs
    from fastrnn.backends import reference as ref
    rng = np.random.default_rng(5)
    x, h0, c0, w_ih, w_hh, _, _ = layer_inputs(rng, "gru", 3, 4, 2, 7, np.float32)
    y, h, _, _ = cu.forward_layer("gru", x, h0, c0, w_ih, w_hh, None, None)
    y_r, h_r, _, _ = ref.forward_layer("gru", *(a.astype(np.float64) for a in (x, h0)), None,
                                       w_ih.astype(np.float64), w_hh.astype(np.float64), None, None)
    assert cu.last_path["forward"] == "local"
    np.testing.assert_allclose(y, y_r, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(h, h_r, rtol=2e-5, atol=2e-6)


def test_inference_then_training_and_mixed_paths(cu, monkeypatch):
    # the local forward writes the state history with the units-split plan's Bp, so a
    # units-split BPTT can follow it (and the other way round)
    from helpers import layer_inputs
    from fastrnn.backends import reference as ref
    rng = np.random.default_rng(6)
    args = layer_inputs(rng, "lstm", 4, 3, 2, 6, np.float64)
    lengths = np.array([4, 1, 3])
    y_i = cu.forward_layer("lstm", *args, lengths=lengths, train=False)[0]
    y, h, c, saved = cu.forward_layer("lstm", *args, lengths=lengths)
    assert cu.last_path["forward"] == "local"
    np.testing.assert_array_equal(y_i, y)
    r = ref.forward_layer("lstm", *args, lengths=lengths)
    dy, dh, dc = rng.standard_normal(y.shape), rng.standard_normal(h.shape), rng.standard_normal(h.shape)
    want = ref.backward_layer("lstm", r[3], dy, dh, dc)
    monkeypatch.setenv("FASTRNN_CUDA_LOCAL", "0")
    got = cu.backward_layer("lstm", saved, dy, dh, dc)
    assert cu.last_path["backward"] == "persistent"
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    saved2 = cu.forward_layer("lstm", *args, lengths=lengths)[3]
    assert cu.last_path["forward"] == "persistent"
    monkeypatch.delenv("FASTRNN_CUDA_LOCAL")
    got = cu.backward_layer("lstm", saved2, dy, dh, dc)
    assert cu.last_path["backward"] == "local"
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_refused_launch_falls_back(cu, monkeypatch):
    # a launch the driver refuses (registers, shared memory) runs the units-split kernels,
    # and the refusal is remembered; any other error is raised
    from fastrnn.backends.cuda_launch import LaunchRefused
    calls = []

    def refuse(kern, *a, **k):
        if "local" in _name(kern):
            calls.append(kern)
            raise LaunchRefused("cuda: launching fwd_local failed (CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES)")
        return real(kern, *a, **k)
    real = cu.launch
    monkeypatch.setattr(cu, "launch", refuse)
    monkeypatch.setattr(cu, "_local_refused", {})
    out, grad = compare_layer(cu, "rnn_tanh", 3, 2, 2, 5, np.float64, False, True, 7)
    assert out < 1e-12 and grad < 1e-11
    assert cu.last_path == {"forward": "persistent", "backward": "persistent"}
    assert len(cu._local_refused) == 2 and len(calls) == 2
    compare_layer(cu, "rnn_tanh", 3, 2, 2, 5, np.float64, False, True, 8)
    assert len(calls) == 2   # not tried again

    def broken(kern, *a, **k):
        raise RuntimeError("cuda: an illegal memory access")
    monkeypatch.setattr(cu, "launch", broken)
    monkeypatch.setattr(cu, "_local_refused", {})
    with pytest.raises(RuntimeError, match="illegal"):
        cu.forward_layer("gru", *_inputs("gru", 2, 2, 3))


def test_only_size_refusals_fall_back():
    # the driver's codes: a block too large for the SM (701, or 1 for a size over a limit)
    # is a refusal the caller may answer with smaller kernels; an illegal address (700)
    # or a refusal outside a launch is an error
    from fastrnn.backends.cuda_launch import LaunchRefused, _check
    _check(0, "launching k", refusable=True)
    for code in (1, 701):
        with pytest.raises(LaunchRefused, match="launching k"):
            _check(code, "launching k", refusable=True)
    for code, refusable in ((700, True), (701, False)):
        with pytest.raises(RuntimeError) as e:
            _check(code, "launching k", refusable=refusable)
        assert not isinstance(e.value, LaunchRefused)


def _name(kern):
    fn = getattr(kern, "py_func", None) or getattr(kern, "fn", None)
    return getattr(fn, "__name__", "")


def _inputs(cell, T, B, H):
    from helpers import layer_inputs
    return layer_inputs(np.random.default_rng(0), cell, T, B, 2, H, np.float64)


H100_SHARED = 227 * 1024   # an H100's opt-in dynamic shared memory a block


def test_layout_with_an_h100s_limits():
    # what a GPU with an H100's limits (132 SMs, 227 KiB shared memory) runs: 512 threads,
    # all of W_hh on the SM, no spills at REG_WEIGHTS (benchmarks/gpu_sass.py)
    from fastrnn.backends import cuda_local as cl
    lay = lambda G, H, B, bw=False, item=4, smem=H100_SHARED: cl.layout(G, H, B, item, bw, 132, smem)
    for G, H in ((1, 256), (4, 128), (3, 128), (3, 160), (1, 64)):
        for bw in (False, True):
            for B in (1, 8, 64, 256, 528):
                L = lay(G, H, B, bw)
                if G == 3 and H == 160 and B > 132:
                    assert (L is None) == (bw or B > 264)   # 2 or 4 sequences a block:
                    continue                                # fewer weights in registers
                assert L is not None, (G, H, B, bw)
                NU = L["U"] * (1 if bw else G)
                assert L["NT"] <= 512 and L["blocks"] <= 132
                assert L["R"] * NU <= cl.REG_WEIGHTS[L["BQ"]]
                rows = G * H if bw else H
                assert L["S"] * L["KS"] >= rows and L["KS"] % 4 == 0 and L["KS"] >= 4
                assert -(-H // L["U"]) * L["S"] <= L["NT"] < -(-H // L["U"]) * L["S"] + 32
                assert L["shared_bytes"] <= H100_SHARED
    assert lay(1, 256, 8) == dict(S=8, KS=32, R=18, BQ=1, NT=512, U=4, blocks=8, shared_bytes=116992)
    # 2 sequences a block from B = 133, 4 from 265 (RNN H = 256: fewer weights in
    # registers, 173 KiB of shared memory; at the 160 KiB of the cooperative grids it
    # would not fit)
    assert lay(1, 256, 256)["BQ"] == 2 and lay(1, 256, 264)["BQ"] == 2
    assert lay(1, 256, 265)["BQ"] == 4 and lay(1, 256, 528)["shared_bytes"] == 173056
    assert lay(1, 256, 265, smem=160 * 1024) is None
    assert lay(1, 128, 265)["BQ"] == 4 and lay(1, 128, 528, True)["BQ"] == 4
    # too large for one SM, or more than one wave of blocks
    for G, H in ((1, 320), (4, 160), (3, 192), (4, 256)):
        assert lay(G, H, 1) is None and lay(G, H, 1, True) is None
    assert lay(1, 256, 529) is None
    # float64 weights take two registers each: half the terms (72 words, 4 rows: 9 of 32)
    assert cl.layout(1, 256, 1, 8, False, 132, 1 << 20)["R"] == 9
    assert lay(1, 256, 1, item=8) is None


@pytest.mark.parametrize("unit_rows, cell, U_fwd, U_bwd", [(2, "rnn_tanh", 2, 2), (8, "gru", 2, 8),
                                                           (8, "lstm", 2, 8)])
def test_unit_rows(cu, unit_rows, cell, U_fwd, U_bwd, monkeypatch):
    # rows a thread per state read (cuda_local.UNIT_ROWS, timed by gpu_local_sweep.py):
    # other unit counts a thread give the same results
    from fastrnn.backends import cuda_local
    monkeypatch.setattr(cuda_local, "UNIT_ROWS", unit_rows)
    assert cu.plan(cell, 7, 3, np.float64)["local"]["U"] == U_fwd
    assert cu.plan(cell, 7, 3, np.float64, backward=True)["local"]["U"] == U_bwd
    check(cu, cell, 3, 3, 7, reverse=True, seed=5)


def test_plan_and_switches(cu, monkeypatch):
    monkeypatch.setattr(cu, "SIMULATOR", False)
    monkeypatch.setattr(cu, "THREADS", 256)
    monkeypatch.setattr(cu, "_device_limits", lambda: (132, 160 * 1024, "H100 limits (test)"))
    monkeypatch.setattr(cu, "_local_shared", lambda: H100_SHARED)
    assert cu.plan("rnn_tanh", 256, 8)["local"]["NT"] == 512
    assert cu.plan("lstm", 256, 8)["local"] is None and cu.plan("lstm", 128, 8)["local"]
    d = cu.describe()
    assert "local kernels" in d and "RNN H<=256" in d and "LSTM H<=128" in d and "GRU H<=160" in d
    assert "B<=528" in d and "227 KiB shared/block" in d
    # a forced path, or FASTRNN_CUDA_LOCAL=0, turns the local kernels off
    for var, v in (("FASTRNN_CUDA_LOCAL", "0"), ("FASTRNN_CUDA_STEP_GEMM", "0"),
                   ("FASTRNN_CUDA_BATCH_BLOCKS", "1"), ("FASTRNN_CUDA_PERSISTENT", "0"),
                   ("FASTRNN_CUDA_BT", "1"), ("FASTRNN_CUDA_MAX_BLOCKS", "8")):
        monkeypatch.setenv(var, v)
        assert cu.plan("rnn_tanh", 256, 8)["local"] is None, var
        monkeypatch.delenv(var)
    assert cu.plan("rnn_tanh", 256, 8, persistent=False)["local"] is None
    monkeypatch.setenv("FASTRNN_CUDA_LOCAL", "1")
    with pytest.raises(ValueError, match="FASTRNN_CUDA_LOCAL"):
        cu.plan("rnn_tanh", 256, 8)


@pytest.mark.parametrize("cell, T, B, I, H, lengths", [
    ("lstm", 3, 9, 3, 1, None),                   # one unit: 3 of 4 items a lane empty
    ("gru", 2, 9, 0, 2, [0, 2, 1, 0, 2, 2, 1, 0, 0]),   # no input features, empty sequences
    ("rnn_tanh", 1, 9, 1, 13, [0] * 9)])          # every sequence empty: h_T = h0, y = 0
def test_edges(cu, cell, T, B, I, H, lengths):
    from helpers import layer_inputs
    from fastrnn.backends import reference as ref
    rng = np.random.default_rng(9)
    args = layer_inputs(rng, cell, T, B, I, H, np.float64)
    lengths = None if lengths is None else np.array(lengths)
    y, h, c, s = cu.forward_layer(cell, *args, lengths=lengths)
    r = ref.forward_layer(cell, *args, lengths=lengths)
    dy, dh = rng.standard_normal(y.shape), rng.standard_normal(h.shape)
    dc = rng.standard_normal(h.shape) if cell == "lstm" else None
    g, gr = cu.backward_layer(cell, s, dy, dh, dc), ref.backward_layer(cell, r[3], dy, dh, dc)
    assert cu.last_path == {"forward": "local", "backward": "local"}
    for a, b in zip((y, h, c) + tuple(g), r[:3] + tuple(gr)):
        if b is not None:
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)

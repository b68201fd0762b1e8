"""The cuda backend against the NumPy reference. In CI this runs under the Numba CUDA
simulator (NUMBA_ENABLE_CUDASIM=1, set by .ci/run) at small sizes; on a machine with a
GPU the same tests run the real kernels (benchmarks/gpu_check.py checks full sizes)."""
from types import SimpleNamespace

import numpy as np
import pytest
from numba import cuda   # a global: the simulator swaps it in the kernels defined here

from fastrnn import backends
from fastrnn.backends import reference as ref
from fastrnn.cells import get_cell

pytestmark = pytest.mark.skipif("cuda" not in backends.available(),
                                reason=f"cuda backend unavailable: {backends.why_unavailable('cuda')}")

CELLS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]


@pytest.fixture
def cu():
    from fastrnn.backends import cuda
    return cuda


@pytest.fixture(autouse=True)
def units_split(monkeypatch):
    # these tests are about the units-split kernels (cuda_recurrence.py), which the local
    # kernels would take over at these sizes; those have tests/test_cuda_local.py
    monkeypatch.setenv("FASTRNN_CUDA_LOCAL", "0")


def make(cell, T, B, I, H, dt, rng, bias=True):
    G = get_cell(cell).gates
    f = lambda *s: rng.standard_normal(s).astype(dt)
    w = dict(w_ih=f(G * H, I) * 0.4, w_hh=f(G * H, H) * 0.4,
             b_ih=f(G * H) if bias else None, b_hh=f(G * H) if bias else None)
    return (f(T, B, I), f(B, H), f(B, H) if cell == "lstm" else None, w,
            f(T, B, H), f(B, H), f(B, H) if cell == "lstm" else None)


def compare(cu, cell, T, B, I, H, *, reverse=False, ragged=False, dt=np.float64, bias=True, seed=0):
    rng = np.random.default_rng(seed)
    x, h0, c0, w, dy, dh, dc = make(cell, T, B, I, H, dt, rng, bias)
    lengths = rng.integers(0, T + 1, B) if ragged else None
    r = ref.forward_layer(cell, x, h0, c0, **w, lengths=lengths, reverse=reverse)
    c = cu.forward_layer(cell, x, h0, c0, **w, lengths=lengths, reverse=reverse)
    tol = 1e-10 if dt == np.float64 else 2e-5
    for a, b in zip(c[:3], r[:3]):
        if b is not None:
            assert isinstance(a, np.ndarray)
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    gr = ref.backward_layer(cell, r[3], dy, dh, dc)
    gc = cu.backward_layer(cell, c[3], dy, dh, dc)
    for name, a, b in zip(("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh"), gc, gr):
        if b is None:
            assert a is None, name
        else:
            np.testing.assert_allclose(a, b, rtol=10 * tol, atol=10 * tol, err_msg=name)


# the per-step path runs the same step code as the persistent one: two cells keep the
# simulator's time down
@pytest.mark.parametrize("cell, persistent", [(c, "1") for c in CELLS] + [("lstm", "0"), ("gru", "0")])
def test_matches_reference_ragged_both_directions(cu, cell, persistent, monkeypatch):
    monkeypatch.setenv(cu.PERSISTENT_ENV, persistent)
    compare(cu, cell, 3, 3, 2, 5, ragged=True, reverse=False, seed=1)
    compare(cu, cell, 3, 3, 2, 5, ragged=True, reverse=True, seed=2)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_float32_no_bias(cu, cell):
    compare(cu, cell, 3, 2, 3, 4, dt=np.float32, bias=False)


def test_split_summed_index_and_batch_tiles(cu, monkeypatch):
    # 4-batch register tiles picked by default (B > 64), with thread slices splitting the
    # summed index (S > 1) allowed; S > 1 at small batches: test_slices_of_every_cell
    monkeypatch.setattr(cu, "SLICE_TERMS", 2)
    assert cu.plan("gru", 2, 66)["BT"] == 4
    compare(cu, "gru", 2, 66, 2, 2, ragged=True)


def test_forced_batch_tile(cu, monkeypatch):
    # FASTRNN_CUDA_BT times either tiling on a GPU; both must give the reference's numbers
    monkeypatch.setenv(cu.BT_ENV, "4")
    assert cu.plan("lstm", 5, 3)["BT"] == 4 and cu.plan("lstm", 5, 3)["Bp"] == 4
    compare(cu, "lstm", 3, 3, 2, 5, ragged=True, seed=7)
    monkeypatch.setenv(cu.BT_ENV, "1")
    assert cu.plan("gru", 2, 66)["BT"] == 1
    monkeypatch.setenv(cu.BT_ENV, "2")
    with pytest.raises(ValueError, match="FASTRNN_CUDA_BT"):
        cu.plan("lstm", 5, 3)


def test_max_blocks(cu, monkeypatch):
    # FASTRNN_CUDA_MAX_BLOCKS: fewer blocks with more units each (timed on a GPU against
    # one block per SM); the per-step path runs 3 "SMs" under the simulator
    monkeypatch.setenv(cu.PERSISTENT_ENV, "0")
    assert cu.plan("gru", 7, 2)["blocks"] == 3
    monkeypatch.setenv(cu.MAX_BLOCKS_ENV, "2")
    assert cu.plan("gru", 7, 2)["blocks"] == 2 and cu.plan("gru", 7, 2)["hs"] == 4
    compare(cu, "gru", 3, 2, 2, 7, ragged=True, seed=10)
    monkeypatch.setenv(cu.MAX_BLOCKS_ENV, "0")
    with pytest.raises(ValueError, match="FASTRNN_CUDA_MAX_BLOCKS"):
        cu.plan("gru", 7, 2)


def test_batch_blocks(cu, monkeypatch):
    # FASTRNN_CUDA_BATCH_BLOCKS: blocks split the batch as well as the units, each staging
    # only its sequences' columns. Under the simulator (per-step path; 4 "SMs" here) 2
    # batch blocks x 2 unit blocks, the last batch block part padding (B = 5 -> Bp = 6)
    monkeypatch.setattr(cu, "_device_limits", lambda: (4, 48 * 1024, "simulator, 4 SMs"))
    monkeypatch.setenv(cu.BATCH_BLOCKS_ENV, "2")
    p = cu.plan("gru", 7, 5)
    assert (p["nbb"], p["ublocks"], p["blocks"], p["Bs"], p["Bp"], p["persistent"]) == (2, 2, 4, 3, 6, False)
    compare(cu, "gru", 2, 5, 2, 7, ragged=True, reverse=True, seed=11)
    # staged in chunks of 4 rows (6 forward, 24 in BPTT): the copy loop wraps rows of
    # Bs = 3 columns out of Bp = 6
    monkeypatch.setattr(cu, "STAGE_LIMIT", 4 * 3 * 8)
    assert cu.plan("lstm", 6, 5, np.float64)["KC"] == 4
    compare(cu, "lstm", 2, 5, 2, 6, ragged=True, seed=13)
    # 4-sequence tiles and thread slices of the summed index inside a batch block
    monkeypatch.setattr(cu, "STAGE_LIMIT", 32 * 1024)
    monkeypatch.setenv(cu.BT_ENV, "4")
    monkeypatch.setattr(cu, "SLICE_TERMS", 2)
    p = cu.plan("lstm", 6, 9)
    assert p["Bs"] == 8 and p["Bp"] == 16 and p["S"] > 1
    compare(cu, "lstm", 2, 9, 2, 6, ragged=True, reverse=True, seed=14)
    monkeypatch.setenv(cu.BATCH_BLOCKS_ENV, "x")
    with pytest.raises(ValueError, match="FASTRNN_CUDA_BATCH_BLOCKS"):
        cu.plan("gru", 7, 5)


@pytest.mark.parametrize("cell, persistent", [(c, "1") for c in CELLS] + [("lstm", "0")])
def test_slices_of_every_cell(cu, cell, persistent, monkeypatch):
    # (the per-step path runs the same step code; one cell keeps the simulator time down)
    # S > 1 lanes split each tile's summed index: k-fastest packed weights, batch-fastest
    # tiles and the slice reduction, forward and BPTT, on both launch paths
    monkeypatch.setenv(cu.PERSISTENT_ENV, persistent)
    monkeypatch.setattr(cu, "SLICE_TERMS", 2)
    # the smallest B with 4-sequence tiles (hs * B >= threads: 7 or 16 under the simulator)
    tiled = next(B for B in range(1, 4096) if cu.plan(cell, 5, B)["BT"] == 4)
    for H, B in ((8, 1), (6, 2), (5, tiled)):
        assert cu.plan(cell, H, B)["S"] > 1 and cu.plan(cell, H, B, backward=True)["S"] > 1
    assert cu.plan(cell, 5, tiled)["BT"] == 4
    if persistent == "1":   # (the per-step path: the two batched cases)
        compare(cu, cell, 2, 1, 2, 8, seed=4)
    compare(cu, cell, 3, 2, 2, 6, ragged=True, reverse=True, seed=5)
    compare(cu, cell, 2, tiled, 2, 5, ragged=True, seed=6)


@pytest.mark.parametrize("cell", CELLS)
def test_step_gemm_path(cu, cell, monkeypatch):
    # the large-batch path: each step's hidden-side product is a library matrix product
    # (the Numba tiled kernel under the simulator) and the kernel does the gates' work
    monkeypatch.setenv(cu.STEP_GEMM_ENV, "1")
    assert cu.plan(cell, 5, 3)["step_gemm"] and cu.plan(cell, 5, 3, backward=True)["step_gemm"]
    # (one direction per cell keeps the simulator's time down: the step-index arithmetic
    # of both directions is the same for every cell)
    reverse = cell in ("lstm", "rnn_relu")
    compare(cu, cell, 3, 3, 2, 5, ragged=True, reverse=reverse, seed=7)
    assert cu.last_path == {"forward": "step-gemm", "backward": "step-gemm"}
    # inference keeps two state slots: the product must read the one the last step wrote
    rng = np.random.default_rng(9)
    x, h0, c0, w, *_ = make(cell, 5, 3, 2, 5, np.float64, rng)
    lengths = np.array([5, 2, 0])
    r = ref.forward_layer(cell, x, h0, c0, **w, lengths=lengths, reverse=not reverse)
    c = cu.forward_layer(cell, x, h0, c0, **w, lengths=lengths, reverse=not reverse, train=False)
    for a, b in zip(c[:3], r[:3]):
        if b is not None:
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_step_gemm_chosen_at_large_batches(cu, monkeypatch):
    monkeypatch.delenv(cu.STEP_GEMM_ENV, raising=False)
    B = cu.STEP_GEMM_MIN_BH // 256
    assert cu.plan("lstm", 256, B)["step_gemm"] and cu.plan("lstm", 512, B)["step_gemm"]
    assert not cu.plan("lstm", 256, B - 1)["step_gemm"]
    assert "matrix product" in cu.describe()
    monkeypatch.setenv(cu.STEP_GEMM_ENV, "0")
    assert not cu.plan("lstm", 256, B)["step_gemm"]


def test_batch_split_chosen_at_batches_of_64(cu, monkeypatch):
    # The default split (AUTO_BATCH_BLOCKS) as a GPU with an H100's limits would plan it:
    # 8 batch blocks from B = 64 while the weights stay in shared memory, else 4, else
    # none; over step-gemm only for one-gate cells up to BATCH_SPLIT_MAX_H
    monkeypatch.setattr(cu, "SIMULATOR", False)
    monkeypatch.setattr(cu, "THREADS", 256)
    monkeypatch.setattr(cu, "_device_limits", lambda: (132, 160 * 1024, "H100 limits (test)"))
    for var in (cu.STEP_GEMM_ENV, cu.BATCH_BLOCKS_ENV, cu.PERSISTENT_ENV, cu.MAX_BLOCKS_ENV, cu.BT_ENV):
        monkeypatch.delenv(var, raising=False)
    shape = lambda p: (p["nbb"], p["persistent"], p["step_gemm"])
    for cell in CELLS:
        for backward in (False, True):
            assert shape(cu.plan(cell, 256, 63, backward=backward)) == (1, True, False)
            p = cu.plan(cell, 256, 64, backward=backward)
            assert shape(p) == (8, True, False) and p["blocks"] <= 132 and p["Bs"] == 8
    # float64 LSTM weights of 16 units (of 132 // 8 unit blocks) take 192 KiB: 4 blocks
    assert shape(cu.plan("lstm", 384, 64, np.float64)) == (4, True, False)
    # too large even split 4 ways (33 unit blocks of 16 units: 256 KiB): unsplit, whose
    # 4 units a block fit
    assert shape(cu.plan("lstm", 500, 64, np.float64)) == (1, True, False)
    # B * H >= STEP_GEMM_MIN_BH: the plain RNN splits at H <= 256, the gated cells and
    # larger H keep step-gemm
    for cell in ("rnn_tanh", "rnn_relu"):
        assert shape(cu.plan(cell, 256, 256)) == (8, True, False)
        assert shape(cu.plan(cell, 512, 256)) == (1, False, True)
    for cell in ("lstm", "gru"):
        assert shape(cu.plan(cell, 256, 256)) == (1, False, True)
    assert "from B=64 the blocks split the batch 8 or 4 ways" in cu.describe()
    # the switches still win: a forced count, never step-gemm, always step-gemm, per step
    monkeypatch.setenv(cu.BATCH_BLOCKS_ENV, "2")
    assert "split the batch 2 ways" in cu.describe()
    assert shape(cu.plan("gru", 256, 64)) == (2, True, False)
    assert shape(cu.plan("gru", 256, 256)) == (1, False, True)
    monkeypatch.setenv(cu.STEP_GEMM_ENV, "0")
    assert shape(cu.plan("gru", 256, 256)) == (2, True, False)
    monkeypatch.delenv(cu.BATCH_BLOCKS_ENV)
    assert shape(cu.plan("lstm", 256, 256)) == (8, True, False)
    monkeypatch.setenv(cu.STEP_GEMM_ENV, "1")
    assert shape(cu.plan("rnn_tanh", 256, 64)) == (1, False, True)
    monkeypatch.delenv(cu.STEP_GEMM_ENV)
    monkeypatch.setenv(cu.PERSISTENT_ENV, "0")
    assert shape(cu.plan("rnn_tanh", 256, 64)) == (1, False, False)


@pytest.mark.parametrize("nt, S, hs, nq, kfast, Bp", [
    (32, 1, 5, 9, False, 36),    # rounds wrap past a unit boundary (32 % 5 != 0)
    (32, 1, 3, 40, False, 160),
    (64, 4, 6, 3, True, 3),      # S > 1: slices, k-fastest tiles
    (32, 32, 1, 1, True, 1),
    (32, 8, 2, 2, True, 9)])
def test_thread_geometry_matches_divmod(cu, nt, S, hs, nq, kfast, Bp):
    # the kernels compute each thread's tiles and staging walk once per launch and step
    # them by additions; every round must land on divmod's tile (p = round*ntp + tp)
    from fastrnn.backends import cuda_recurrence as rec
    rounds = -(-hs * nq // (nt // S)) + 1

    @cuda.jit
    def walk(out, S, hs, nq, kfast, Bp, rounds):
        t = cuda.threadIdx.x
        geo = rec.thread_geometry(S, hs, nq, kfast, Bp)
        out[t, 0, 0], out[t, 0, 1], out[t, 0, 2] = geo.sl, geo.r0, geo.cc0
        out[t, 0, 3], out[t, 0, 4] = geo.dr, geo.dc
        maj, mnr = geo.maj, geo.mnr
        for r in range(rounds):
            u, bq, j, active = rec.tile_at(maj, mnr, 100, hs, nq, 100 + hs, kfast)
            out[t, r + 1, 0], out[t, r + 1, 1], out[t, r + 1, 2] = u, bq, j
            out[t, r + 1, 3] = active
            maj, mnr = rec.next_tile(maj, mnr, geo)

    out = np.zeros((nt, rounds + 1, 5), np.int64)
    walk[1, nt](out, S, hs, nq, kfast, Bp, rounds)
    seen = set()
    for t in range(nt):
        tp, ntp = t // S, nt // S
        assert list(out[t, 0]) == [t % S, t // Bp, t % Bp, nt // Bp, nt % Bp]
        for r in range(rounds):
            p = r * ntp + tp
            u, bq = divmod(p, nq) if kfast else divmod(p, hs)[::-1]
            active = u < hs and bq < nq
            assert list(out[t, r + 1, :4]) == [u, bq, 100 + u, active], (t, r)
            if active:
                seen.add((u, bq))
    assert seen == {(u, bq) for u in range(hs) for bq in range(nq)}


@pytest.mark.filterwarnings("ignore:overflow encountered")   # the simulator's uint32 adds wrap
@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_flag_grid_sync(cu, cell, monkeypatch):
    # FASTRNN_CUDA_GRID_SYNC=flag: the persistent kernels synchronise on flag_sync's
    # counter, whose top bit flips once per barrier (T forward + T + 1 BPTT phases).
    # The simulator runs one block, so this checks the kernels and the counter, not
    # blocks racing (benchmarks/gpu_check.py checks that on a GPU).
    monkeypatch.setenv(cu.GRID_SYNC_ENV, "flag")
    # the counter must start with its low 31 bits at 0 whatever device memory held
    real = cu.cuda.device_array
    monkeypatch.setattr(cu, "_grid_counters", {})
    monkeypatch.setattr(cu.cuda, "device_array",
                        lambda *a, **k: cu.cuda.to_device(np.full(a[0], 0x5A5A5A5A, np.uint32)))
    counter = cu._grid_counter()
    monkeypatch.setattr(cu.cuda, "device_array", real)
    before = int(counter.copy_to_host()[0])
    assert before & 0x7FFFFFFF == 0
    compare(cu, cell, 4, 3, 2, 5, ragged=True, reverse=True, seed=9)
    assert cu.last_path == {"forward": "persistent", "backward": "persistent"}
    after = int(counter.copy_to_host()[0])
    assert after == before ^ 0x80000000   # 4 + 5 flips, low bits back at 0
    assert "grid sync flag" in cu.describe()
    monkeypatch.setenv(cu.GRID_SYNC_ENV, "atomic")
    with pytest.raises(ValueError, match="FASTRNN_CUDA_GRID_SYNC"):
        compare(cu, cell, 2, 1, 2, 3)


def test_rounds_that_wrap_past_a_unit(cu):
    # several tiles per thread (rounds > 1) whose step wraps past the units of a batch
    # tile (32 threads, hs = 5 under the simulator's one persistent block)
    p = cu.plan("lstm", 5, 33)
    assert p["rounds"] > 1 and p["S"] == 1 and cu.THREADS % p["hs"] != 0
    compare(cu, "lstm", 2, 33, 2, 5, ragged=True, seed=8)


def test_chunked_staging(cu, monkeypatch):
    # fewer staged rows than the summed length: several chunks per step
    monkeypatch.setattr(cu, "STAGE_LIMIT", 3 * 8)
    assert cu.plan("lstm", 6, 2)["KC"] < 6
    compare(cu, "lstm", 2, 2, 2, 6, ragged=True, reverse=True)


def test_staging_in_several_load_groups(cu):
    # a thread stages STAGE_BYTES of rows at a time: BPTT's 4*23 rows x 3 sequences of
    # float64 take several groups a chunk, and 23 summed terms leave a remainder of 3
    from fastrnn.backends import cuda_recurrence as rec
    p = cu.plan("lstm", 23, 3, backward=True)
    assert p["KC"] * p["Bp"] > (rec.STAGE_BYTES // 8) * p["threads"]
    compare(cu, "lstm", 2, 3, 2, 23, ragged=True, reverse=True, seed=5)


def test_device_arrays_in_device_arrays_out(cu):
    from numba import cuda
    rng = np.random.default_rng(3)
    x, h0, c0, w, dy, dh, dc = make("lstm", 3, 2, 2, 4, np.float64, rng)
    r = ref.forward_layer("lstm", x, h0, c0, **w)
    dev = {k: cuda.to_device(v) for k, v in w.items()}
    c = cu.forward_layer("lstm", cuda.to_device(x), cuda.to_device(h0), cuda.to_device(c0), **dev)
    assert not isinstance(c[0], np.ndarray) and hasattr(c[0], "copy_to_host")
    np.testing.assert_allclose(c[0].copy_to_host(), r[0], rtol=1e-10, atol=1e-12)
    g = cu.backward_layer("lstm", c[3], cuda.to_device(dy), None, None)
    gr = ref.backward_layer("lstm", r[3], dy, None, None)
    np.testing.assert_allclose(g[4].copy_to_host(), gr[4], rtol=1e-9, atol=1e-12)


def test_interface_arrays_synchronize_only_unordered_streams(cu, monkeypatch):
    # objects with __cuda_array_interface__ (CuPy, torch) are imported without copies;
    # numba's import waits for the exported stream, which only the streams our launches
    # do not already follow need (the simulator has no such import: a stub stands in)
    from numba import cuda
    rng = np.random.default_rng(4)
    x, h0, c0, w, _, _, _ = make("lstm", 3, 2, 2, 4, np.float64, rng)
    synced = {}

    class Exported:
        def __init__(self, a, stream):
            self.a, self.__cuda_array_interface__ = a, dict(version=3, stream=stream, shape=a.shape)

    def imported(desc, owner=None, sync=True):
        synced[desc["stream"]] = sync
        return cuda.to_device(owner.a)
    monkeypatch.setattr(cu.cuda, "from_cuda_array_interface", imported, raising=False)
    for stream in (None, 1, 2, 0x7f00):
        c = cu.forward_layer("lstm", Exported(x, stream), h0, c0, **w, train=False)
        np.testing.assert_allclose(c[0].copy_to_host(), ref.forward_layer("lstm", x, h0, c0, **w)[0],
                                   rtol=1e-10, atol=1e-12)
    assert synced == {None: False, 1: False, 2: False, 0x7f00: True}   # None: no stream to wait for


@pytest.mark.parametrize("train", [False, True])
def test_state_setup_with_padding_columns(cu, train, monkeypatch):
    # B = 3 in tiles of 4: the state history and BPTT's staging buffer have a padding
    # column, which the set-up kernels zero; the h0 slot is the last one when reversed;
    # BPTT starts from zero carries when dh_T and dc_T are None
    monkeypatch.setenv(cu.BT_ENV, "4")
    rng = np.random.default_rng(8)
    x, h0, c0, w, dy, _, _ = make("lstm", 4, 3, 2, 5, np.float64, rng)
    lengths = np.array([4, 1, 3])
    r = ref.forward_layer("lstm", x, h0, c0, **w, lengths=lengths, reverse=True)
    for _ in range(2):   # the second call reuses the scratch buffers the first one left
        c = cu.forward_layer("lstm", x, h0, c0, **w, lengths=lengths, reverse=True, train=train)
        for a, b in zip(c[:3], r[:3]):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    if train:
        gc = cu.backward_layer("lstm", c[3], dy, None, None)
        gr = ref.backward_layer("lstm", r[3], dy, None, None)
        for name, a, b in zip(("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh"), gc, gr):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=name)


def test_empty_sequence_passes_state(cu):
    rng = np.random.default_rng(4)
    x, h0, c0, w, *_ = make("lstm", 0, 2, 3, 4, np.float64, rng)
    y, hT, cT, saved = cu.forward_layer("lstm", x, h0, c0, **w)
    assert y.shape == (0, 2, 4)
    np.testing.assert_array_equal(hT, h0)
    np.testing.assert_array_equal(cT, c0)


def test_bad_arguments_name_the_argument(cu):
    rng = np.random.default_rng(5)
    x, h0, c0, w, *_ = make("gru", 2, 2, 3, 4, np.float64, rng)
    with pytest.raises(ValueError, match="h0"):
        cu.forward_layer("gru", x, h0[:1], None, **w)
    with pytest.raises(TypeError, match="x"):
        cu.forward_layer("gru", [[1.0]], h0, None, **w)
    with pytest.raises(ValueError, match="lengths"):
        cu.forward_layer("gru", x, h0, None, **w, lengths=[3, 1])
    with pytest.raises(ValueError, match="saved"):
        cu.backward_layer("gru", None, None, None, None)


def test_plan_reports_fallback(cu, monkeypatch):
    assert cu.plan("lstm", 16, 4)["persistent"]
    monkeypatch.setenv(cu.PERSISTENT_ENV, "0")
    assert not cu.plan("lstm", 16, 4)["persistent"]
    assert "persistent" in cu.describe()


def test_layers_module_runs_on_cuda_backend():
    from fastrnn.layers import GRU
    rng = np.random.default_rng(6)
    m_ref = GRU(3, 4, num_layers=2, bidirectional=True, backend="reference", dtype=np.float64, seed=0)
    m_cu = GRU(3, 4, num_layers=2, bidirectional=True, backend="cuda", dtype=np.float64, seed=0)
    x = rng.standard_normal((2, 2, 3))
    (yr, hr), (yc, hc) = m_ref(x), m_cu(x)
    np.testing.assert_allclose(yc, yr, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(hc, hr, rtol=1e-10, atol=1e-12)
    g = rng.standard_normal(yr.shape)
    np.testing.assert_allclose(m_cu.backward(g)[0], m_ref.backward(g)[0], rtol=1e-9, atol=1e-12)


# a stub flat float32 device array: 6 elements at 0x7000
_STUB_ARRAY = dict(size=6, dtype=np.dtype(np.float32), is_c_contiguous=lambda: True,
                   device_ctypes_pointer=SimpleNamespace(value=0x7000))


def _stub_raw_kernel(*arg_types):
    """A cuda_launch.RawKernel over a stub compiled overload taking these numba types."""
    from fastrnn.backends.cuda_launch import RawKernel
    overload = SimpleNamespace(argument_types=list(arg_types), cooperative=False)
    return RawKernel(SimpleNamespace(overloads={0: overload}, py_func=_stub_raw_kernel))


def test_raw_launch_parameters():
    # the driver-launch path packs arguments in numba's flattened kernel ABI: 7 slots per
    # flat array (meminfo, parent, nitems, itemsize, data, shape, stride), one per scalar
    from numba import types
    rk = _stub_raw_kernel(types.Array(types.float32, 1, "C"), types.int64, types.boolean,
                          types.float32, types.float64)
    fields = _STUB_ARRAY
    arr = SimpleNamespace(**fields)
    vals = rk.values((arr, -3, True, 1.5, -2.0))
    assert vals == [0, 0, 6, 4, 0x7000, 6, 4, -3, 1,
                    int(np.float32(1.5).view(np.int32)), int(np.float64(-2.0).view(np.int64))]
    assert rk._vals.size == len(vals)
    assert rk.values((arr, 7, False, 1.5, -2.0))[:9] == vals[:7] + [7, 0]   # kept on the array
    rk._pack(rk._vals, 0, *vals)
    assert list(rk._vals) == vals
    bad = SimpleNamespace(**dict(fields, is_c_contiguous=lambda: False))
    with pytest.raises(ValueError, match="C-contiguous"):
        rk.values((bad, 0, False, 0.0, 0.0))


def test_prepared_launch_parameters(monkeypatch):
    # a prepared launch (the per-step loops) hands the driver an array of pointers into
    # one parameter buffer: pointer i at slot i, the varying slots rewritten at each call
    import ctypes
    from numba import types
    drv = pytest.importorskip("cuda.bindings.driver")
    rk = _stub_raw_kernel(types.Array(types.float32, 1, "C"), types.int64, types.int64)
    monkeypatch.setattr(rk, "_state", lambda: dict(fn="fn", kernel=None, shared=1 << 30, most={}))
    launches = []
    monkeypatch.setattr(drv, "cuLaunchKernel", lambda *a: launches.append(a) or (0,))
    call = rk.prepared((3, 2), 64, (SimpleNamespace(**_STUB_ARRAY), 5, 9), 0, (1,))

    def params(addr):
        ptrs = (ctypes.c_uint64 * 9).from_address(addr)
        return [ctypes.c_int64.from_address(p).value for p in ptrs]
    for s in (11, 12):
        call(s)
        fn, gx, gy, gz, bx, by, bz, shared, stream, addr, extra = launches[-1]
        assert (fn, gx, gy, bx, shared) == ("fn", 3, 2, 64, 0)
        assert params(addr) == [0, 0, 6, 4, 0x7000, 6, 4, s, 9]


@cuda.jit
def _record_switch_interval(out):
    if cuda.threadIdx.x == 0:
        import sys   # a simulated kernel is Python: it can read the interpreter's setting
        out[0] = sys.getswitchinterval()


def test_simulated_launch_switch_interval_restored():
    # simulated launches run with a short GIL switch interval (their speed), and the
    # caller's setting comes back afterwards, also when the kernel raises
    import sys
    from fastrnn.backends import cuda_launch, cuda_sim
    if not cuda_launch.SIMULATOR:
        pytest.skip("the switch interval is set for simulated launches only")
    saved = sys.getswitchinterval()
    sys.setswitchinterval(0.01)
    try:
        out = cuda.to_device(np.zeros(1))
        cuda_launch.launch(_record_switch_interval, 1, 2, (out,))
        assert out.copy_to_host()[0] == pytest.approx(cuda_sim.SWITCH_INTERVAL)
        assert sys.getswitchinterval() == pytest.approx(0.01)
        with pytest.raises(Exception):
            cuda_launch.launch(_record_switch_interval, 1, 2, (None,))
        assert sys.getswitchinterval() == pytest.approx(0.01)
    finally:
        sys.setswitchinterval(saved)


@cuda.jit
def _sum_of_a_shared_array(out, base):
    # each block's values differ (a stale array from an earlier block cannot pass)
    a = cuda.shared.array(16, np.int64)
    t, b = cuda.threadIdx.x, cuda.blockIdx.x
    a[t] = base * (b + 1) + t
    cuda.syncthreads()
    s = 0
    for i in range(16):
        s += a[i]
    out[b * 16 + t] = s


def test_simulated_static_shared_array_is_one_array_a_block(monkeypatch):
    # the simulator allocates a static shared array when the first thread reaches it; a
    # thread switch inside that allocation gave threads different arrays (cuda_sim.py).
    # Here the allocation sleeps, so every thread switches there: all must still share one.
    import time
    from fastrnn.backends import cuda_launch, cuda_sim
    if not cuda_launch.SIMULATOR:
        pytest.skip("a simulator fix")

    def slow_empty(shape, dtype):
        time.sleep(1e-3)
        return np.empty(shape, dtype)
    monkeypatch.setattr(cuda_sim, "np", SimpleNamespace(empty=slow_empty))
    out = cuda.to_device(np.zeros(3 * 16, np.int64))
    cuda_launch.launch(_sum_of_a_shared_array, 3, 16, (out, 1000))
    expected = [16 * 1000 * (b + 1) + sum(range(16)) for b in range(3) for _ in range(16)]
    assert list(out.copy_to_host()) == expected


def test_pooled_buffer_taken_again_holds_data():
    # the pool's bookkeeping is tested on the CPU (test_cuda_memory.py); on a GPU, a
    # buffer taken again is real device memory, and release() hands the free ones back
    from fastrnn.backends import cuda_memory
    if cuda_memory.SIMULATOR:
        pytest.skip("the pool serves real GPUs (the simulator uses numba's arrays)")
    ptr = lambda a: a.device_ctypes_pointer.value
    a = cuda_memory.device_array((37, 5), np.float32)
    first = ptr(a)
    del a
    c = cuda_memory.device_array(37 * 5, np.float32)
    assert ptr(c) == first
    c.copy_to_device(np.arange(37 * 5, dtype=np.float32))
    np.testing.assert_array_equal(c.copy_to_host(), np.arange(37 * 5, dtype=np.float32))
    del c
    assert cuda_memory.pooled_bytes() >= 1024
    cuda_memory.release()
    assert cuda_memory.pooled_bytes() == 0


class _HostArray:
    """A host array posing as a device one (for the cuBLAS stand-in)."""

    def __init__(self, a):
        import ctypes
        self.a, self.dtype = a, a.dtype
        self.device_ctypes_pointer = ctypes.c_void_p(a.ctypes.data)


@pytest.fixture
def host_cublas(monkeypatch):
    """cuda_blas with a host stand-in for cuBLAS's sgemm, which reads column-major operands
    at the pointers: the calls' operations, leading dimensions and offsets are checked
    without a GPU. Yields cuda_blas; wrap arrays in _HostArray."""
    import ctypes
    import sys
    import types
    from fastrnn.backends import cuda_blas as blas

    def col_major(ptr, rows, cols, ld):
        n = ld * (cols - 1) + rows
        flat = np.ctypeslib.as_array((ctypes.c_float * n).from_address(ptr))
        return np.lib.stride_tricks.as_strided(flat, (rows, cols), (4, 4 * ld))

    def sgemm(handle, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc):
        assert lda >= (k if ta else m) and ldb >= (n if tb else k) and ldc >= m   # cuBLAS's rules
        a = col_major(A, k, m, lda).T if ta else col_major(A, m, k, lda)
        b = col_major(B, n, k, ldb).T if tb else col_major(B, k, n, ldb)
        col_major(C, m, n, ldc)[:] = a @ b

    cublas = types.SimpleNamespace(sgemm=sgemm, setStream=lambda handle, stream: None)
    monkeypatch.setitem(sys.modules, "cupy_backends.cuda.libs",
                        types.SimpleNamespace(cublas=cublas))
    monkeypatch.setitem(sys.modules, "cupy_backends.cuda.libs.cublas", cublas)
    monkeypatch.setattr(blas, "_cp", types.SimpleNamespace(cuda=types.SimpleNamespace(
        device=types.SimpleNamespace(get_cublas_handle=lambda: 1))))
    return blas


def test_cublas_step_products_layout(host_cublas):
    # The step-gemm path's cuBLAS calls
    blas, Host = host_cublas, _HostArray
    rng = np.random.default_rng(10)
    B, H, G, Bp = 3, 5, 4, 4
    GH = G * H
    w = rng.standard_normal((GH, H)).astype(np.float32)
    hbuf = rng.standard_normal(2 * H * Bp).astype(np.float32)     # slots of (H, Bp)
    pre = np.zeros(B * GH, np.float32)
    blas.step_forward(Host(hbuf), Host(w), Host(pre), B, H, GH, Bp)(H * Bp)
    h = hbuf[H * Bp:].reshape(H, Bp)[:, :B].T
    np.testing.assert_allclose(pre.reshape(B, GH), h @ w.T, rtol=1e-5, atol=1e-6)
    dgh = rng.standard_normal(2 * B * GH).astype(np.float32)      # (T, B, GH)
    pre = np.zeros(B * H, np.float32)
    blas.step_backward(Host(dgh), Host(w), Host(pre), B, H, GH)(B * GH)
    np.testing.assert_allclose(pre.reshape(B, H), dgh[B * GH:].reshape(B, GH) @ w,
                               rtol=1e-5, atol=1e-6)


def test_cublas_projection_layout(host_cublas):
    # the input projection, cuBLAS called directly: xp (T*B, G*H) = x (T*B, I) @ W_ih^T
    rng = np.random.default_rng(11)
    TB, GH, I = 6, 12, 5
    x = rng.standard_normal((TB, I)).astype(np.float32)
    w = rng.standard_normal((GH, I)).astype(np.float32)
    out = np.zeros(TB * GH, np.float32)
    host_cublas.projection(_HostArray(x), _HostArray(w), None, _HostArray(out), TB, GH, I)
    np.testing.assert_allclose(out.reshape(TB, GH), x @ w.T, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rev", [0, 1])
def test_cublas_weight_gradients_layout(host_cublas, monkeypatch, rev):
    # BPTT's weight-gradient products, cuBLAS called directly: dW_ih = dgi^T x,
    # dW_hh = dgh^T h_in (h_in(t) = hbuf slot t + rev, stored (H, Bp)), the bias
    # gradients as products with ones, dx = dgi W_ih
    from fastrnn.backends import cuda as cu
    rng = np.random.default_rng(13)
    T, B, I, H, G, Bp = 3, 2, 4, 5, 3, 4
    GH, TB = G * H, T * B
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)
    dgi, dgh, x, w_ih = f32(TB, GH), f32(TB, GH), f32(TB, I), f32(GH, I)
    hbuf = f32((T + 1) * H * Bp)
    out = {k: np.zeros(n, np.float32) for k, n in (("dw_ih", GH * I), ("dw_hh", GH * H),
                                                   ("db_ih", GH), ("db_hh", GH), ("dx", TB * I))}
    bufs = {}

    def scratch(key, n, dt, value=None):
        bufs[key] = np.full(n, 0 if value is None else value, dt)
        return _HostArray(bufs[key])

    def states_by_row(hb, o, T_, B_, H_, Bp_, first):   # the gather kernel, on the host
        slots = hb.a.reshape(-1, H_, Bp_)[first:first + T_, :, :B_]
        o.a[:] = slots.transpose(0, 2, 1).reshape(-1)
    monkeypatch.setattr(cu, "_scratch", scratch)
    monkeypatch.setattr(host_cublas.dense, "states_by_row", states_by_row)
    H_ = lambda a: _HostArray(a)
    host_cublas.gradients(H_(dgi), H_(dgh), H_(x), H_(hbuf), H_(w_ih), *(H_(out[k]) for k in
                          ("dw_ih", "dw_hh", "db_ih", "db_hh", "dx")), T, B, I, H, GH, Bp, rev)
    h_in = hbuf.reshape(T + 1, H, Bp)[rev:rev + T, :, :B].transpose(0, 2, 1).reshape(TB, H)
    want = dict(dw_ih=dgi.T @ x, dw_hh=dgh.T @ h_in, db_ih=dgi.sum(0), db_hh=dgh.sum(0), dx=dgi @ w_ih)
    for k, v in want.items():
        np.testing.assert_allclose(out[k].reshape(v.shape), v, rtol=1e-5, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("two_level", [False, True])
def test_numba_matmul_across_tiles(two_level):
    # cuda_dense.matmul (the product without CuPy) against numpy: M and N past one tile with
    # partial edge tiles, K past one stage and not a multiple of it, a transposed operand,
    # the two-level summed index (k = k1 * K2 + k2) of the weight gradients, bias, and
    # accumulation into an offset output
    from fastrnn.backends import cuda_dense as dense
    rng = np.random.default_rng(21)
    M, N = dense.TILE + 3, 2 * dense.TILE + 5
    K1, K2 = (3, 7) if two_level else (1, dense.BK + 5)
    K = K1 * K2
    a = rng.standard_normal((K1, M, K2))           # a(m, k) = a[k1, m, k2]
    b = rng.standard_normal((N, K))                # b(k, n) = b[n, k]: read transposed
    bias = rng.standard_normal(N)
    c0 = rng.standard_normal(5 + M * N)
    c = cuda.to_device(c0)
    A = dense.Operand(cuda.to_device(a.ravel()), 0, K2, M * K2, 1, K2)
    Bop = dense.Operand(cuda.to_device(b.ravel()), 0, K, K2, 1, K2)
    dense.matmul(A, Bop, c, 5, N, 1, M, N, K, bias=cuda.to_device(bias), accumulate=True)
    a_mk = a.transpose(1, 0, 2).reshape(M, K)
    want = c0.copy()
    want[5:] += (a_mk @ b.T + bias).ravel()
    np.testing.assert_allclose(c.copy_to_host(), want, rtol=1e-12, atol=1e-12)


def test_scratch_buffer_with_a_value():
    # a read-only scratch buffer (the cuBLAS bias gradients' ones) is set when it is made,
    # and again when a larger one replaces it
    from fastrnn.backends import cuda as cu
    small = cu._scratch("ones-test", 3, np.float32, value=1)
    np.testing.assert_array_equal(small.copy_to_host(), np.ones(3, np.float32))
    big = cu._scratch("ones-test", 7, np.float32, value=1)
    np.testing.assert_array_equal(big.copy_to_host(), np.ones(7, np.float32))
    assert cu._scratch("ones-test", 5, np.float32, value=1).copy_to_host().tolist() == [1.0] * 5


def test_states_by_row_kernel():
    # the gather behind the cuBLAS weight gradients: hbuf slots (H, Bp) -> (T*B, H) rows
    from numba import cuda as nb_cuda
    from fastrnn.backends import cuda_dense as dense
    T, B, H, Bp, first = 3, 2, 5, 4, 1
    hbuf = np.arange((T + 1) * H * Bp, dtype=np.float32)
    out = nb_cuda.device_array(T * B * H, np.float32)
    dense.states_by_row(nb_cuda.to_device(hbuf), out, T, B, H, Bp, first)
    want = hbuf.reshape(T + 1, H, Bp)[first:first + T, :, :B].transpose(0, 2, 1).reshape(-1)
    np.testing.assert_array_equal(out.copy_to_host(), want)


@pytest.mark.parametrize("a_t", [False, True])
@pytest.mark.parametrize("b_t", [False, True])
def test_gemm_layouts(host_cublas, a_t, b_t):
    """The general row-major product (the projected LSTM's), in cuBLAS and in the Numba
    kernel: op(A) op(B) at element offsets of A and C."""
    from fastrnn.backends import cuda_dense as dense
    rng = np.random.default_rng(12)
    M, N, K, aoff, coff = 3, 5, 7, 4, 6
    a = rng.standard_normal(aoff + M * K).astype(np.float32)
    b = rng.standard_normal(K * N).astype(np.float32)
    A = a[aoff:].reshape((K, M) if a_t else (M, K))
    Bm = b.reshape((N, K) if b_t else (K, N))
    want = (A.T if a_t else A) @ (Bm.T if b_t else Bm)
    c = np.zeros(coff + M * N, np.float32)
    host_cublas.gemm(_HostArray(a), _HostArray(b), _HostArray(c), M, N, K, a_t=a_t, b_t=b_t)(aoff, coff)
    np.testing.assert_allclose(c[coff:].reshape(M, N), want, rtol=1e-5, atol=1e-6)
    assert not c[:coff].any()
    if "cuda" in backends.available():
        from numba import cuda as nb_cuda
        dc = nb_cuda.to_device(np.zeros(coff + M * N, np.float32))
        dense.gemm(nb_cuda.to_device(a), nb_cuda.to_device(b), dc, M, N, K, a_t=a_t, b_t=b_t)(aoff, coff)
        np.testing.assert_allclose(dc.copy_to_host()[coff:].reshape(M, N), want, rtol=1e-5, atol=1e-6)

"""The cpu backend (C/OpenMP kernels) against the reference backend."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastrnn
from fastrnn import backends
from fastrnn.cells import get_cell
from fastrnn.lookup import Lookup
from helpers import CELLS, compare_layer, layer_inputs, make_module, random_lengths, rel_err

# every test on the kernels as chosen by size and on the packed ones only (conftest.py)
pytestmark = [pytest.mark.skipif("cpu" not in backends.available(),
                                 reason=f"cpu backend unavailable: {backends.why_unavailable('cpu')}"),
              pytest.mark.usefixtures("both_cpu_paths")]
TOL = {np.float32: (1e-5, 1e-4), np.float64: (1e-10, 1e-10)}
# odd sizes on purpose: H not a multiple of the vector width or the thread split
SHAPES = [(7, 5, 6, 37), (3, 1, 4, 130), (9, 4, 1, 16), (1, 3, 5, 9)]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("ragged", [False, True])
def test_layer_matches_reference(cell, dtype, reverse, ragged):
    cpu = backends.get("cpu")
    for k, (T, B, I, H) in enumerate(SHAPES):
        out_err, grad_err = compare_layer(cpu, cell, T, B, I, H, dtype, reverse, ragged,
                                          seed=[k, CELLS.index(cell), reverse, ragged])
        assert out_err <= TOL[dtype][0], (T, B, I, H, out_err)
        assert grad_err <= TOL[dtype][1], (T, B, I, H, grad_err)


# the kernels take I, H >= 1: the backend runs I = 0 as one zero feature and H = 0 itself
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("T,B,I,H", [(0, 3, 4, 5), (4, 0, 4, 5), (4, 3, 0, 5), (4, 3, 4, 0), (4, 3, 0, 0)])
def test_zero_sized_dimensions_match_reference(cell, T, B, I, H):
    out_err, grad_err = compare_layer(backends.get("cpu"), cell, T, B, I, H, np.float32, reverse=True,
                                      ragged=T > 0 and B > 0, seed=[T, B, I, H])
    assert out_err <= 1e-5 and grad_err <= 1e-4


@pytest.mark.parametrize("H", [0, 6])
def test_no_input_features_with_lookup_and_grads_out(H):
    cpu = backends.get("cpu")
    rng = np.random.default_rng(H)
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = layer_inputs(rng, "lstm", 5, 2, 0, H, np.float32)
    ids = rng.integers(0, 3, size=(5, 2))
    y, h, c, saved = cpu.forward_layer("lstm", Lookup(np.zeros((3, 0), np.float32), ids), h0, c0,
                                       w_ih, w_hh, b_ih, b_hh)
    y_r, h_r, _, _ = backends.get("reference").forward_layer("lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    assert rel_err(y, y_r) <= 1e-5 and rel_err(h, h_r) <= 1e-5
    out = tuple(np.ones(a.shape, np.float32) for a in (w_ih, w_hh, b_ih, b_hh))
    grads = cpu.backward_layer("lstm", saved, np.ones_like(y), None, None, grads_out=out)
    assert grads[0].shape == (3, 0)   # the table's gradient
    assert all(g is o for g, o in zip(grads[3:], out))
    assert grads[3].shape == (4 * H, 0) and (H == 0 or np.abs(grads[4] - 1).max() > 0)
    assert saved == {"consumed": True}


# LSTM and GRU at B >= 4, and LSTM at any B when its gate rows are a multiple of 4 KB apart
# (H = 256 float, 128 double): the kernels split the weight gradients by rows and compute
# them transposed (weight_grad in csrc/gemm_tile.inc); GRU's n rows of dW_hh come from
# their own gradients, and on 2 threads one thread's rows span both kinds. B = 2: LSTM
# by rows, GRU by units.
# (3 threads: the shared packing of h^T and x^T splits its micro-panels unevenly, one
# thread's share spanning both)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype,H", [(np.float32, 256), (np.float64, 128)])
@pytest.mark.parametrize("reverse,ragged", [(False, False), (True, True)])
@pytest.mark.parametrize("threads", [2, 3])
def test_weight_gradients_by_rows_match_reference(cell, dtype, H, reverse, ragged, threads, num_threads):
    cpu = backends.get("cpu")
    num_threads(threads)
    for k, (T, B, I) in enumerate([(3, 2, 40), (2, 5, H)]):
        out_err, grad_err = compare_layer(cpu, cell, T, B, I, H, dtype, reverse, ragged,
                                          seed=[k, H, reverse])
        assert out_err <= TOL[dtype][0], (T, B, I, H, out_err)
        assert grad_err <= TOL[dtype][1], (T, B, I, H, grad_err)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [2, 3])
def test_recurrence_split_by_batch_matches_reference(cell, dtype, threads, num_threads):
    """Enough batch rows per thread: each thread runs all units of its rows (no barrier
    per step; rows split unevenly, unit slices of unequal width), and the weight and bias
    gradients gather every thread's rows (from 4 rows a thread; 3 where the micro-kernel
    has 3). Fewer rows: split by units, same numbers; inference forwards as well."""
    from fastrnn.backends import reference
    cpu = backends.get("cpu")
    num_threads(threads)
    for k, (T, B, I, H) in enumerate([(6, 19, 5, 37), (4, 4 * threads, 5, 37), (4, 2 * threads - 1, 5, 37)]):
        assert cpu.splits_by_batch(cell, B, H, dtype) == (k < 2)
        for reverse, ragged in ((False, False), (True, True), (False, True)):
            seed = [k, threads, reverse, ragged]
            out_err, grad_err = compare_layer(cpu, cell, T, B, I, H, dtype, reverse, ragged, seed=seed)
            assert out_err <= TOL[dtype][0], (T, B, I, H, reverse, ragged, out_err)
            assert grad_err <= TOL[dtype][1], (T, B, I, H, reverse, ragged, grad_err)
            rng = np.random.default_rng(seed)
            args = layer_inputs(rng, cell, T, B, I, H, dtype)
            lengths = random_lengths(rng, T, B) if ragged else None
            y, h, _, saved = cpu.forward_layer(cell, *args, lengths=lengths, reverse=reverse, train=False)
            y_r, h_r, _, _ = reference.forward_layer(cell, *[None if a is None else a.astype(np.float64)
                                                             for a in args], lengths=lengths, reverse=reverse)
            assert saved is None
            assert max(rel_err(y, y_r), rel_err(h, h_r)) <= TOL[dtype][0], (T, B, reverse, ragged)


def _l2_bytes():
    """L2 size as the kernels read it (sysconf; 1 MB when unknown)."""
    try:
        v = os.sysconf("SC_LEVEL2_CACHE_SIZE")
    except (ValueError, OSError):
        v = 0
    return v if v > 0 else 1 << 20


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype,threads", [(np.float64, 1), (np.float32, 2)])
def test_steps_over_slices_larger_than_l2_match_reference(cell, dtype, threads, num_threads):
    """W_hh slices over half of L2: the per-step products run their panels in reverse
    order on every other step (gemm_step in csrc/gemm_tile.inc), forward and BPTT; the
    small shapes above never do."""
    cpu = backends.get("cpu")
    num_threads(threads)
    G = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}[cell]
    H = 1024 if G == 1 else 512
    slice_bytes = G * H * H * np.dtype(dtype).itemsize // threads
    if slice_bytes <= _l2_bytes() // 2:
        pytest.skip(f"a {slice_bytes >> 10} KB slice fits in half of this L2")
    assert not cpu.splits_by_batch(cell, 3, H, dtype)
    for k, (reverse, ragged) in enumerate(((False, False), (True, True))):
        out_err, grad_err = compare_layer(cpu, cell, 5, 3, 7, H, dtype, reverse, ragged, seed=[k, threads])
        assert out_err <= TOL[dtype][0], (reverse, ragged, out_err)
        assert grad_err <= TOL[dtype][1], (reverse, ragged, grad_err)


# calls small enough for the unpacked weights (cpu._direct_pays)
SMALL_SHAPES = [(1, 1, 7, 13), (5, 3, 6, 37), (16, 1, 4, 130), (1, 32, 5, 9), (8, 4, 3, 20), (2, 4, 3, 1)]


@pytest.mark.path_choice
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reverse,ragged", [(False, False), (True, True), (False, True)])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_small_inference_reads_unpacked_weights_and_matches_reference(cell, dtype, reverse, ragged, threads,
                                                                      num_threads):
    from fastrnn.backends import cpu, reference
    num_threads(threads)
    packs = cpu.packed_cache.packs
    for k, (T, B, I, H) in enumerate(SMALL_SHAPES):
        assert cpu._direct_pays(T, B)
        rng = np.random.default_rng([k, threads, CELLS.index(cell)])
        args = layer_inputs(rng, cell, T, B, I, H, dtype)
        lengths = random_lengths(rng, T, B) if ragged else None
        y, h, c, saved = cpu.forward_layer(cell, *args, lengths=lengths, reverse=reverse, train=False)
        as64 = [None if a is None else a.astype(np.float64) for a in args]
        want = reference.forward_layer(cell, *as64, lengths=lengths, reverse=reverse, train=False)
        assert saved is None
        for a, b in zip((y, h, c), want):
            assert (a is None) == (b is None)
            if b is not None:
                assert a.dtype == dtype and rel_err(a, b) <= TOL[dtype][0], (T, B, I, H)
    assert cpu.packed_cache.packs == packs   # nothing was packed


@pytest.mark.path_choice
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 3])
def test_small_training_reads_unpacked_weights_and_matches_reference(cell, dtype, threads, num_threads):
    """Training calls as small as the inference above: the forward reads the weights as
    they are and writes the packed forward's workspace; BPTT packs its threads' W_hh
    slices itself. Nothing goes through the packed-weights cache."""
    from fastrnn.backends import cpu
    num_threads(threads)
    packs = cpu.packed_cache.packs
    for k, (T, B, I, H) in enumerate(SMALL_SHAPES):
        for reverse, ragged in ((False, False), (True, True)):
            out_err, grad_err = compare_layer(cpu, cell, T, B, I, H, dtype, reverse, ragged,
                                              seed=[k, threads, CELLS.index(cell)])
            assert out_err <= TOL[dtype][0] and grad_err <= TOL[dtype][1], (T, B, I, H, reverse)
    assert cpu.packed_cache.packs == packs


@pytest.mark.path_choice
def test_inference_paths_agree_and_are_chosen_by_size(num_threads, monkeypatch):
    """The unpacked kernel for small calls and the packed one otherwise (and, in a
    frozen_weights block, from B = 5 or T = 2) give the same numbers; edits are seen by both."""
    from fastrnn.backends import cpu
    # up to 32 rows over up to 8 steps, 16 rows over more
    for T, B, small in [(1, 32, True), (1, 33, False), (8, 4, True), (9, 3, False), (16, 1, True),
                        (17, 1, False), (0, 100, True)]:
        assert cpu._direct_pays(T, B) == small, (T, B)
    num_threads(2)
    rng = np.random.default_rng(9)
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = layer_inputs(rng, "lstm", 4, 8, 6, 40, np.float64)
    cpu.packed_cache.clear()
    run = lambda T, B: cpu.forward_layer("lstm", x[:T, :B], h0[:B], c0[:B], w_ih, w_hh, b_ih, b_hh,
                                         lengths=[T, 1][:B] * (B // 2) if B > 1 else None, train=False)
    packs = cpu.packed_cache.packs
    small = run(2, 8)                        # 16 rows: direct
    assert cpu.packed_cache.packs == packs
    monkeypatch.setattr(cpu, "DIRECT_MAX_ROWS", 0)
    for a, b in zip(run(2, 8), small):       # the same call on the packed panels
        assert b is None or rel_err(a, b) < 1e-12
    assert cpu.packed_cache.packs == packs + 1
    monkeypatch.undo()
    w_hh[5, 3] += 0.5                        # an edit: the direct kernel reads it as it is
    edited = run(2, 8)
    assert rel_err(edited[0], small[0]) > 1e-6
    monkeypatch.setattr(cpu, "DIRECT_MAX_ROWS", 0)
    assert rel_err(run(2, 8)[0], edited[0]) < 1e-12
    monkeypatch.undo()
    from fastrnn.backends import packed_weights
    with fastrnn.frozen_weights():
        run(1, 4)                            # T = 1, B <= 4: direct
        assert not packed_weights._frozen.verified
        run(2, 1)                            # T > 1: the packed panels, compared once in the block
        run(1, 8)                            # B > 4: those too
        assert len(packed_weights._frozen.verified) == 1


ISA_SCRIPT = """
import numpy as np, sys
sys.path.insert(0, {tests!r})
from helpers import CELLS, compare_layer, layer_inputs
from fastrnn.backends import cpu, reference
assert cpu.isa() == {isa!r}, cpu.isa()
for cell in CELLS:
    for dtype in (np.float32, np.float64):
        o, g = compare_layer(cpu, cell, 6, 5, 7, 41, dtype, True, True, seed=1)
        lim = 1e-4 if dtype == np.float32 else 1e-10
        assert o <= lim and g <= lim, (cell, dtype, o, g)
        # inference small enough for the unpacked kernel (csrc/direct.inc); the vector
        # counts leave each tile width's remainder (1, 2, 3 of a group)
        for T, B, lengths in ((3, 5, [3, 1, 0, 2, 3]), (1, 1, None), (1, 32, None), (8, 4, None), (2, 7, None)):
            args = layer_inputs(np.random.default_rng([2, T, B]), cell, T, B, 7, 41, dtype)
            assert cpu._direct_pays(T, B)
            y = cpu.forward_layer(cell, *args, lengths=lengths, reverse=True, train=False)[0]
            y_r = reference.forward_layer(cell, *args, lengths=lengths, reverse=True, train=False)[0]
            assert np.abs(y - y_r).max() <= lim, (cell, dtype, "direct", T, B)
print("ok")
"""


@pytest.mark.parametrize("isa", ["avx2", "generic"])
def test_other_instruction_sets_match_reference(isa):
    """The kernels dispatch at run time; FASTRNN_ISA forces a lower path so every copy is tested."""
    from fastrnn.backends import cpu
    order = ["generic", "avx2", "avx512"]
    if order.index(cpu.isa()) < order.index(isa):
        pytest.skip(f"this CPU has no {isa}")
    env = dict(os.environ, FASTRNN_ISA=isa)
    code = ISA_SCRIPT.format(tests=os.path.dirname(__file__), isa=isa)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@pytest.mark.parametrize("cell", CELLS)
def test_model_api_matches_reference(cell):
    """Two bidirectional layers with dropout and ragged lengths: same outputs and grads."""
    rng = np.random.default_rng(5)
    mods = [make_module(cell, 6, 19, num_layers=2, bidirectional=True, dropout=0.3,
                        batch_first=True, backend=b, dtype=np.float64, seed=3)
            for b in ("cpu", "reference")]
    x = rng.standard_normal((4, 8, 6))
    lengths = random_lengths(rng, 8, 4)
    res = []
    for m in mods:
        out, hn = m(x, lengths=lengths)
        gx, ghx = m.backward(np.ones_like(out))
        res.append((out, gx, dict(m.grads)))
    (o1, g1, p1), (o2, g2, p2) = res
    assert rel_err(o1, o2) < 1e-10 and rel_err(g1, g2) < 1e-10
    for k in p1:
        assert rel_err(p1[k], p2[k]) < 1e-10, k


def test_thread_counts_give_the_same_result(num_threads):
    """More threads than units, and any split of the units, compute the same numbers."""
    cpu = backends.get("cpu")
    rng = np.random.default_rng(0)
    args = layer_inputs(rng, "gru", 5, 3, 4, 20, np.float32)
    dy = rng.standard_normal((5, 3, 20)).astype(np.float32)
    results = []
    for n in (1, 2, 3, 7):
        num_threads(n)
        y, h, _, s = cpu.forward_layer("gru", *args)
        results.append((y, h) + cpu.backward_layer("gru", s, dy, None, None)[3:5])
    for r in results[1:]:
        for a, b in zip(r, results[0]):
            assert rel_err(a, b) < 1e-6


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs os.sched_getaffinity (Linux)")
def test_default_threads_under_omp_proc_bind():
    """With OMP_PROC_BIND set, the OpenMP runtime pins the main thread to one CPU as the
    extension loads; the default thread count is still every CPU the process may use."""
    code = ("import os; n = len(os.sched_getaffinity(0)); import fastrnn; "
            "from fastrnn.backends import cpu; print(n, fastrnn.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(OMP_PROC_BIND="true")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == out[1], out


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs os.sched_getaffinity (Linux)")
def test_default_threads_ignore_torch_set_num_threads():
    """torch shares the OpenMP runtime: torch.set_num_threads(1) before fastrnn's first
    call used to make fastrnn's default one thread, and after it not."""
    pytest.importorskip("torch")
    code = ("import os; n = len(os.sched_getaffinity(0)); import torch; torch.set_num_threads(1); "
            "import fastrnn; print(n, fastrnn.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == out[1], out


def test_thread_counts_past_the_cap_are_refused_or_clamped(num_threads):
    """GNU OpenMP asked for 100,000 threads crashed the interpreter (SIGSEGV in
    GOMP_parallel, packing an LSTM's weights): set_num_threads refuses counts past
    max_threads() naming n, and OMP_NUM_THREADS past it is clamped with a warning."""
    from fastrnn.threads import max_threads
    cap = max_threads()
    assert cap >= 64
    with pytest.raises(ValueError, match=f"n: expected at most {cap} threads .* got 100000"):
        num_threads(100000)
    num_threads(cap)   # the cap itself is allowed
    assert fastrnn.get_num_threads() == cap
    code = ("import warnings, numpy as np, fastrnn; from fastrnn.threads import max_threads\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always'); n = fastrnn.get_num_threads()\n"
            "m = fastrnn.LSTM(256, 256, backend='cpu'); x = np.ones((16, 32, 256), np.float32)\n"
            "y = m(x)[0]; r = fastrnn.LSTM(256, 256, backend='reference'); r.load_state_dict(m.state_dict())\n"
            "print(n == max_threads(), str(w[0].message), float(abs(y - r(x)[0]).max()))")
    env = dict(os.environ, OMP_NUM_THREADS="100000")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    ok, rest = r.stdout.split(" ", 1)
    assert ok == "True" and f"OMP_NUM_THREADS=100000 is more than fastrnn's {cap}" in rest
    assert float(rest.rsplit(" ", 1)[1]) < 1e-5


def _gru_forward_sum(seed=0):
    """A small GRU forward on the cpu backend (module level: a forked worker runs it)."""
    rng = np.random.default_rng(seed)
    y = backends.get("cpu").forward_layer("gru", *layer_inputs(rng, "gru", 6, 5, 4, 40, np.float32))[0]
    return float(y.sum())


def _in_forked_child():
    """A forked worker: its thread count, a forward, and what set_num_threads(2) says."""
    try:
        fastrnn.set_num_threads(2)
        refused = ""
    except RuntimeError as e:
        refused = str(e)
    return fastrnn.get_num_threads(), _gru_forward_sum(), refused


@pytest.mark.skipif(not hasattr(os, "register_at_fork"), reason="needs fork (POSIX)")
def test_forked_child_runs_the_kernels_on_one_thread(num_threads):
    """GNU OpenMP keeps a stale thread pool in a forked child: a parallel region there
    waited forever. A child forked after threads started runs on one thread instead."""
    import multiprocessing
    num_threads(2)
    expected = _gru_forward_sum()    # starts the OpenMP threads here
    with multiprocessing.get_context("fork").Pool(1) as pool:
        threads, got, refused = pool.apply_async(_in_forked_child).get(timeout=120)
    assert threads == 1 and got == expected
    assert "forked after OpenMP threads had started" in refused and "'spawn'" in refused


@pytest.mark.skipif(not hasattr(os, "register_at_fork"), reason="needs fork (POSIX)")
def test_child_of_a_process_without_threads_keeps_its_thread_count():
    """Only a process whose OpenMP threads may have started makes its children one-thread."""
    code = ("import os, fastrnn, numpy as np; from fastrnn.backends import cpu\n"
            "fastrnn.set_num_threads(1)\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    fastrnn.set_num_threads(2)\n"
            "    w = np.full((4, 3), 0.1, np.float32); b = np.zeros(4, np.float32)\n"
            "    y = cpu.forward_layer('rnn_tanh', np.ones((5, 2, 3), np.float32), np.zeros((2, 4), np.float32),\n"
            "                          None, w, np.full((4, 4), 0.1, np.float32), b, b, train=False)[0]\n"
            "    os._exit(0 if fastrnn.get_num_threads() == 2 and np.isfinite(y).all() else 3)\n"
            "_, status = os.waitpid(pid, 0)\n"
            "print(os.waitstatus_to_exitcode(status))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.split() == ["0"], (out.stdout, out.stderr)


def test_weights_are_packed_once_per_version(num_threads):
    """Repeated calls reuse the packed weights; any in-place change (an optimizer step or an
    edit by hand) is seen at the next call, and backward follows the live weights too."""
    from fastrnn.backends import cpu, reference
    rng = np.random.default_rng(5)
    # 36 (step, sequence) rows: above what reads the weights unpacked (DIRECT_MAX_ROWS)
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = layer_inputs(rng, "lstm", 6, 6, 5, 33, np.float64)
    dy = rng.standard_normal((6, 6, 33))
    cpu.packed_cache.clear()
    packs = cpu.packed_cache.packs

    def both(backward=True):
        out = []
        for be in (cpu, reference):
            y, h, c, s = be.forward_layer("lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh)
            out.append((y, h, c) + (be.backward_layer("lstm", s, dy, None, None) if backward else ()))
        return out

    first = both()
    again = both()
    assert cpu.packed_cache.packs == packs + 1
    for a, b in zip(again[0], first[0]):
        assert a is None or np.array_equal(a, b)
    w_hh[3, 7] += 0.25          # an edit by hand to the live array
    w_ih -= 0.01 * w_ih         # an SGD-like step
    edited = both()
    assert cpu.packed_cache.packs == packs + 2
    assert rel_err(edited[0][0], first[0][0]) > 1e-6
    for a, b in zip(*edited):
        if b is not None:
            assert rel_err(a, b) < 1e-10
    # changed between forward and backward: the backward uses the weights as they are now
    y, h, c, s = cpu.forward_layer("lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    y_r, h_r, c_r, s_r = reference.forward_layer("lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    w_hh[0, 0] = -w_hh[0, 0]
    for a, b in zip(cpu.backward_layer("lstm", s, dy, None, None), reference.backward_layer("lstm", s_r, dy, None, None)):
        if b is not None:
            assert rel_err(a, b) < 1e-10
    # only W_ih changed since the forward: BPTT reads W_ih as it is (dx), so it neither
    # compares nor repacks it; the next forward does
    y, h, c, s = cpu.forward_layer("lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    y_r, h_r, c_r, s_r = reference.forward_layer("lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    w_ih[1, 2] += 0.5
    packs_now = cpu.packed_cache.packs
    for a, b in zip(cpu.backward_layer("lstm", s, dy, None, None), reference.backward_layer("lstm", s_r, dy, None, None)):
        if b is not None:
            assert rel_err(a, b) < 1e-10
    assert cpu.packed_cache.packs == packs_now
    y = cpu.forward_layer("lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh)[0]   # (train: packed)
    assert cpu.packed_cache.packs == packs_now + 1
    assert rel_err(y, reference.forward_layer("lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh)[0]) < 1e-10
    # another thread count is another packing
    num_threads(3)
    y3 = cpu.forward_layer("lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh, train=False)[0]
    y_r = reference.forward_layer("lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh, train=False)[0]
    assert rel_err(y3, y_r) < 1e-10


def test_concurrent_calls_from_python_threads():
    """8 Python threads at once (the GIL is released in the kernels) match serial calls."""
    cpu = backends.get("cpu")
    jobs = []
    for k in range(8):
        rng = np.random.default_rng(k)
        cell = CELLS[k % 4]
        args = layer_inputs(rng, cell, 12, 4, 8, 48, np.float32)
        dy = rng.standard_normal((12, 4, 48)).astype(np.float32)
        jobs.append((cell, args, dy))

    def run(cell, args, dy):
        y, h, c, s = cpu.forward_layer(cell, *args, lengths=[12, 5, 9, 1], reverse=True)
        return (y, h) + cpu.backward_layer(cell, s, dy, None, None)[:5:2]

    serial = [run(*j) for j in jobs]
    results = [None] * len(jobs)
    errors = []

    def worker(i):
        try:
            for _ in range(3):
                results[i] = run(*jobs[i])
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for got, want in zip(results, serial):
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


MEMORY_SCRIPT = """
import resource, numpy as np, sys
sys.path.insert(0, {tests!r})
from helpers import layer_inputs
from fastrnn.backends import cpu
T = int(sys.argv[1])
args = layer_inputs(np.random.default_rng(0), "lstm", T, 2, 4, 32, np.float32)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
y, h, c, saved = cpu.forward_layer("lstm", *args, train=False)
assert saved is None and np.isfinite(y).all()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
"""


def test_long_inference_memory_does_not_grow_with_T():
    """train=False over T = 100000: extra memory beyond the output does not grow with T."""
    code = MEMORY_SCRIPT.format(tests=os.path.dirname(__file__))
    extra_kb = {}
    for T in (100_000, 200_000):
        r = subprocess.run([sys.executable, "-c", code, str(T)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        extra_kb[T] = int(r.stdout)
    y_growth_kb = 100_000 * 2 * 32 * 4 / 1024  # the output y itself grows with T
    assert extra_kb[200_000] - extra_kb[100_000] <= 1.25 * y_growth_kb + 2048, extra_kb


def test_backward_consumes_saved_and_recycles_its_buffers():
    cpu = backends.get("cpu")
    rng = np.random.default_rng(1)
    args = layer_inputs(rng, "lstm", 6, 3, 4, 10, np.float32)
    dy = rng.standard_normal((6, 3, 10)).astype(np.float32)
    _, _, _, saved = cpu.forward_layer("lstm", *args)
    gates = saved["gates"]
    first = cpu.backward_layer("lstm", saved, dy, None, None)
    with pytest.raises(ValueError, match="already used"):
        cpu.backward_layer("lstm", saved, dy, None, None)
    _, _, _, saved2 = cpu.forward_layer("lstm", *args)
    assert saved2["gates"] is gates  # the released workspace is reused ...
    again = cpu.backward_layer("lstm", saved2, dy, None, None)
    for a, b in zip(first, again):  # ... and gives the same results
        if a is not None:
            np.testing.assert_array_equal(a, b)


def test_kernel_arrays_start_on_cache_lines():
    """Arrays of 4 KB and more that the kernels write or stream (outputs, the training
    workspace, backward's gradients, the packed weights) start on a 64-byte line, and the
    workspace pool takes such arrays back (not a view into one)."""
    from fastrnn.backends.pool import ArrayPool, aligned_empty
    cpu = backends.get("cpu")
    rng = np.random.default_rng(3)
    args = layer_inputs(rng, "lstm", 8, 4, 32, 64, np.float32)
    y, _, _, saved = cpu.forward_layer("lstm", *args)
    arrays = {"y": y, **{n: saved[n] for n in ("h_in", "gates", "c_in", "c_out")}}
    grads = cpu.backward_layer("lstm", saved, np.ones_like(y), None, None)
    arrays.update(dx=grads[0], dw_ih=grads[3], dw_hh=grads[4])
    arrays["packed"] = cpu.packed_cache.get(get_cell("lstm").code, args[3], args[4], fastrnn.get_num_threads())
    for name, a in arrays.items():
        assert a.nbytes >= 4096 and a.ctypes.data % 64 == 0, name
    pool = ArrayPool()
    a = aligned_empty((32, 64), np.float32)
    pool.release(a[1:])            # a view of part of it: not the pool's to reuse
    assert pool.cached_bytes == 0
    pool.release(a)
    assert pool.empty((32, 64), np.float32) is a
    assert aligned_empty((2, 3), np.float64).flags.owndata   # small: plain np.empty


# grads_out: the parameter gradients are added into the caller's arrays (a model's running
# sums) instead of returned fresh; B = 3 splits dW by units (LSTM H = 256 excepted), B = 5
# by rows (weight_grad)
@pytest.mark.parametrize("cell,H,B", [(c, 9, 3) for c in CELLS] + [("lstm", 256, 3), ("lstm", 20, 5), ("gru", 20, 5)])
def test_backward_adds_into_grads_out(cell, H, B):
    cpu = backends.get("cpu")
    rng = np.random.default_rng(H)
    T, I = 5, 7
    args = layer_inputs(rng, cell, T, B, I, H, np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    fresh = cpu.backward_layer(cell, cpu.forward_layer(cell, *args)[3], dy, None, None)
    base = [rng.standard_normal(g.shape).astype(np.float32) for g in fresh[3:]]
    out = [b.copy() for b in base]
    summed = cpu.backward_layer(cell, cpu.forward_layer(cell, *args)[3], dy, None, None, grads_out=tuple(out))
    for k in range(3):   # dx, dh0, dc0 unchanged
        if fresh[k] is not None:
            np.testing.assert_array_equal(summed[k], fresh[k])
    for got, arr, b, f in zip(summed[3:], out, base, fresh[3:]):
        assert got is arr
        np.testing.assert_allclose(arr, b + f, rtol=1e-6, atol=1e-6)


def test_backward_rejects_bad_grads_out():
    cpu = backends.get("cpu")
    rng = np.random.default_rng(0)
    args = layer_inputs(rng, "gru", 4, 2, 3, 5, np.float32)
    dy = np.zeros((4, 2, 5), np.float32)
    good = [np.zeros((15, 3), np.float32), np.zeros((15, 5), np.float32), np.zeros(15, np.float32),
            np.zeros(15, np.float32)]
    bad = {"shape": (1, np.zeros((15, 4), np.float32)), "dtype": (2, np.zeros(15, np.float64)),
           "contig": (0, np.zeros((3, 15), np.float32).T), "overlap": (3, good[2])}
    for what, (i, a) in bad.items():
        g = list(good)
        g[i] = a
        _, _, _, saved = cpu.forward_layer("gru", *args)
        with pytest.raises(ValueError, match="grads_out"):
            cpu.backward_layer("gru", saved, dy, None, None, grads_out=tuple(g))
    _, _, _, saved = cpu.forward_layer("gru", *args)
    with pytest.raises(TypeError, match="grads_out"):
        cpu.backward_layer("gru", saved, dy, None, None, grads_out=good[:3])


def test_threaded_byte_compare_and_copy_see_every_chunk():
    """The packed-weights cache's version check and snapshot split big arrays over threads:
    a change in any chunk, the last byte included, must be seen, and the copy be whole."""
    from fastrnn.backends import cpu
    rng = np.random.default_rng(2)
    a = rng.standard_normal(1_000_003).astype(np.float32)   # ~4 MB: several chunks
    b = cpu._copy(a)
    assert b is not a and np.array_equal(a.view(np.uint32), b.view(np.uint32))
    assert cpu._same_bits(a, b)
    for i in (0, a.size // 2, a.size - 1):
        c = b.copy()
        c.view(np.uint8)[4 * i + 3] ^= 1
        assert not cpu._same_bits(a, c), i


def test_module_backward_with_replaced_grads_falls_back_to_adding():
    """A module whose grads were replaced (here: one array shared by two entries) still
    accumulates correctly: it adds the backend's results itself instead of grads_out."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    dy = rng.standard_normal((5, 2, 4)).astype(np.float32)
    mods = [fastrnn.GRU(3, 4, backend=b, seed=1) for b in ("cpu", "reference")]
    for m in mods:
        shared = np.zeros(m.grads["bias_ih_l0"].shape, np.float32)
        m.grads["bias_ih_l0"] = m.grads["bias_hh_l0"] = shared
        m(x)
        m.backward(dy)
    np.testing.assert_allclose(mods[0].grads["bias_ih_l0"], mods[1].grads["bias_ih_l0"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mods[0].grads["weight_hh_l0"], mods[1].grads["weight_hh_l0"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inference_packs_only_the_forward_panels(cell, dtype, num_threads):
    """An inference call packs the forward's panels alone (a prefix of the whole packing:
    two thirds of it at I = H); a training call on the same weights then packs BPTT's too,
    and its forward and backward give the same bits as with a packing made for training."""
    from fastrnn.backends import cpu
    num_threads(2)
    rng = np.random.default_rng(12)
    T, B, I, H = 24, 3, 20, 36
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = layer_inputs(rng, cell, T, B, I, H, dtype)
    dy = rng.standard_normal((T, B, H)).astype(dtype)
    G, code = get_cell(cell).gates, get_cell(cell).code
    size, _ = cpu._native("packed_size", np.dtype(dtype))

    def train():
        y, h_T, c_T, saved = cpu.forward_layer(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh)
        return (y, h_T, c_T) + tuple(cpu.backward_layer(cell, saved, dy, None, None))

    def packed_now():
        (_, packed, full), = cpu.packed_cache._entries.values()
        return packed, full

    cpu.packed_cache.clear()
    fresh = train()
    cpu.packed_cache.clear()
    y_inf = cpu.forward_layer(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, train=False)[0]
    packed, full = packed_now()
    assert not full and packed.size == size(code, I, H, 2, 0) < size(code, I, H, 2, 1)
    assert size(code, I, H, 2, 1) - packed.size >= G * H * H   # BPTT's panels: all of W_hh
    np.testing.assert_array_equal(y_inf, fresh[0])
    for a, b in zip(train(), fresh):
        assert (a is None) == (b is None) and (a is None or np.array_equal(a, b))
    packed, full = packed_now()
    assert full and packed.size == size(code, I, H, 2, 1)

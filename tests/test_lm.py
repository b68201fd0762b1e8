"""Language-model stack: fused loss, optimizers, data, a full LM step per backend,
checkpoint/resume, generation."""
import os
import subprocess
import sys

import numpy as np
import pytest

from fastrnn import backends, data as D
from fastrnn.lm import RNNLM, unigram_baseline
from fastrnn.optim import SGD, Adam, clip_grad_norm
from fastrnn.train import CheckpointError, Trainer, load_checkpoint
from helpers import rel_err

FAST = [b for b in ("cpu",) if b in backends.available()]


# ----- fused softmax cross-entropy -------------------------------------------------
@pytest.mark.parametrize("name", ["reference"] + FAST)
def test_softmax_xent_against_numpy_and_finite_differences(name):
    be = backends.get(name)
    rng = np.random.default_rng(0)
    z = rng.standard_normal((9, 13)) * 4
    t = rng.integers(0, 13, 9)
    t[3] = -1  # ignored row
    loss, grad = be.softmax_xent(z, t, scale=0.5)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    want = np.where(t >= 0, -np.log(p[np.arange(9), np.maximum(t, 0)]), 0)
    assert rel_err(loss, want) < 1e-12
    assert not grad[3].any()

    def f():
        return 0.5 * be.softmax_xent(z, t, want_grad=False)[0].sum()
    for i, j in [(0, 0), (2, 5), (8, 12), (3, 4)]:
        keep = z[i, j]
        z[i, j] = keep + 1e-6
        fp = f()
        z[i, j] = keep - 1e-6
        fm = f()
        z[i, j] = keep
        assert abs((fp - fm) / 2e-6 - grad[i, j]) < 1e-7


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["reference"] + FAST)
def test_softmax_xent_in_place_matches_a_separate_gradient(name, dtype):
    be = backends.get(name)
    rng = np.random.default_rng(2)
    z = (rng.standard_normal((37, 301)) * 5).astype(dtype)   # rows longer than a vector, odd
    t = rng.integers(0, 301, 37)
    t[[0, 5]] = -1
    loss, grad = be.softmax_xent(z, t, scale=0.25)
    work = z.copy()
    loss2, grad2 = be.softmax_xent(work, t, scale=0.25, in_place=True)
    assert grad2 is work
    assert np.array_equal(loss, loss2) and np.array_equal(grad, grad2)
    want, _ = backends.get("reference").softmax_xent(z.astype(np.float64), t, scale=0.25)
    assert rel_err(loss, want) < (1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.skipif(not FAST, reason="cpu backend unavailable")
def test_cpu_softmax_xent_refuses_what_the_kernel_cannot_read():
    cpu = backends.get("cpu")
    with pytest.raises(ValueError, match="logits: expected a 2-D float32 or float64"):
        cpu.softmax_xent(np.zeros((2, 5), np.float16), np.array([1, 2]))
    with pytest.raises(ValueError, match="logits: expected a 2-D"):
        cpu.softmax_xent(np.zeros(5, np.float32), np.array([1]))
    with pytest.raises(ValueError, match="logits: in_place needs"):
        cpu.softmax_xent(np.zeros((5, 2), np.float32).T, np.array([1, 0]), in_place=True)


@pytest.mark.skipif(not FAST, reason="cpu backend unavailable")
def test_cpu_softmax_xent_checks_targets_before_narrowing_them():
    cpu = backends.get("cpu")
    z = np.zeros((2, 5), np.float32)
    with pytest.raises(ValueError, match="targets: expected values < 5"):
        cpu.softmax_xent(z, np.array([1, 2 ** 32 + 1]))     # int32 would make it 1
    with pytest.raises(ValueError, match="integer array"):
        cpu.softmax_xent(z, np.array([1.5, 2.0]))
    # an id below int32's range stays ignored (as -1), not wrapped onto a real row
    loss, grad = cpu.softmax_xent(z, np.array([-2 ** 32 + 1, 1]))
    assert loss[0] == 0 and not grad[0].any() and loss[1] > 0


# (203, 19, 102): few columns and many rows, split over threads by rows (logits' shape);
# (13, 600, 1250): each thread's columns in chunks whose packed block holds all of K, the
# last one a partial panel; (4100, 37, 70): with A transposed (Fortran order), C = G^T X by
# weight_grad (a decoder's gradient, M = vocabulary), rows split over threads; (3, 37, 301)
# and (8, 16, 1000): few rows against B transposed (a decoding step's logits) by dot products
@pytest.mark.skipif(not FAST, reason="cpu backend unavailable")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M,K,N", [(37, 21, 70), (203, 19, 102), (13, 600, 1250), (4100, 37, 70),
                                   (3, 37, 301), (8, 16, 1000)])
def test_cpu_matmul_all_transposes(dtype, M, K, N):
    cpu = backends.get("cpu")
    rng = np.random.default_rng(1)
    a = rng.standard_normal((M, K)).astype(dtype)
    b = rng.standard_normal((K, N)).astype(dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for A in (a, np.asfortranarray(a)):
        for B_ in (b, np.ascontiguousarray(b.T).T):
            assert rel_err(cpu.matmul(A, B_), a @ b) < tol
            out = np.ones((M, N), dtype)
            cpu.matmul(A, B_, out=out, accumulate=True)
            assert rel_err(out - 1, a @ b) < tol
    with pytest.raises(ValueError, match="expected"):
        cpu.matmul(a, b.T)
    # empty results (numpy gives an empty array strides of 0): nothing to compute
    assert cpu.matmul(a[:0], b, out=np.empty((0, N), dtype)).shape == (0, N)
    assert cpu.matmul(a, b[:, :0], out=np.empty((M, 0), dtype)).shape == (M, 0)


# ----- embedding gradient: rows scattered by id --------------------------------------
@pytest.mark.skipif(not FAST, reason="cpu backend unavailable")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("E", [1, 16, 37, 520])
def test_cpu_scatter_rows_matches_add_at_on_any_thread_count(dtype, E):
    """Repeated ids sum; the sums are bit-identical on 1, 2 and 3 threads (each column is
    summed in row order by one thread) and equal the reference's add.at."""
    from fastrnn import get_num_threads, set_num_threads
    cpu, ref = backends.get("cpu"), backends.get("reference")
    rng = np.random.default_rng(E)
    V, n = 50, 300                      # 6 rows an id on average
    ids = rng.integers(0, V, n)
    rows = rng.standard_normal((n, E)).astype(dtype)
    start = rng.standard_normal((V, E)).astype(dtype)
    want = ref.scatter_rows(start.astype(np.float64), ids, rows.astype(np.float64))
    saved = get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 3):
            set_num_threads(threads)
            outs.append(cpu.scatter_rows(start.copy(), ids, rows))
    finally:
        set_num_threads(saved)
    assert all(np.array_equal(o, outs[0]) for o in outs[1:])
    assert rel_err(outs[0], want) < (1e-6 if dtype == np.float32 else 1e-14)
    untouched = np.setdiff1d(np.arange(V), ids)
    assert np.array_equal(outs[0][untouched], start[untouched])


@pytest.mark.skipif(not FAST, reason="cpu backend unavailable")
def test_cpu_scatter_rows_refuses_what_the_kernel_cannot_read():
    cpu = backends.get("cpu")
    out, rows = np.zeros((4, 3), np.float32), np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"ids: expected values in \[0, 4\)"):
        cpu.scatter_rows(out, np.array([0, 4]), rows)
    with pytest.raises(ValueError, match=r"ids: expected values in \[0, 4\)"):
        cpu.scatter_rows(out, np.array([-1, 0]), rows)
    with pytest.raises(ValueError, match="ids: expected a 1-D integer array"):
        cpu.scatter_rows(out, np.array([0.0, 1.0]), rows)
    with pytest.raises(ValueError, match="rows: expected shape"):
        cpu.scatter_rows(out, np.array([0, 1, 2]), rows)
    with pytest.raises(TypeError, match="rows: expected dtype float32"):
        cpu.scatter_rows(out, np.array([0, 1]), rows.astype(np.float64))
    with pytest.raises(ValueError, match="out: expected a writeable C-contiguous"):
        cpu.scatter_rows(out.T, np.array([0, 1]), rows)
    with pytest.raises(ValueError, match="out: expected a writeable C-contiguous"):
        cpu.scatter_rows(np.zeros((4, 3), np.float16), np.array([0, 1]), rows)
    cpu.scatter_rows(out, np.array([], np.int64), np.zeros((0, 3), np.float32))   # nothing to add
    assert not out.any()


# ----- optimizers against hand-computed values ---------------------------------------
class _Model:
    def __init__(self, p, g, backend="reference", dtype=float):
        self.p, self.grads = {"w": np.array(p, dtype)}, {"w": np.array(g, dtype)}
        self.backend = backend

    def named_parameters(self):
        return list(self.p.items())


def test_sgd_momentum_weight_decay_by_hand():
    m = _Model([1.0, -2.0], [0.5, 0.5])
    opt = SGD(m, lr=0.1, momentum=0.9, weight_decay=0.1)
    opt.step()  # d = g + 0.1 p = [0.6, 0.3]; buf = d; p -= 0.1 d
    np.testing.assert_allclose(m.p["w"], [0.94, -2.03])
    opt.step()  # d = [0.594, 0.297]; buf = 0.9 [0.6, 0.3] + d = [1.134, 0.567]
    np.testing.assert_allclose(m.p["w"], [0.94 - 0.1134, -2.03 - 0.0567])


@pytest.mark.parametrize("backend", ["reference"] + FAST)
def test_adam_by_hand(backend):
    m = _Model([1.0], [2.0], backend)
    opt = Adam(m, lr=0.1)
    opt.step()  # m = 0.2, v = 0.004; mhat = 2, vhat = 4 -> p -= 0.1 * 2 / (2 + 1e-8)
    np.testing.assert_allclose(m.p["w"], [0.9], atol=1e-8)
    m.grads["w"][:] = 1.0
    opt.step()  # m = 0.18 + 0.1 = 0.28, v = 0.003996 + 0.001 = 0.004996
    mhat, vhat = 0.28 / (1 - 0.81), 0.004996 / (1 - 0.999 ** 2)
    np.testing.assert_allclose(m.p["w"], [0.9 - 0.1 * mhat / (np.sqrt(vhat) + 1e-8)], rtol=1e-7)


@pytest.mark.skipif(not FAST, reason="cpu backend unavailable")
@pytest.mark.parametrize("dtype,rtol", [(np.float32, 2e-6), (np.float64, 1e-13)])
def test_fused_cpu_adam_matches_numpy_adam(dtype, rtol):
    """The cpu backend's one-pass Adam against the NumPy steps, weight decay included, on
    arrays big enough to be split over threads."""
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal(100_003).astype(dtype)
    models = {b: _Model(p0, np.zeros_like(p0), b, dtype) for b in ("reference", "cpu")}
    opts = {b: Adam(mdl, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1) for b, mdl in models.items()}
    for _ in range(5):
        g = rng.standard_normal(p0.size).astype(dtype)
        for b in models:
            models[b].grads["w"][:] = g
            opts[b].step()
    ref, fused = models["reference"].p["w"], models["cpu"].p["w"]
    assert not np.array_equal(ref, p0)
    np.testing.assert_allclose(fused, ref, rtol=rtol, atol=rtol)
    for slot in ("m", "v"):
        np.testing.assert_allclose(opts["cpu"].state["w"][slot], opts["reference"].state["w"][slot],
                                   rtol=rtol, atol=rtol)


def test_clip_grad_norm():
    g = {"a": np.array([3.0, 0.0]), "b": np.array([4.0])}
    assert clip_grad_norm(g, 1.0) == pytest.approx(5.0)
    total = np.sqrt(sum((v ** 2).sum() for v in g.values()))
    assert total == pytest.approx(1.0, rel=1e-5)
    g2 = {"a": np.array([0.3])}
    clip_grad_norm(g2, 1.0)
    assert g2["a"][0] == 0.3  # under the bound: unchanged


def test_optimizer_and_clip_arguments_are_checked():
    m = _Model([1.0], [2.0])
    for make, name in [(lambda: SGD(m, lr=float("inf")), "lr"), (lambda: SGD(m, lr=0), "lr"),
                       (lambda: SGD(m, 0.1, momentum=-0.5), "momentum"),
                       (lambda: SGD(m, 0.1, weight_decay=float("nan")), "weight_decay"),
                       (lambda: Adam(m, 0.1, betas=(0.9, 1.0)), "betas"), (lambda: Adam(m, 0.1, eps=-1), "eps")]:
        with pytest.raises(ValueError, match=name):
            make()
    g = {"a": np.array([3.0, 4.0])}
    for bad in (-1.0, 0.0, float("nan")):   # a negative bound would flip the gradient's sign
        with pytest.raises(ValueError, match="max_norm"):
            clip_grad_norm(g, bad)
    assert g["a"].tolist() == [3.0, 4.0]


@pytest.mark.skipif("cpu" not in backends.available(), reason="cpu backend not built")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cpu_sumsq_and_clip_on_large_gradients(dtype):
    cpu = backends.get("cpu")
    rng = np.random.default_rng(3)
    g = {"w": rng.standard_normal(300_001).astype(dtype), "b": rng.standard_normal(7).astype(dtype)}
    want = sum(float(np.sum(v.astype(np.float64) ** 2)) for v in g.values())
    assert cpu.sumsq(g["w"]) + cpu.sumsq(g["b"]) == pytest.approx(want, rel=1e-12)
    before = {k: v.copy() for k, v in g.items()}
    assert clip_grad_norm(g, 2.0) == pytest.approx(np.sqrt(want), rel=1e-9)
    for k in g:
        np.testing.assert_allclose(g[k], before[k] * (2.0 / (np.sqrt(want) + 1e-6)), rtol=1e-6)
    with pytest.raises(ValueError, match="C-contiguous"):
        cpu.sumsq(g["w"][::2])


# ----- data ------------------------------------------------------------------------
def test_tokenizers_vocab_round_trip_and_unk():
    v = D.Vocab.build("abcab", "char")
    assert v.itos[0] == D.UNK and v.decode(v.encode("cab")) == "cab"
    assert v.encode("z")[0] == 0
    v2 = D.Vocab.from_json(v.to_json())
    assert v2.itos == v.itos and v2.kind == "char"
    w = D.Vocab.build("the cat the dog", "word", max_size=3)
    assert len(w) == 3 and w.decode(w.encode("the cat")) in ("the cat", f"the {D.UNK}")


def test_batchify_and_windows():
    data = D.batchify(np.arange(23), 4)
    assert data.shape == (5, 4) and list(data[:, 1]) == [5, 6, 7, 8, 9]
    wins = list(D.bptt_windows(data, 2))
    assert [x.shape[0] for _, x, _ in wins] == [2, 2] and D.num_windows(data, 2) == 2
    _, x, y = wins[0]
    assert np.array_equal(y[0], x[1])
    with pytest.raises(ValueError, match="too few"):
        D.batchify(np.arange(3), 4)


def test_default_corpus_is_deterministic_and_capped():
    a = D.load_corpus(None, 50_000)
    assert len(a) == 50_000 and a == D.load_corpus(None, 50_000)


# ----- a full LM training step on each backend matches the reference ----------------
@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("cell, tie, proj", [("lstm", False, 0), ("gru", True, 0), ("lstm", True, 5)])
def test_lm_step_matches_reference(name, cell, tie, proj):
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 17, (6, 3)), rng.integers(0, 17, (6, 3))
    results = []
    for be in (name, "reference"):
        m = RNNLM(17, 12, 2, cell, dropout=0.2, tie_weights=tie, proj_size=proj, backend=be, dtype=np.float64,
                  seed=4)
        loss, h = m.forward(x, y)
        m.backward()
        results.append((loss, dict(m.grads)))
    (l1, g1), (l2, g2) = results
    assert abs(l1 - l2) < 1e-12
    for k in g1:
        assert rel_err(g1[k], g2[k]) < 1e-10, k


@pytest.mark.parametrize("name", ["reference"] + FAST)
def test_lm_backward_after_another_call_refuses_and_keeps_the_gradients(name):
    """logits() (or another forward) drops the stack's pending backward: the model's
    backward then raises before it adds anything to the gradients."""
    m = RNNLM(13, 6, 2, "gru", backend=name, seed=0)
    x = np.arange(8).reshape(4, 2)
    m.forward(x, x)
    m.logits(x[:2])
    before = {k: g.copy() for k, g in m.grads.items()}
    with pytest.raises(ValueError, match="no saved forward"):
        m.backward()
    assert all(np.array_equal(before[k], g) for k, g in m.grads.items())


@pytest.mark.parametrize("name", ["reference"] + FAST)
def test_lm_empty_window_is_refused_by_name(name):
    m = RNNLM(13, 6, 1, "lstm", backend=name, seed=0)
    for shape in ((0, 3), (4, 0)):
        with pytest.raises(ValueError, match="tokens: expected at least one token"):
            m.forward(np.zeros(shape, int), np.zeros(shape, int))
    logits, _ = m.logits(np.zeros((0, 2), int))   # no loss: an empty call is fine
    assert logits.shape == (0, 2, 13)


def test_lm_with_projection_gradients_match_finite_differences():
    """proj_size: P-wide outputs, decoder and h; the loss's gradient (reference backend,
    float64) against central differences for a sample of every parameter's entries."""
    m = RNNLM(11, 7, 2, "lstm", proj_size=3, backend="reference", dtype=np.float64, seed=1)
    assert m.decoder_weight.shape == (11, 3) and m.embedding.shape == (11, 3)
    h, c = m.init_hidden(2)
    assert h.shape == (2, 2, 3) and c.shape == (2, 2, 7)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 11, (4, 2)), rng.integers(0, 11, (4, 2))
    hidden = (rng.standard_normal((2, 2, 3)), rng.standard_normal((2, 2, 7)))
    m.zero_grad()
    m.forward(x, y, hidden)
    m.backward()
    eps = 1e-6
    for name, p in m.named_parameters():
        flat = p.reshape(-1)
        for i in rng.choice(flat.size, min(4, flat.size), replace=False):
            keep = flat[i]
            flat[i] = keep + eps
            up = m.forward(x, y, hidden)[0]
            flat[i] = keep - eps
            down = m.forward(x, y, hidden)[0]
            flat[i] = keep
            m._cache = None
            assert abs((up - down) / (2 * eps) - m.grads[name].reshape(-1)[i]) < 1e-7, (name, i)


# ----- training, checkpoints, resume -----------------------------------------------
@pytest.fixture
def corpus(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text("".join(f"def f{i}(x):\n    return x * {i}\n" for i in range(120)))
    return str(p)


def _cfg(corpus, **kw):
    base = dict(data=corpus, hidden=16, layers=2, batch=4, bptt=8, dropout=0.1, epochs=2, seed=3)
    base.update(kw)
    base["_explicit"] = tuple(base)
    return base


def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(corpus, tmp_path):
    full = Trainer(_cfg(corpus, max_steps=30), str(tmp_path / "a"), echo=lambda *a: None)
    full.run()
    part = Trainer(_cfg(corpus, max_steps=13), str(tmp_path / "b"), echo=lambda *a: None)
    part.run()
    resumed = Trainer(_cfg(corpus, max_steps=30), str(tmp_path / "b"), resume=True, echo=lambda *a: None)
    resumed.run()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert resumed.state["step"] == 30


def test_training_reduces_loss_below_unigram_and_logs(corpus, tmp_path):
    t = Trainer(_cfg(corpus, epochs=3), str(tmp_path), echo=lambda *a: None)
    res = t.run()
    assert res["val_bits"] < res["unigram_bits"]
    rows = open(os.path.join(str(tmp_path), "log.csv")).read().splitlines()
    assert rows[0].startswith("epoch,step") and len(rows) == 4


def test_corrupt_and_mismatched_checkpoints_give_clear_errors(corpus, tmp_path):
    Trainer(_cfg(corpus, max_steps=3), str(tmp_path), echo=lambda *a: None).run()
    ckpt = tmp_path / "checkpoint.npz"
    with pytest.raises(CheckpointError, match="other settings.*hidden"):
        Trainer(_cfg(corpus, hidden=32), str(tmp_path), resume=True)
    other = tmp_path / "other.txt"
    with pytest.raises(CheckpointError, match="other settings.*data="):
        Trainer(_cfg(str(other)), str(tmp_path), resume=True)
    keep = open(corpus).read()
    with open(corpus, "w") as f:  # same path, other contents
        f.write("completely different text " * 200)
    with pytest.raises(CheckpointError, match="data differ"):
        Trainer(_cfg(corpus), str(tmp_path), resume=True)
    with open(corpus, "w") as f:
        f.write(keep)
    raw = ckpt.read_bytes()
    ckpt.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="not a readable fastrnn checkpoint"):
        load_checkpoint(str(ckpt))
    r = subprocess.run([sys.executable, "-m", "fastrnn", "generate", str(ckpt)], capture_output=True, text=True)
    assert r.returncode == 2 and "not a readable" in r.stderr and "Traceback" not in r.stderr


def test_a_new_run_does_not_replace_a_checkpoint_unless_told(corpus, tmp_path):
    out = str(tmp_path / "run")
    Trainer(_cfg(corpus, max_steps=2), out, echo=lambda *a: None).run()
    ckpt = tmp_path / "run" / "checkpoint.npz"
    saved = ckpt.read_bytes()
    with pytest.raises(CheckpointError, match="exists: resume it"):
        Trainer(_cfg(corpus, max_steps=2, seed=9), out, echo=lambda *a: None)
    assert ckpt.read_bytes() == saved
    Trainer(_cfg(corpus, max_steps=2, seed=9), out, overwrite=True, echo=lambda *a: None).run()
    assert ckpt.read_bytes() != saved
    assert len((tmp_path / "run" / "log.csv").read_text().splitlines()) == 2   # header + this run's row
    with pytest.raises(ValueError, match="out: .* is not a folder"):
        Trainer(_cfg(corpus), corpus, echo=lambda *a: None)
    for kw, name in [(dict(clip=-1.0), "clip"), (dict(patience=-1), "patience"), (dict(lr_decay=0.0), "lr_decay"),
                     (dict(lr=float("inf")), "lr")]:
        with pytest.raises(ValueError, match=name):
            Trainer(_cfg(corpus, **kw), str(tmp_path / name), echo=lambda *a: None)
    r = subprocess.run([sys.executable, "-m", "fastrnn", "train", "--data", corpus, "--out", out, "--max-steps", "1"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--overwrite" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "fastrnn", "generate", str(ckpt), "--top-k", "-1"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--top-k" in r.stderr and "Traceback" not in r.stderr


def test_checkpoint_write_is_atomic(tmp_path):
    from fastrnn.train import atomic_write
    path = tmp_path / "f.bin"
    atomic_write(str(path), lambda f: f.write(b"old"))

    def broken(f):
        f.write(b"partial")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        atomic_write(str(path), broken)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]


# ----- generation ------------------------------------------------------------------
def test_generation_is_deterministic_with_a_seed():
    m = RNNLM(11, 8, 1, "lstm", backend="reference", seed=0).eval()
    a = m.generate([1, 2], 20, seed=5, temperature=0.8, top_k=4)
    assert a == m.generate([1, 2], 20, seed=5, temperature=0.8, top_k=4)
    assert a != m.generate([1, 2], 20, seed=6, temperature=0.8, top_k=4)
    assert m.generate([3], 6, greedy=True) == m.generate([3], 6, greedy=True)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_bfloat16_generation_matches_the_reference(cell):
    """generate(precision='bfloat16'): the stack's products and the logits' in bfloat16
    (the decoder's weights held as bfloat16 for the call). The cpu kernels give the
    reference's tokens (greedy and beam) and logits within float32 sums' rounding; they
    differ from float32's; the model is float32 again afterwards, and tied weights work."""
    if "cpu" not in backends.available() or backends.get("cpu").bf16_unavailable_reason():
        pytest.skip("no bfloat16 kernels here")
    for tie in (False, True):
        kw = dict(vocab_size=300, hidden_size=40, num_layers=2, cell=cell, tie_weights=tie, seed=3)
        m, r = RNNLM(**kw, backend="cpu").eval(), RNNLM(**kw, backend="reference").eval()
        for model in (m, r):   # larger weights: the logits' differences show in the tokens
            for name, p in model.named_parameters():
                p *= 8
        prompt = [5, 7, 11]
        for gen in (dict(greedy=True), dict(beam=3), dict(seed=4, temperature=0.9, top_k=20)):
            ours = m.generate(prompt, 25, precision="bfloat16", **gen)
            assert ours == r.generate(prompt, 25, precision="bfloat16", **gen), gen
        assert m.generate(prompt, 25, greedy=True, precision="float32") == r.generate(prompt, 25, greedy=True)
        assert m.generate(prompt, 25, greedy=True, precision="bfloat16") != m.generate(prompt, 25, greedy=True)
        with m._generation_precision("bfloat16"), r._generation_precision("bfloat16"):
            assert m.rnn.precision == "bfloat16" and m._decoder_bits.dtype == np.uint16
            z, _ = m.logits(np.array([prompt]).T)
            zr, _ = r.logits(np.array([prompt]).T)
        assert np.abs(z - zr).max() < 1e-4 * np.abs(zr).max()
        assert m.rnn.precision == "float32" and m._decoder_bits is None
        z32, _ = m.logits(np.array([prompt]).T)
        assert 1e-4 * np.abs(z32).max() < np.abs(z - z32).max() < 0.1 * np.abs(z32).max()


def test_bfloat16_generation_refusals_name_what_to_change(monkeypatch):
    m64 = RNNLM(7, 8, 1, backend="reference", dtype=np.float64)
    with pytest.raises(TypeError, match="precision='bfloat16': expected a float32 module"):
        m64.generate([1], 2, precision="bfloat16")
    assert len(RNNLM(7, 8, 1, backend="reference", proj_size=4).generate([1], 2, precision="bfloat16")) == 2
    m = RNNLM(7, 8, 1, backend="reference")
    with pytest.raises(ValueError, match="precision: expected one of"):
        m.generate([1], 2, precision="float16")
    def fail(*args):
        assert m.rnn.precision == "bfloat16"
        raise KeyboardInterrupt
    monkeypatch.setattr(m, "_sample", fail)
    with pytest.raises(KeyboardInterrupt):   # stopped inside: the model is float32 again
        m.generate([1], 2, precision="bfloat16")
    assert m.rnn.precision == "float32" and m._decoder_bits is None
    assert m.check_precision("bfloat16") == "bfloat16"


def test_bad_model_and_generation_arguments_name_the_argument():
    for kw, name in [(dict(vocab_size=0), "vocab_size"), (dict(vocab_size=5, hidden_size=2.5), "hidden_size"),
                     (dict(vocab_size=5, num_layers=0), "num_layers"), (dict(vocab_size=5, emb_size=-1), "emb_size"),
                     (dict(vocab_size=5, dropout=1.0), "dropout"), (dict(vocab_size=5, proj_size=-1), "proj_size"),
                     (dict(vocab_size=5, hidden_size=4, proj_size=4), "proj_size"),
                     (dict(vocab_size=5, cell="gru", proj_size=2), "proj_size: only an LSTM"),
                     (dict(vocab_size=5, hidden_size=8, proj_size=2, emb_size=8, tie_weights=True),
                      "tie_weights: needs emb_size == proj_size")]:
        with pytest.raises(ValueError, match=name):
            RNNLM(**kw)
    m = RNNLM(7, hidden_size=4, num_layers=1, seed=0)
    tokens = np.zeros((3, 2), np.int64)
    for targets, msg in [(np.full((3, 2), 7), r"ids in \[0, 7\)"), (np.full((3, 2), -1), r"ids in \[0, 7\)"),
                         (np.full((3, 2), 1.5), "a .* integer array"), (np.zeros((2, 3), int), "a .* integer array")]:
        with pytest.raises(ValueError, match="targets: expected " + msg):
            m.forward(tokens, targets)
    for kw, name in [(dict(length=2.5), "length"), (dict(length=-1), "length"),
                     (dict(length=3, top_k=-1), "top_k"), (dict(length=3, beam=-2), "beam"),
                     (dict(length=3, temperature=0), "temperature")]:
        with pytest.raises(ValueError, match=name):
            m.generate([1], **kw)
    # a prompt of floats was truncated to ids, and a 2-D one flattened, without a word
    for prompt, msg in [([1.7], "a 1-D sequence of integer token ids, got float64"),
                        ([[1, 2]], "a 1-D sequence of integer token ids, got int64 .1, 2."),
                        ("ab", "a 1-D sequence of integer token ids"), ([True], "a 1-D .*, got bool"),
                        ([7], r"ids in \[0, 7\)"), ([-1], r"ids in \[0, 7\)")]:
        with pytest.raises(ValueError, match="prompt_ids: expected " + msg):
            m.generate(prompt, 3)
    assert len(m.generate([], 3)) == len(m.generate(np.array([2], np.int32), 3)) == 3


def test_lm_load_state_dict_is_all_or_nothing():
    m = RNNLM(7, hidden_size=4, num_layers=1, seed=0)
    before = m.state_dict()
    bad = {k: v + 1 for k, v in before.items()}
    bad["decoder.bias"] = np.array(["x"] * 7)
    with pytest.raises(TypeError, match="decoder.bias"):
        m.load_state_dict(bad)
    assert all(np.array_equal(v, m.state_dict()[k]) for k, v in before.items())
    with pytest.raises(TypeError, match="state_dict: expected a mapping"):
        m.load_state_dict(list(before.values()))


def test_beam_search_finds_a_sequence_at_least_as_likely_as_greedy():
    m = RNNLM(7, 6, 1, "gru", backend="reference", dtype=np.float64, seed=1).eval()

    def logprob(prompt, seq):
        ids = np.array(list(prompt) + seq)
        z, _ = m.logits(ids[:-1, None])
        z = z[len(prompt) - 1:, 0]
        lp = z - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) - z.max(1, keepdims=True)
        return lp[np.arange(len(seq)), seq].sum()
    greedy = m.generate([2], 5, greedy=True)
    beam = m.generate([2], 5, beam=4)
    assert logprob([2], beam) >= logprob([2], greedy) - 1e-9


def test_train_and_generate_commands(corpus, tmp_path):
    out = str(tmp_path / "run")
    cmd = [sys.executable, "-m", "fastrnn", "train", "--data", corpus, "--hidden", "16", "--layers", "1",
           "--batch", "4", "--bptt", "8", "--epochs", "1", "--out", out, "--no-progress"]
    r = subprocess.run(cmd + ["--compare-reference", "2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "unigram-frequency baseline" in r.stdout and "bits per character" in r.stdout
    speed = [ln for ln in r.stdout.splitlines() if ln.startswith("training speed")]
    assert len(speed) == 1 and "reference" in speed[0] and "nan" not in speed[0]
    if FAST:
        assert "cpu/reference = " in speed[0]
    gen = [sys.executable, "-m", "fastrnn", "generate", os.path.join(out, "checkpoint.npz"),
           "--prompt", "def ", "--length", "30", "--seed", "7"]
    g1 = subprocess.run(gen, capture_output=True, text=True)
    g2 = subprocess.run(gen, capture_output=True, text=True)
    assert g1.returncode == 0 and g1.stdout == g2.stdout and g1.stdout.startswith("def ")
    # bfloat16: the same text as the reference backend's bfloat16 (or a usage error that
    # says why not, on a CPU without AVX512_BF16)
    gb = [subprocess.run(gen + ["--precision", "bfloat16", "--backend", be], capture_output=True, text=True)
          for be in ("auto", "reference")]
    assert gb[1].returncode == 0 and gb[1].stdout.startswith("def "), gb[1].stderr
    if FAST and backends.get("cpu").bf16_unavailable_reason() is None:
        assert gb[0].returncode == 0 and gb[0].stdout == gb[1].stdout, gb[0].stderr
    else:
        assert gb[0].returncode in (0, 2) and (gb[0].returncode == 0 or "--precision" in gb[0].stderr)
    bad = subprocess.run(cmd[:4] + ["--dropout", "1.5"], capture_output=True, text=True)
    assert bad.returncode == 2 and "dropout" in bad.stderr


def test_projection_trains_resumes_and_generates(corpus, tmp_path):
    """--proj through the trainer: a checkpoint that restores the same model, resume refusing
    another proj, and generate from it on the command line."""
    out = str(tmp_path / "p")
    t = Trainer(_cfg(corpus, proj=5, max_steps=4), out, echo=lambda *a: None)
    t.run()
    assert t.model.config["proj_size"] == 5 and t.model.decoder_weight.shape[1] == 5
    with pytest.raises(CheckpointError, match="other settings.*proj=3"):
        Trainer(_cfg(corpus, proj=3), out, resume=True)
    resumed = Trainer(_cfg(corpus, proj=5, max_steps=6), out, resume=True, echo=lambda *a: None)
    for k, v in t.model.state_dict().items():
        np.testing.assert_array_equal(resumed.model.state_dict()[k], v)
    resumed.run()
    g = subprocess.run([sys.executable, "-m", "fastrnn", "generate", os.path.join(out, "checkpoint.npz"),
                        "--prompt", "def ", "--length", "10", "--seed", "1"], capture_output=True, text=True)
    assert g.returncode == 0 and g.stdout.startswith("def "), g.stderr
    bad = subprocess.run([sys.executable, "-m", "fastrnn", "train", "--data", corpus, "--cell", "gru", "--proj", "2",
                          "--out", str(tmp_path / "q"), "--no-progress"], capture_output=True, text=True)
    assert bad.returncode == 2 and "proj_size: only an LSTM" in bad.stderr


@pytest.mark.parametrize("cell, proj", [("lstm", 0), ("gru", 0), ("lstm", 8)])
def test_bfloat16_training_matches_the_reference(cell, proj):
    """RNNLM(precision='bfloat16'): the stack (forward and BPTT) and the decoder (logits,
    their gradients) train on bfloat16 products; the embedding lookup, loss, sums and
    weights stay float32. Three Adam steps on the cpu kernels
    follow the reference backend's bfloat16 run (losses, every parameter); generate() runs at
    the precision it is given and leaves the model's own."""
    if "cpu" not in backends.available() or backends.get("cpu").bf16_unavailable_reason():
        pytest.skip("no bfloat16 kernels here")
    kw = dict(vocab_size=40, hidden_size=24, num_layers=2, cell=cell, seed=3, precision="bfloat16", proj_size=proj)
    m, r = RNNLM(**kw, backend="cpu"), RNNLM(**kw, backend="reference")
    f = RNNLM(**dict(kw, precision="float32"), backend="cpu")
    assert m.precision == m.rnn.precision == "bfloat16" and f.precision == "float32"
    rng = np.random.default_rng(5)
    opts = [Adam(model, 1e-2) for model in (m, r, f)]
    for _ in range(3):
        x, y = rng.integers(0, 40, (9, 6)), rng.integers(0, 40, (9, 6))
        losses = []
        for model, opt in zip((m, r, f), opts):
            model.zero_grad()
            loss, _ = model.forward(x, y)
            model.backward()
            opt.step()
            losses.append(loss)
        assert abs(losses[0] - losses[1]) < 1e-4 * abs(losses[1]), losses
    for name, p in m.named_parameters():
        q, p32 = dict(r.named_parameters())[name], dict(f.named_parameters())[name]
        assert rel_err(p, q) < 1e-3, name
        assert rel_err(p, q) < 0.3 * rel_err(p, p32), name   # far nearer it than float32's
    m.eval()
    seen = []
    real = m.rnn.forward
    m.rnn.forward = lambda *a, **k: (seen.append(m.rnn.precision), real(*a, **k))[1]
    for precision in ("float32", "bfloat16"):
        seen.clear()
        m.generate([1, 2], 3, greedy=True, precision=precision)
        assert seen and set(seen) == {precision}, seen
    assert m.rnn.precision == "bfloat16"


def test_bfloat16_training_through_the_trainer_and_cli(corpus, tmp_path):
    """--precision bfloat16: stored in the checkpoint, kept on resume (another precision is a
    clash), and a usage error where the backend has no bfloat16 products."""
    out = str(tmp_path / "b")
    cpu_bf16 = "cpu" in backends.available() and backends.get("cpu").bf16_unavailable_reason() is None
    backend = "cpu" if cpu_bf16 else "reference"
    t = Trainer(_cfg(corpus, precision="bfloat16", max_steps=3, backend=backend), out, echo=lambda *a: None)
    t.run()
    assert t.model.rnn.precision == "bfloat16"
    meta, _ = load_checkpoint(os.path.join(out, "checkpoint.npz"))
    assert meta["config"]["precision"] == "bfloat16"
    with pytest.raises(CheckpointError, match="other settings.*precision='float32'"):
        Trainer(_cfg(corpus, precision="float32", backend=backend), out, resume=True)
    resumed = Trainer(_cfg(corpus, max_steps=4, backend=backend), out, resume=True, echo=lambda *a: None)
    assert resumed.model.rnn.precision == "bfloat16"
    if "cpu" in backends.available():
        env = dict(os.environ, FASTRNN_ISA="avx2")   # no bfloat16 kernels
        bad = subprocess.run([sys.executable, "-m", "fastrnn", "train", "--data", corpus, "--precision", "bfloat16",
                              "--backend", "cpu", "--out", str(tmp_path / "c"), "--no-progress"],
                             capture_output=True, text=True, env=env)
        assert bad.returncode == 2 and "AVX512_BF16" in bad.stderr, bad.stderr
        assert not os.path.exists(tmp_path / "c")   # refused before anything was made
    with pytest.raises(TypeError, match="precision='bfloat16': expected a float32 module"):
        RNNLM(7, 8, 1, backend="reference", dtype=np.float64, precision="bfloat16")


def test_checkpoints_from_before_proj_still_resume(corpus, tmp_path):
    """A checkpoint whose config has no 'proj' key (written before it existed) loads as no
    projection, and resuming it with the default settings finds no clash."""
    import json
    from fastrnn.train import atomic_write
    out = str(tmp_path / "old")
    Trainer(_cfg(corpus, max_steps=2), out, echo=lambda *a: None).run()
    ckpt = os.path.join(out, "checkpoint.npz")
    meta, arrays = load_checkpoint(ckpt)
    del meta["config"]["proj"]
    arrays["meta"] = np.array(json.dumps(meta))
    atomic_write(ckpt, lambda f: np.savez(f, **arrays))
    r = Trainer(_cfg(corpus, max_steps=3, proj=0), out, resume=True, echo=lambda *a: None)
    assert r.model.config["proj_size"] == 0
    r.run()


def test_unigram_baseline():
    ids = np.array([0, 0, 1, 1])
    assert unigram_baseline(ids, np.array([0, 1]), 2) == pytest.approx(np.log(2))


def test_a_language_model_pickles_with_its_tied_weights():
    import pickle
    m = RNNLM(20, 8, num_layers=1, tie_weights=True, seed=0)
    tokens = np.random.default_rng(0).integers(0, 20, (6, 2))
    m.forward(tokens[:-1], tokens[1:], m.init_hidden(2))
    c = pickle.loads(pickle.dumps(m))
    assert c.decoder_weight is c.embedding            # still one array
    assert c.grads["rnn.weight_hh_l0"] is c.rnn.grads["weight_hh_l0"]
    m.eval(), c.eval()
    a = m.forward(tokens[:-1], tokens[1:], m.init_hidden(2))
    b = c.forward(tokens[:-1], tokens[1:], c.init_hidden(2))
    assert np.array_equal(a[0], b[0])

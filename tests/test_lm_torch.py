"""The language-model stack against PyTorch: RNNLM and its twin built from torch.nn
(RNNLM.to_torch) give the same loss, gradients, clipping norm and parameters after each of
several truncated-BPTT steps (hidden state carried), with fastrnn's optimizers against
torch.optim's. Needs PyTorch; skipped without it."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fastrnn import backends
from fastrnn.lm import RNNLM
from fastrnn.optim import SGD, Adam, clip_grad_norm

torch = pytest.importorskip("torch")
from fastrnn.lm_torch import TorchRNNLM, detach  # noqa: E402  (needs torch)

# torch's own notice that its oneDNN path has no LSTM projection
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections:UserWarning")

BACKENDS = ["reference"] + [b for b in ("cpu",) if b in backends.available()]
# (cell, tie_weights, proj_size): every cell, tied and untied decoders, an LSTM projection
MODELS = [("lstm", False, 0), ("lstm", True, 0), ("lstm", False, 3), ("gru", True, 0),
          ("rnn_tanh", False, 0), ("rnn_relu", True, 0)]
V, H = 19, 7


def _pair(cell, tie, proj, backend, dtype, optimizer):
    emb = (proj or H) if tie else 5
    m = RNNLM(V, H, 2, cell, emb_size=emb, tie_weights=tie, proj_size=proj, backend=backend,
              dtype=dtype, seed=3)
    t = m.to_torch()
    if optimizer == "adam":
        opts = (Adam(m, 0.02, betas=(0.8, 0.99), weight_decay=0.01),
                torch.optim.Adam(t.parameters(), 0.02, betas=(0.8, 0.99), weight_decay=0.01))
    else:
        opts = (SGD(m, 0.3, momentum=0.9, weight_decay=0.01),
                torch.optim.SGD(t.parameters(), 0.3, momentum=0.9, weight_decay=0.01))
    return m, t, opts


def _max_diff(m, t, what):
    ours = dict(m.named_parameters()) if what == "params" else m.grads
    out = 0.0
    for n, p in t.named_parameters():   # a tied decoder is listed once, as embedding.weight
        theirs = (p if what == "params" else p.grad).detach().numpy()
        out = max(out, float(np.abs(ours[n] - theirs).max() / (np.abs(theirs).max() + 1e-30)))
    return out


# windows (T, B) of 24 tokens, more than the V = 19 table rows (the cpu backend folds the
# embedding into the first projection), and of 6 (the embedding's gradient is scattered)
@pytest.mark.parametrize("window", [(6, 4), (2, 3)])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("backend,dtype", [(b, d) for b in BACKENDS for d in (np.float64, np.float32)])
@pytest.mark.parametrize("cell,tie,proj", MODELS)
def test_training_steps_match_torch(cell, tie, proj, backend, dtype, optimizer, window):
    tol = 1e-11 if dtype == np.float64 else 2e-5
    m, t, (opt, topt) = _pair(cell, tie, proj, backend, dtype, optimizer)
    rng = np.random.default_rng(0)
    hidden = t_hidden = None
    for step in range(3):
        x, y = rng.integers(0, V, window), rng.integers(0, V, window)
        m.zero_grad()
        loss, hidden = m.forward(x, y, hidden)
        m.backward()
        norm = clip_grad_norm(m.grads, 0.05)
        opt.step()

        topt.zero_grad()
        t_loss, t_hidden = t(torch.from_numpy(x), torch.from_numpy(y), t_hidden)
        t_loss.backward()
        t_hidden = detach(t_hidden)
        t_norm = float(torch.nn.utils.clip_grad_norm_(t.parameters(), 0.05))
        assert abs(loss - t_loss.item()) <= tol * abs(t_loss.item()), f"step {step}: loss"
        assert abs(norm - t_norm) <= tol * t_norm, f"step {step}: clip norm"
        assert norm > 0.05, "the test should exercise clipping"
        assert _max_diff(m, t, "grads") <= tol, f"step {step}: clipped gradients"
        topt.step()
        assert _max_diff(m, t, "params") <= tol, f"step {step}: parameters after the step"
    ours = hidden if isinstance(hidden, tuple) else (hidden,)
    theirs = t_hidden if isinstance(t_hidden, tuple) else (t_hidden,)
    for a, b in zip(ours, theirs):
        assert np.abs(a - b.numpy()).max() <= tol * max(1.0, float(b.abs().max()))


@pytest.mark.parametrize("backend", BACKENDS)
def test_evaluation_and_logits_match_torch(backend):
    m = RNNLM(V, H, 2, "lstm", dropout=0.3, backend=backend, dtype=np.float64, seed=4)
    t = m.to_torch().eval()
    rng = np.random.default_rng(1)
    stream = rng.integers(0, V, (25, 3))
    with torch.no_grad():
        total, hidden = 0.0, None
        for i in range(0, 24, 8):   # the windows evaluate(data, bptt=8) takes
            x, y = stream[i:i + 8], stream[i + 1:i + 9]
            loss, hidden = t(torch.from_numpy(x), torch.from_numpy(y), hidden)
            total += loss.item() * y.size
        want = total / 72
        logits, _ = m.logits(stream[:5])
        t_out, _ = t.rnn(t.embedding(torch.from_numpy(stream[:5])))
        t_logits = t.decoder(t_out).numpy()
    assert abs(m.evaluate(stream, bptt=8) - want) < 1e-12
    assert np.abs(logits - t_logits).max() < 1e-12


def test_to_torch_copies_the_weights_and_keeps_the_tie():
    m = RNNLM(V, H, 1, "gru", tie_weights=True, dropout=0.2, seed=0)
    t = m.to_torch()
    assert isinstance(t, TorchRNNLM)
    assert t.decoder.weight is t.embedding.weight
    assert t.drop.p == 0.2 and t.rnn.dropout == 0.0   # one layer: no dropout between layers
    assert t.embedding.weight.dtype == torch.float32
    with torch.no_grad():
        t.embedding.weight.add_(1.0)
    assert np.abs(m.embedding).max() <= 0.1   # a copy: the fastrnn model is unchanged
    names = {n for n, _ in m.named_parameters()}
    assert names == {n for n, _ in t.named_parameters()}


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_lm_benchmark_runs_and_writes_its_rows(tmp_path, precision):
    """benchmarks/lm_vs_torch.py --quick end to end (its losses agree before it times);
    bfloat16 against torch under CPU autocast, where the cpu kernels have it."""
    if precision == "bfloat16" and ("cpu" not in backends.available()
                                    or backends.get("cpu").bf16_unavailable_reason()):
        pytest.skip("no bfloat16 kernels here")
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    out = tmp_path / "lm.json"
    p = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "lm_vs_torch.py"), "--quick",
                        "--out", str(out), "--precision", precision], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    rows = json.loads(out.read_text())["results"]
    assert [r["model"] for r in rows] == ["char LSTM", "char GRU"]
    agree = 1e-4 if precision == "float32" else 1e-2
    for r in rows:
        assert r["precision"] == precision
        assert r["fastrnn_ms"] > 0 and r["torch_ms"] > 0 and r["samples"] >= 5
        assert abs(r["first_loss"] - r["first_loss_torch"]) <= agree * r["first_loss_torch"]

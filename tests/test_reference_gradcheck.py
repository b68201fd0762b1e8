"""Finite-difference gradient checks of the reference backend through the model API (float64)."""
import numpy as np
import pytest

from helpers import CELLS, make_module, random_lengths, rel_err

T, B, I, H = 5, 3, 3, 4


def _loss_and_grads(m, x, hx, lengths, weights):
    """loss = <out, Wo> + <h_n, Wh> (+ <c_n, Wc>); returns loss and analytic gradients."""
    out, hn = m(x, hx, lengths)
    Wo, Wh, Wc = weights
    if isinstance(hn, tuple):
        loss = (out * Wo).sum() + (hn[0] * Wh).sum() + (hn[1] * Wc).sum()
        return loss, (Wo, (Wh, Wc))
    return (out * Wo).sum() + (hn * Wh).sum(), (Wo, Wh)


def _fd_check(f, arr, grad, rng, eps=1e-6):
    """Compare grad with central differences of f along 3 random directions and 3 entries."""
    dirs = [rng.standard_normal(arr.shape) for _ in range(3)]
    for _ in range(3):
        e = np.zeros(arr.shape)
        e[tuple(rng.integers(s) for s in arr.shape)] = 1.0
        dirs.append(e)
    for v in dirs:
        orig = arr.copy()
        arr += eps * v
        fp = f()
        arr[...] = orig - eps * v
        fm = f()
        arr[...] = orig
        fd = (fp - fm) / (2 * eps)
        an = float((grad * v).sum())
        assert abs(fd - an) <= 1e-6 * max(1.0, abs(fd)), (fd, an)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("ragged", [False, True])
def test_gradcheck(cell, num_layers, bidirectional, ragged):
    rng = np.random.default_rng([CELLS.index(cell), num_layers, bidirectional, ragged])
    m = make_module(cell, I, H, num_layers=num_layers, bidirectional=bidirectional,
                    backend="reference", dtype=np.float64, seed=0)
    D = 2 if bidirectional else 1
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((num_layers * D, B, H)) * 0.5
    c0 = rng.standard_normal((num_layers * D, B, H)) * 0.5
    hx = (h0, c0) if cell == "lstm" else h0
    lengths = random_lengths(rng, T, B) if ragged else None
    weights = (rng.standard_normal((T, B, D * H)), rng.standard_normal(h0.shape),
               rng.standard_normal(c0.shape))

    def f():
        return _loss_and_grads(m, x, hx, lengths, weights)[0]

    m.zero_grad()
    _, (g_out, g_hn) = _loss_and_grads(m, x, hx, lengths, weights)
    gx, ghx = m.backward(g_out, g_hn)
    _fd_check(f, x, gx, rng)
    if cell == "lstm":
        _fd_check(f, h0, ghx[0], rng)
        _fd_check(f, c0, ghx[1], rng)
    else:
        _fd_check(f, h0, ghx, rng)
    for name, p in m.named_parameters():
        _fd_check(f, p, m.grads[name], rng)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gradcheck_with_dropout(cell):
    """Dropout masks are drawn from the module's generator; reseeding it makes f deterministic."""
    rng = np.random.default_rng(7)
    m = make_module(cell, I, H, num_layers=3, dropout=0.4, backend="reference",
                    dtype=np.float64, seed=0)
    x = rng.standard_normal((T, B, I))
    w = rng.standard_normal((T, B, H))

    def run():
        m._rng = np.random.default_rng(123)
        return m(x)[0]

    def f():
        return (run() * w).sum()

    out = run()
    m.eval()
    out_eval = m(x)[0]
    m.train()
    assert rel_err(out, out_eval) > 1e-3  # dropout is really applied in training mode
    m.zero_grad()
    run()
    gx, _ = m.backward(w)
    _fd_check(f, x, gx, rng)
    for name, p in m.named_parameters():
        _fd_check(f, p, m.grads[name], rng)

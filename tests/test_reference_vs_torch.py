"""The reference backend against torch.nn.RNN/LSTM/GRU in float64: outputs, states, gradients."""
import numpy as np
import pytest

from helpers import CELLS, make_module, random_lengths, rel_err

torch = pytest.importorskip("torch")


def torch_module(cell, I, H, **kw):
    if cell.startswith("rnn_"):
        return torch.nn.RNN(I, H, nonlinearity=cell[4:], dtype=torch.float64, **kw)
    return {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](I, H, dtype=torch.float64, **kw)


def run_torch(tm, x, hx, lengths, batch_first, g_out, g_hn):
    """Forward and backward through torch; ragged batches go through PackedSequence."""
    tx = torch.tensor(x, requires_grad=True)
    thx = None
    if hx is not None:
        thx = tuple(torch.tensor(h, requires_grad=True) for h in hx) if isinstance(hx, tuple) \
            else torch.tensor(hx, requires_grad=True)
    if lengths is not None:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            tx, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=False)
        out, hn = tm(packed, thx)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(
            out, batch_first=batch_first, total_length=x.shape[1 if batch_first else 0])
    else:
        out, hn = tm(tx, thx)
    hn_list = list(hn) if isinstance(hn, tuple) else [hn]
    g_list = list(g_hn) if isinstance(g_hn, tuple) else [g_hn]
    loss = (out * torch.tensor(g_out)).sum() + sum((h * torch.tensor(g)).sum() for h, g in zip(hn_list, g_list))
    loss.backward()
    grads_hx = None
    if thx is not None:
        grads_hx = tuple(h.grad.numpy() for h in thx) if isinstance(thx, tuple) else thx.grad.numpy()
    return out.detach().numpy(), [h.detach().numpy() for h in hn_list], tx.grad.numpy(), grads_hx


@pytest.mark.parametrize("seed", range(12))
def test_random_configuration_matches_torch(seed):
    rng = np.random.default_rng(seed)
    cell = CELLS[seed % 4]
    T, B, I, H = (int(v) for v in rng.integers([1, 1, 1, 1], [9, 5, 6, 7]))
    kw = dict(num_layers=int(rng.integers(1, 4)), bidirectional=bool(rng.integers(2)),
              batch_first=bool(rng.integers(2)), bias=bool(seed % 5))
    ragged = bool(rng.integers(2))
    m = make_module(cell, I, H, backend="reference", dtype=np.float64, **kw)
    tm = torch_module(cell, I, H, **kw)
    m.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    D = 2 if kw["bidirectional"] else 1
    shape = (B, T, I) if kw["batch_first"] else (T, B, I)
    x = rng.standard_normal(shape)
    hx = None
    if rng.integers(2):
        hx = rng.standard_normal((kw["num_layers"] * D, B, H))
        hx = (hx, rng.standard_normal(hx.shape)) if cell == "lstm" else hx
    lengths = random_lengths(rng, T, B) if ragged else None

    out, hn = m(x, hx, lengths)
    hn_list = list(hn) if cell == "lstm" else [hn]
    g_out = rng.standard_normal(out.shape)
    g_hn = tuple(rng.standard_normal(h.shape) for h in hn_list)
    g_hn_arg = g_hn if cell == "lstm" else g_hn[0]
    gx, ghx = m.backward(g_out, g_hn_arg)

    t_out, t_hn, t_gx, t_ghx = run_torch(tm, x, hx, lengths, kw["batch_first"], g_out, g_hn_arg)
    tol = 1e-10
    assert rel_err(out, t_out) < tol
    for a, b in zip(hn_list, t_hn):
        assert rel_err(a, b) < tol
    assert rel_err(gx, t_gx) < tol
    if hx is not None:
        for a, b in zip(ghx if cell == "lstm" else [ghx], t_ghx if cell == "lstm" else [t_ghx]):
            assert rel_err(a, b) < tol
    for name, p in tm.named_parameters():
        assert rel_err(m.grads[name], p.grad.numpy()) < tol, name


@pytest.mark.parametrize("cell", CELLS)
def test_unbatched_input_matches_torch(cell):
    rng = np.random.default_rng(3)
    m = make_module(cell, 3, 4, num_layers=2, bidirectional=True, backend="reference", dtype=np.float64)
    tm = torch_module(cell, 3, 4, num_layers=2, bidirectional=True)
    m.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    x = rng.standard_normal((6, 3))
    out, hn = m(x)
    t_out, t_hn = tm(torch.tensor(x))
    assert out.shape == tuple(t_out.shape)
    assert rel_err(out, t_out.detach().numpy()) < 1e-10
    hn = hn[0] if cell == "lstm" else hn
    t_hn = t_hn[0] if cell == "lstm" else t_hn
    assert rel_err(hn, t_hn.detach().numpy()) < 1e-10

"""Small helpers shared by the tests."""
import numpy as np

import fastrnn

CELLS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]


def make_module(cell, input_size, hidden_size, **kw):
    """fastrnn module for a cell name."""
    if cell.startswith("rnn_"):
        return fastrnn.RNN(input_size, hidden_size, nonlinearity=cell[4:], **kw)
    return {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU}[cell](input_size, hidden_size, **kw)


def rel_err(a, b):
    """||a - b|| / ||b|| (0 when both are 0)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    nb = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / (nb if nb > 0 else 1.0))


def random_lengths(rng, T, B):
    """Ragged lengths in [1, T] with the full length T present at least once."""
    lengths = rng.integers(1, T + 1, size=B)
    lengths[rng.integers(B)] = T
    return lengths


def layer_inputs(rng, cell, T, B, I, H, dtype):
    """Random arguments of forward_layer for one layer-direction."""
    G = fastrnn.get_cell(cell).gates
    k = 1 / np.sqrt(H)
    u = lambda *s: rng.uniform(-k, k, size=s).astype(dtype)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = (0.5 * rng.standard_normal((B, H))).astype(dtype)
    c0 = (0.5 * rng.standard_normal((B, H))).astype(dtype) if cell == "lstm" else None
    return x, h0, c0, u(G * H, I), u(G * H, H), u(G * H), u(G * H)

"""Small helpers shared by the tests."""
import numpy as np
import pytest

import fastrnn
from fastrnn import backends

CELLS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]


def make_module(cell, input_size, hidden_size, **kw):
    """fastrnn module for a cell name."""
    if cell.startswith("rnn_"):
        return fastrnn.RNN(input_size, hidden_size, nonlinearity=cell[4:], **kw)
    return {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU}[cell](input_size, hidden_size, **kw)


def rel_err(a, b):
    """||a - b|| / ||b|| (0 when both are 0); the shapes must be equal (no broadcasting)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, f"shapes differ: {a.shape} and {b.shape}"
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
    k = 1 / np.sqrt(max(H, 1))
    u = lambda *s: rng.uniform(-k, k, size=s).astype(dtype)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = (0.5 * rng.standard_normal((B, H))).astype(dtype)
    c0 = (0.5 * rng.standard_normal((B, H))).astype(dtype) if cell == "lstm" else None
    return x, h0, c0, u(G * H, I), u(G * H, H), u(G * H), u(G * H)


def lstmp_inputs(rng, T, B, I, H, P, dtype, bias=True):
    """Arguments of forward_layer for an LSTM with a projection, w_hr last."""
    k = 1 / np.sqrt(H)
    u = lambda *s: rng.uniform(-k, k, size=s).astype(dtype)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = (0.5 * rng.standard_normal((B, P))).astype(dtype)
    c0 = (0.5 * rng.standard_normal((B, H))).astype(dtype)
    b = (u(4 * H), u(4 * H)) if bias else (None, None)
    return (x, h0, c0, u(4 * H, I), u(4 * H, P), *b, u(P, H))


def run_lstmp(backend, args, lengths, reverse, rng_seed, train=True, precision="float32"):
    """A projected LSTM's forward and backward (args: lstmp_inputs') with random incoming
    gradients; every result in a list: y, h_T, c_T, then backward_layer's."""
    *a, w_hr = args
    kw = {} if precision == "float32" else {"precision": precision}   # (the cuda backend has no keyword)
    y, h, c, saved = backend.forward_layer("lstm", *a, lengths=lengths, reverse=reverse, train=train, w_hr=w_hr,
                                           **kw)
    rng = np.random.default_rng(rng_seed)
    dy, dh, dc = (rng.standard_normal(s).astype(y.dtype) for s in (y.shape, h.shape, c.shape))
    return [y, h, c, *backend.backward_layer("lstm", saved, dy, dh, dc)]


def compare_layer(backend, cell, T, B, I, H, dtype, reverse, ragged, seed):
    """Run one layer-direction forward and backward on `backend` and on the float64
    reference (same inputs); return (output error, gradient error) as relative norms."""
    from fastrnn.backends import reference
    rng = np.random.default_rng(seed)
    args = layer_inputs(rng, cell, T, B, I, H, dtype)
    lengths = random_lengths(rng, T, B) if ragged else None
    as64 = [None if a is None else a.astype(np.float64) for a in args]
    y, h, c, saved = backend.forward_layer(cell, *args, lengths=lengths, reverse=reverse)
    y_r, h_r, c_r, saved_r = reference.forward_layer(cell, *as64, lengths=lengths, reverse=reverse)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dh = rng.standard_normal(h.shape).astype(dtype)
    dc = rng.standard_normal(h.shape).astype(dtype) if cell == "lstm" else None
    grads = backend.backward_layer(cell, saved, dy, dh, dc)
    grads_r = reference.backward_layer(cell, saved_r, dy.astype(np.float64), dh.astype(np.float64),
                                       None if dc is None else dc.astype(np.float64))
    out_err = max(rel_err(y, y_r), rel_err(h, h_r), 0.0 if c is None else rel_err(c, c_r))
    grad_err = max(rel_err(a, b) for a, b in zip(grads, grads_r) if b is not None)
    return out_err, grad_err


def cpu_bf16():
    """The cpu backend when its bfloat16 kernels run here, else a skip with the reason."""
    if "cpu" not in backends.available():
        pytest.skip(f"cpu backend unavailable: {backends.why_unavailable('cpu')}")
    cpu = backends.get("cpu")
    reason = cpu.bf16_unavailable_reason()
    if reason:
        pytest.skip(reason)
    return cpu

"""The reference backend: one layer, one direction, in plain NumPy.

This is the oracle every fast backend is tested against. It is written to be read:
one Python step per time step, PyTorch's equations spelled out, no fusion.

Ragged batches: sequence b is valid for t < lengths[b]. At an invalid step its state is
left unchanged and y is 0. With reverse=True the loop runs t = T-1 .. 0, so each sequence
starts from its own last valid step (PyTorch's packed-sequence semantics).
"""
import numpy as np

from ..bf16 import (bits_to_float32, check_dense_args, check_precision, round_bf16,
                    to_bf16_bits as _to_bf16_bits, weights_format)
from ..cells import get_cell
from .checks import check_backward_grads, check_forward_args

name = "reference"


def sigmoid(a):
    # Split by sign so that exp never overflows.
    out = np.empty_like(a)
    pos = a >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-a[pos]))
    e = np.exp(a[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def _time_order(T, reverse):
    return range(T - 1, -1, -1) if reverse else range(T)


def _step_mask(lengths, t, B):
    """(B, 1) boolean: which sequences are valid at step t."""
    if lengths is None:
        return np.ones((B, 1), dtype=bool)
    return (t < lengths)[:, None]


def _operand(bf16):
    """What a matrix product reads of an operand: the values as given, or (precision
    'bfloat16') rounded to bfloat16; the products are exact and the sums float32."""
    return round_bf16 if bf16 else (lambda a: a)


def bf16_unavailable_reason():
    """precision='bfloat16' runs everywhere here (rounded in NumPy)."""
    return None


def forward_layer(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, *, lengths=None, reverse=False, train=True,
                  w_hr=None, precision="float32"):
    """Run one layer in one direction. Returns y (T,B,H), h_T (B,H), c_T or None, saved.
    w_hr (P, H): an LSTM's projection (see projected_forward). precision='bfloat16': x, h
    and the weights rounded to bfloat16 in the products (fastrnn/bf16.py), and in backward
    the operands of its products too; then w_ih and w_hh may be bfloat16 already, as uint16
    bits (bf16.weights_format)."""
    w_ih, w_hh, held = weights_format(w_ih, w_hh, precision, w_hr)
    if held:   # the values they hold, exactly
        w_ih, w_hh = bits_to_float32(w_ih), bits_to_float32(w_hh)
    spec, T, B, I, H, lengths = check_forward_args(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths,
                                                   w_hr=w_hr, weight_dtype=np.float32 if held else None)
    bf16 = check_precision(precision, x.dtype) == "bfloat16"
    if w_hr is not None:
        return projected_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, train, bf16)
    operand = _operand(bf16)
    w_ih_p, w_hh_p = operand(w_ih), operand(w_hh)
    b_ih = np.zeros(w_ih.shape[0], x.dtype) if b_ih is None else b_ih
    b_hh = np.zeros(w_hh.shape[0], x.dtype) if b_hh is None else b_hh
    h = h0.copy()
    c = c0.copy() if spec.has_cell_state else None
    y = np.zeros((T, B, H), dtype=x.dtype)
    keep = {}
    if train:
        keep = {"h_in": np.empty_like(y), "gates": np.empty((T, B, spec.gates * H), x.dtype)}
        if spec.has_cell_state:
            keep["c_in"] = np.empty_like(y)
            keep["c_out"] = np.empty_like(y)
        if spec.name == "gru":
            keep["hh_n"] = np.empty_like(y)

    for t in _time_order(T, reverse):
        valid = _step_mask(lengths, t, B)
        gi = operand(x[t]) @ w_ih_p.T + b_ih   # input part of the pre-activations (B, G*H)
        gh = operand(h) @ w_hh_p.T + b_hh      # recurrent part
        if train:
            keep["h_in"][t] = h
        if spec.name in ("rnn_tanh", "rnn_relu"):
            a = gi + gh
            h_new = np.tanh(a) if spec.name == "rnn_tanh" else np.maximum(a, 0)
            gates = h_new
        elif spec.name == "lstm":
            i = sigmoid(gi[:, 0:H] + gh[:, 0:H])
            f = sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
            g = np.tanh(gi[:, 2 * H:3 * H] + gh[:, 2 * H:3 * H])
            o = sigmoid(gi[:, 3 * H:] + gh[:, 3 * H:])
            c_new = f * c + i * g
            h_new = o * np.tanh(c_new)
            gates = np.concatenate([i, f, g, o], axis=1)
            if train:
                keep["c_in"][t] = c
                keep["c_out"][t] = c_new
            c = np.where(valid, c_new, c)
        else:  # gru
            r = sigmoid(gi[:, 0:H] + gh[:, 0:H])
            z = sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
            n = np.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
            h_new = (1 - z) * n + z * h
            gates = np.concatenate([r, z, n], axis=1)
            if train:
                keep["hh_n"][t] = gh[:, 2 * H:]
        if train:
            keep["gates"][t] = gates
        h = np.where(valid, h_new, h)
        y[t] = np.where(valid, h_new, 0)

    saved = None
    if train:
        saved = dict(keep, cell=spec.name, backend=name, x=x, w_ih=w_ih, w_hh=w_hh, lengths=lengths,
                     reverse=reverse, bf16=bf16)
    return y, h, c, saved


def backward_layer(cell, saved, dy, dh_T, dc_T, *, need_dx=True, retain=True):
    """Backprop through time for one layer-direction (`saved` is never consumed here).

    Returns dx (T,B,I) or None, dh0 (B,H), dc0 (B,H) or None, dw_ih, dw_hh, db_ih, db_hh,
    and dw_hr last when the forward had a projection (w_hr). After a bfloat16 forward the
    products' operands are rounded to bfloat16: the gate gradients, and W_hh, h_in, x, W_ih.
    """
    if saved is None:
        raise ValueError("saved: no workspace; run forward_layer with train=True before backward_layer")
    spec = _check_saved(cell, saved)
    if "w_hr" in saved:
        return projected_backward(spec, saved, dy, dh_T, dc_T, need_dx)
    x, w_ih, w_hh, lengths = saved["x"], saved["w_ih"], saved["w_hh"], saved["lengths"]
    T, B, _ = x.shape
    H = w_hh.shape[1]
    check_backward_grads(spec, dy, dh_T, dc_T, T, B, H, x.dtype)
    dh = np.zeros((B, H), x.dtype) if dh_T is None else dh_T.copy()
    dc = None
    if spec.has_cell_state:
        dc = np.zeros((B, H), x.dtype) if dc_T is None else dc_T.copy()
    dw_ih = np.zeros_like(w_ih)
    dw_hh = np.zeros_like(w_hh)
    db_ih = np.zeros(w_ih.shape[0], x.dtype)
    db_hh = np.zeros(w_hh.shape[0], x.dtype)
    dx = np.zeros_like(x) if need_dx else None
    op = _operand(saved.get("bf16"))
    w_ih_p, w_hh_p = op(w_ih), op(w_hh)

    for t in reversed(_time_order(T, saved["reverse"])):
        valid = _step_mask(lengths, t, B)
        h_in = saved["h_in"][t]
        gates = saved["gates"][t]
        dh_out = dh + (dy[t] if dy is not None else 0)   # gradient reaching h_new
        if spec.name in ("rnn_tanh", "rnn_relu"):
            dpre = dh_out * ((1 - gates * gates) if spec.name == "rnn_tanh" else (gates > 0))
            dgi = dgh = dpre
            dh_direct = 0
        elif spec.name == "lstm":
            i, f, g, o = (gates[:, k * H:(k + 1) * H] for k in range(4))
            tc = np.tanh(saved["c_out"][t])
            dc_total = dc + dh_out * o * (1 - tc * tc)
            di = dc_total * g * i * (1 - i)
            df = dc_total * saved["c_in"][t] * f * (1 - f)
            dg = dc_total * i * (1 - g * g)
            do = dh_out * tc * o * (1 - o)
            dgi = dgh = np.concatenate([di, df, dg, do], axis=1)
            dc = np.where(valid, dc_total * f, dc)
            dh_direct = 0
        else:  # gru
            r, z, n = (gates[:, k * H:(k + 1) * H] for k in range(3))
            dn = dh_out * (1 - z) * (1 - n * n)
            dz = dh_out * (h_in - n) * z * (1 - z)
            dr = dn * saved["hh_n"][t] * r * (1 - r)
            dgi = np.concatenate([dr, dz, dn], axis=1)
            dgh = np.concatenate([dr, dz, dn * r], axis=1)
            dh_direct = dh_out * z
        dgi = np.where(valid, dgi, 0)
        dgh = np.where(valid, dgh, 0)
        dw_ih += op(dgi).T @ op(x[t])
        dw_hh += op(dgh).T @ op(h_in)
        db_ih += dgi.sum(axis=0)
        db_hh += dgh.sum(axis=0)
        if need_dx:
            dx[t] = op(dgi) @ w_ih_p
        dh = np.where(valid, dh_direct + op(dgh) @ w_hh_p, dh)

    return dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh


def projected_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, train, bf16=False):
    """An LSTM with a projection (PyTorch's proj_size = P): the gates read the P-wide state
    h, and the new state is h' = W_hr m with m = o * tanh(c'). Returns y (T,B,P), h_T (B,P),
    c_T (B,H), saved. bf16: every product's operands rounded to bfloat16."""
    op = _operand(bf16)
    w_ih_p, w_hh_p, w_hr_p = op(w_ih), op(w_hh), op(w_hr)
    T, B, _ = x.shape
    H = w_hr.shape[1]
    b = np.zeros(4 * H, x.dtype) if b_ih is None else b_ih + b_hh
    h, c = h0.copy(), c0.copy()
    y = np.zeros((T, B, w_hr.shape[0]), x.dtype)
    keep = {k: [None] * T for k in ("h_in", "gates", "c_in", "c_out", "m")}
    for t in _time_order(T, reverse):
        valid = _step_mask(lengths, t, B)
        a = op(x[t]) @ w_ih_p.T + op(h) @ w_hh_p.T + b
        i, f, o = sigmoid(a[:, :H]), sigmoid(a[:, H:2 * H]), sigmoid(a[:, 3 * H:])
        g = np.tanh(a[:, 2 * H:3 * H])
        c_new = f * c + i * g
        m = o * np.tanh(c_new)
        h_new = op(m) @ w_hr_p.T
        for k, v in (("h_in", h), ("gates", np.concatenate([i, f, g, o], axis=1)), ("c_in", c),
                     ("c_out", c_new), ("m", m)):
            keep[k][t] = v
        c = np.where(valid, c_new, c)
        h = np.where(valid, h_new, h)
        y[t] = np.where(valid, h_new, 0)
    saved = None
    if train:
        saved = dict({k: np.stack(v) if T else np.zeros((0,) + h.shape, x.dtype) for k, v in keep.items()},
                     cell="lstm", backend=name, x=x, w_ih=w_ih, w_hh=w_hh, w_hr=w_hr, lengths=lengths,
                     reverse=reverse, bf16=bf16)
    return y, h, c, saved


def projected_backward(spec, saved, dy, dh_T, dc_T, need_dx):
    """BPTT of projected_forward. Returns dx, dh0 (B,P), dc0 (B,H), dw_ih, dw_hh, db_ih,
    db_hh, dw_hr."""
    x, w_ih, w_hh, w_hr, lengths = (saved[k] for k in ("x", "w_ih", "w_hh", "w_hr", "lengths"))
    T, B, _ = x.shape
    P, H = w_hr.shape
    check_backward_grads(spec, dy, dh_T, dc_T, T, B, H, x.dtype, P=P)
    dh = np.zeros((B, P), x.dtype) if dh_T is None else dh_T.copy()
    dc = np.zeros((B, H), x.dtype) if dc_T is None else dc_T.copy()
    dw_ih, dw_hh, dw_hr = np.zeros_like(w_ih), np.zeros_like(w_hh), np.zeros_like(w_hr)
    db = np.zeros(4 * H, x.dtype)
    dx = np.zeros_like(x) if need_dx else None
    op = _operand(saved.get("bf16"))   # bfloat16: every product's operands rounded
    w_ih_p, w_hh_p, w_hr_p = op(w_ih), op(w_hh), op(w_hr)
    for t in reversed(_time_order(T, saved["reverse"])):
        valid = _step_mask(lengths, t, B)
        dh_out = op(np.where(valid, dh + (dy[t] if dy is not None else 0), 0))   # reaching h' = W_hr m
        dw_hr += dh_out.T @ op(saved["m"][t])
        dm = dh_out @ w_hr_p
        i, f, g, o = (saved["gates"][t][:, k * H:(k + 1) * H] for k in range(4))
        tc = np.tanh(saved["c_out"][t])
        dc_total = dc + dm * o * (1 - tc * tc)
        da = np.concatenate([dc_total * g * i * (1 - i), dc_total * saved["c_in"][t] * f * (1 - f),
                             dc_total * i * (1 - g * g), dm * tc * o * (1 - o)], axis=1)
        da = np.where(valid, da, 0)
        db += da.sum(axis=0)   # the bias gradient sums the gate gradients as they are
        da = op(da)
        dw_ih += da.T @ op(x[t])
        dw_hh += da.T @ op(saved["h_in"][t])
        if need_dx:
            dx[t] = da @ w_ih_p
        dc = np.where(valid, dc_total * f, dc)
        dh = np.where(valid, da @ w_hh_p, dh)
    return dx, dh, dc, dw_ih, dw_hh, db, db.copy(), dw_hr


def _check_saved(cell, saved):
    spec = get_cell(cell)
    if not isinstance(saved, dict) or saved.get("cell") != spec.name or saved.get("backend") != name:
        raise ValueError(f"saved: expected the workspace of a reference {spec.name!r} forward_layer call")
    return spec


# ----- language-model helpers (the cpu backend has fused C versions) -----------------
# the same entry as the cpu backend's (RNNLM's bfloat16 copy of its decoder), in NumPy
to_bf16_bits = _to_bf16_bits


def dense_bf16(x, w, bias=None):
    """x (n, K) @ w (V, K).T + bias in bfloat16 products: operands rounded to bfloat16,
    float32 sums. w float32 or bfloat16 bits (uint16)."""
    x, w, bias, held = check_dense_args(x, w, bias)
    out = round_bf16(x) @ (bits_to_float32(w) if held else round_bf16(w)).T
    return out if bias is None else out + bias


def matmul(a, b, out=None, accumulate=False, precision="float32"):
    """a (M, K) @ b (K, N), written to / added into `out` when given. precision
    'bfloat16': a and b rounded to bfloat16 (float32 arrays), float32 sums."""
    if check_precision(precision, a.dtype) == "bfloat16":
        a, b = round_bf16(a), round_bf16(b)
    r = a @ b
    if out is None:
        return r
    if accumulate:
        out += r
    else:
        out[...] = r
    return out


def scatter_rows(out, ids, rows):
    """out[ids[i]] += rows[i] for every i, a repeated id getting the sum of its rows (an
    embedding table's gradient); returns out."""
    np.add.at(out, ids, rows)
    return out


def softmax_xent(logits, targets, scale=1.0, want_grad=True, in_place=False):
    """Per-row loss logsumexp(z) - z[target] and grad scale * (softmax - onehot);
    rows with target < 0 are ignored (loss 0, grad 0). in_place: the gradient is written
    into `logits`, which is returned as grad."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)
    rows = np.arange(len(targets))
    valid = targets >= 0
    t = np.where(valid, targets, 0)
    loss = np.where(valid, np.log(s[:, 0]) - z[rows, t], 0).astype(logits.dtype)
    grad = None
    if want_grad:
        grad = e / s
        grad[rows, t] -= 1
        grad *= scale
        grad[~valid] = 0
        grad = grad.astype(logits.dtype)
        if in_place:
            logits[...] = grad
            grad = logits
    return loss, grad

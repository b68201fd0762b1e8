"""fastrnn.torch: drop-in torch.nn.RNN/LSTM/GRU computed by fastrnn kernels."""
import os
import subprocess
import types
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fastrnn  # noqa: E402
import fastrnn.torch as ft  # noqa: E402

PAIRS = [(ft.RNN, torch.nn.RNN, {}), (ft.RNN, torch.nn.RNN, {"nonlinearity": "relu"}),
         (ft.LSTM, torch.nn.LSTM, {}), (ft.GRU, torch.nn.GRU, {})]
IDS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]


def _pair(i, *args, dtype=torch.float64, backend="auto", **kw):
    ours, theirs, extra = PAIRS[i]
    t = theirs(*args, dtype=dtype, **extra, **kw)
    m = ours(*args, dtype=dtype, backend=backend, **extra, **kw)
    m.load_state_dict(t.state_dict())
    return m, t


def _run(module, x, hx, loss_dtype=None):
    """Outputs and all gradients of a random linear loss (its weights drawn in loss_dtype,
    default the output's)."""
    x = x.detach().clone().requires_grad_(True)
    if hx is not None:
        hx = tuple(h.detach().clone().requires_grad_(True) for h in hx) if isinstance(hx, tuple) \
            else hx.detach().clone().requires_grad_(True)
    out, hn = module(x, hx)
    data = out.data if isinstance(out, torch.nn.utils.rnn.PackedSequence) else out
    hs = list(hn) if isinstance(hn, tuple) else [hn]
    g = torch.Generator().manual_seed(0)   # drawn on the CPU, moved to the outputs' device
    w = lambda shape: torch.randn(shape, generator=g, dtype=loss_dtype or data.dtype).to(
        device=data.device, dtype=data.dtype)
    loss = (data * w(data.shape)).sum() + sum((h * w(h.shape)).sum() for h in hs)
    loss.backward()
    grads_hx = None if hx is None else ([h.grad for h in hx] if isinstance(hx, tuple) else [hx.grad])
    return data.detach(), [h.detach() for h in hs], x.grad, grads_hx, [p.grad for p in module.parameters()]


def _assert_same(a, b, tol):
    for u, v in zip(a, b):
        if isinstance(u, list):
            _assert_same(u, v, tol)
        elif u is not None:
            assert torch.allclose(u, v, rtol=tol, atol=tol), (u - v).abs().max()


@pytest.mark.parametrize("i", range(4), ids=IDS)
@pytest.mark.parametrize("form", ["time_major", "batch_first", "unbatched", "packed", "hx", "no_bias"])
def test_same_outputs_and_gradients_as_torch(i, form):
    torch.manual_seed(i)
    kw = dict(num_layers=2, bidirectional=True)
    if form == "batch_first":
        kw["batch_first"] = True
    if form == "no_bias":
        kw["bias"] = False
    m, t = _pair(i, 4, 6, **kw)
    T, B = 7, 3
    x = torch.randn((B, T, 4) if form == "batch_first" else (T, 4) if form == "unbatched" else (T, B, 4),
                    dtype=torch.float64)
    hx = None
    if form == "hx":
        hx = torch.randn(4, B, 6, dtype=torch.float64)
        hx = (hx, torch.randn(4, B, 6, dtype=torch.float64)) if i == 2 else hx
    if form == "packed":
        x = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([4, 7, 2]), enforce_sorted=False)
        out_m, hn_m = m(x)
        out_t, hn_t = t(x)
        assert torch.equal(out_m.batch_sizes, out_t.batch_sizes)
        assert torch.equal(out_m.unsorted_indices, out_t.unsorted_indices)
        assert torch.allclose(out_m.data, out_t.data, atol=1e-12)
        for a, b in zip(hn_m if i == 2 else [hn_m], hn_t if i == 2 else [hn_t]):
            assert torch.allclose(a, b, atol=1e-12)
        # gradients through the packed path
        gm = torch.autograd.grad(out_m.data.sum(), list(m.parameters()))
        gt = torch.autograd.grad(out_t.data.sum(), list(t.parameters()))
        _assert_same(list(gm), list(gt), 1e-10)
        return
    _assert_same(_run(m, x, hx), _run(t, x, hx), 1e-10)


@pytest.mark.parametrize("i", range(4), ids=IDS)
@pytest.mark.parametrize("form", ["batch_first", "unbatched", "packed", "hx", "no_bias"])
def test_same_outputs_as_torch_without_recording(i, form):
    """The same forms under no_grad, where the stack runs on numpy views (_forward_on_host)."""
    torch.manual_seed(i)
    kw = dict(num_layers=2, bidirectional=True, batch_first=form == "batch_first", bias=form != "no_bias")
    m, t = _pair(i, 4, 6, **kw)
    x = torch.randn((3, 7, 4) if form == "batch_first" else (7, 4) if form == "unbatched" else (7, 3, 4),
                    dtype=torch.float64)
    hx = None
    if form == "hx":
        hx = torch.randn(4, 3, 6, dtype=torch.float64)
        hx = (hx, torch.randn(4, 3, 6, dtype=torch.float64)) if i == 2 else hx
    if form == "packed":
        x = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([4, 7, 2]), enforce_sorted=False)
    with torch.no_grad():
        (out_m, hn_m), (out_t, hn_t) = m(x, hx), t(x, hx)
    if form == "packed":
        out_m, out_t = out_m.data, out_t.data
    assert out_m.shape == out_t.shape and torch.allclose(out_m, out_t, atol=1e-12)
    for a, b in zip(hn_m if i == 2 else [hn_m], hn_t if i == 2 else [hn_t]):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-12)


def test_float32_model_is_close_to_torch():
    m, t = _pair(2, 16, 32, dtype=torch.float32, num_layers=2, batch_first=True)
    x = torch.randn(4, 9, 16)
    _assert_same(_run(m, x, None), _run(t, x, None), 1e-4)


def test_workspace_only_when_autograd_records(monkeypatch):
    """The kernels keep a training workspace (O(T) memory, extra writes) only when autograd
    records the call: not under no_grad or inference_mode, nor when nothing needs a
    gradient. needs_input_grad inside forward says True for parameters even under no_grad."""
    from fastrnn import backends
    be = backends.get(backends.resolve("auto"))
    seen = []
    real = be.forward_layer

    def spy(*args, **kwargs):
        seen.append(kwargs["train"])
        return real(*args, **kwargs)
    monkeypatch.setattr(be, "forward_layer", spy)
    m = ft.LSTM(3, 4, num_layers=2, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)

    def calls(run):
        seen.clear()
        run()
        return seen[:]
    assert calls(lambda: m(x)) == [True, True]                  # parameters need gradients
    with torch.no_grad():
        assert calls(lambda: m(x)) == [False, False]
    with torch.inference_mode():
        assert calls(lambda: m(x)) == [False, False]
    m.requires_grad_(False)
    assert calls(lambda: m(x)) == [False, False]                # nothing needs a gradient
    xg = x.clone().requires_grad_(True)
    assert calls(lambda: m(xg)) == [True, True]                 # the input does
    out, _ = m(xg)
    out.sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0


@pytest.mark.parametrize("cls, kw", [(ft.LSTM, {}), (ft.LSTM, {"proj_size": 2}), (ft.GRU, {}), (ft.RNN, {})])
def test_calls_autograd_does_not_record_match_recorded_ones(cls, kw):
    """Without a recording (no_grad, inference_mode) a layer runs straight on the backend,
    not through autograd.Function: the same outputs, plain tensors, the input's dtype."""
    m = cls(3, 4, num_layers=2, bidirectional=True, **kw)
    x = torch.randn(1, 2, 3)
    mb = cls(3, 4, num_layers=2, bidirectional=True, **kw).to(torch.bfloat16)
    mb.load_state_dict(m.state_dict())
    out, hn = m(x)
    assert out.grad_fn is not None
    for ctx in (torch.no_grad, torch.inference_mode):
        with ctx():
            out2, hn2 = m(x)
            half = mb(x.to(torch.bfloat16))[0]
        # (a training forward runs the packed kernels, a small inference call the unpacked ones:
        # the same sums in another order)
        assert out2.grad_fn is None and not out2.requires_grad
        assert torch.allclose(out2, out.detach(), rtol=0, atol=1e-6)
        for a, b in zip(hn2 if isinstance(hn2, tuple) else (hn2,), hn if isinstance(hn, tuple) else (hn,)):
            assert torch.allclose(a, b.detach(), rtol=0, atol=1e-6)
        assert half.dtype == torch.bfloat16 and torch.allclose(half.float(), out2, atol=0.05)


class _Halved(torch.nn.Module):
    def forward(self, w):
        return 0.5 * w


def test_no_grad_stack_reads_the_weights_forward_finds():
    """Without a recording the stack runs on numpy views of the weights as forward finds
    them by name: functional_call's swapped tensors, a parametrization's computed weight."""
    m, t = _pair(2, 3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    swapped = {n: p.detach() * 0.5 for n, p in m.named_parameters()}
    with torch.no_grad():
        out = torch.func.functional_call(m, swapped, (x,))[0]
        assert torch.allclose(out, torch.func.functional_call(t, swapped, (x,))[0], atol=1e-12)
        assert not torch.allclose(out, m(x)[0], atol=1e-3)     # the swap took effect
    for module in (m, t):
        torch.nn.utils.parametrize.register_parametrization(module, "weight_hh_l1_reverse", _Halved())
    with torch.no_grad():
        assert torch.allclose(m(x)[0], t(x)[0], atol=1e-12)


def test_no_grad_dropout_draws_the_masks_a_recorded_call_would():
    m = ft.GRU(3, 4, num_layers=3, dropout=0.5, dtype=torch.float64)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    torch.manual_seed(1)
    recorded = m(x)[0].detach()
    torch.manual_seed(1)
    with torch.no_grad():
        assert torch.allclose(m(x)[0], recorded, atol=1e-12)
        m.eval()
        assert not torch.allclose(m(x)[0], recorded, atol=1e-3)   # dropout did act above


def test_weight_on_another_device_is_rejected_by_name():
    m = ft.LSTM(3, 4)
    m._parameters["weight_hh_l0"] = torch.nn.Parameter(torch.empty(16, 4, device="meta"))
    for grad in (True, False):
        with torch.set_grad_enabled(grad), pytest.raises(ValueError, match="weight_hh_l0: expected a tensor on cpu"):
            m(torch.randn(2, 1, 3))


@pytest.mark.parametrize("proj", [0, 3])
def test_workspace_returns_to_the_pool_when_torch_frees_the_graph(monkeypatch, proj):
    """backward keeps the workspace (torch may run it twice: retain_graph); it goes back to
    the cpu backend's pool when the graph is freed, so the next step reuses it."""
    if "cpu" not in fastrnn.backends.available():
        pytest.skip("cpu backend unavailable")
    cpu = fastrnn.backends.get("cpu")
    released = []
    real = cpu.release_workspace
    monkeypatch.setattr(cpu, "release_workspace", lambda saved: released.append(saved) or real(saved))
    m = ft.LSTM(3, 5, num_layers=2, proj_size=proj, backend="cpu", dtype=torch.float64)
    t = torch.nn.LSTM(3, 5, num_layers=2, proj_size=proj, dtype=torch.float64)
    t.load_state_dict(m.state_dict())
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    out, _ = m(x)
    out.sum().backward(retain_graph=True)
    first = [p.grad.clone() for p in m.parameters()]
    out.sum().backward()                     # the second backward still has its workspace
    out_t, _ = t(x)
    out_t.sum().backward()
    for a, b, c in zip(first, m.parameters(), t.parameters()):
        assert torch.allclose(b.grad, 2 * a) and torch.allclose(a, c.grad, atol=1e-12)
    assert released == []
    del out
    assert len(released) == 2 and all(s.get("consumed") for s in released)   # one per layer
    cached = cpu.workspace_pool.cached_bytes
    assert cached > 0
    out, _ = m(x)                            # takes them back out of the pool
    assert cpu.workspace_pool.cached_bytes < cached


@pytest.mark.parametrize("i", range(4), ids=IDS)
def test_gradcheck_float64(i):
    torch.manual_seed(10 + i)
    m, _ = _pair(i, 3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 2, 4, dtype=torch.float64, requires_grad=True)
    hx = (h0, torch.randn(4, 2, 4, dtype=torch.float64, requires_grad=True)) if i == 2 else h0

    def f(x, *hx_and_params):
        out, hn = torch.func.functional_call(m, dict(zip([n for n, _ in m.named_parameters()],
                                                           hx_and_params[len(hx_list):])),
                                             (x, tuple(hx_and_params[:2]) if i == 2 else hx_and_params[0]))
        return out, hn[0] if i == 2 else hn

    hx_list = list(hx) if i == 2 else [hx]
    params = [p.detach().clone().requires_grad_(True) for p in m.parameters()]
    # the swapped-in parameters really drive the kernels (else the check would be vacuous)
    moved = [p * 1.1 for p in params]
    assert not torch.allclose(f(x, *hx_list, *params)[0], f(x, *hx_list, *moved)[0])
    assert torch.autograd.gradcheck(f, (x, *hx_list, *params), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("i", range(4), ids=IDS)
def test_double_backward_is_refused_not_silently_first_order(i):
    """autograd.grad(..., create_graph=True) through the layer (a gradient penalty) needs
    second derivatives the kernels do not give. torch's once_differentiable let it through
    when the gradient flowing in needs none (here: the ones of a sum), and the penalty then
    silently added nothing to the parameters' gradients; it must raise instead. First-order
    backward, retain_graph and autograd.grad without create_graph still work."""
    m, t = _pair(i, 3, 4, num_layers=2, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(m(x)[0].sum(), x)
    assert torch.allclose(g, torch.autograd.grad(t(x)[0].sum(), x)[0])
    out = m(x)[0].sum()
    out.backward(retain_graph=True)
    out.backward()
    for grad_out in (None, torch.ones(5, 2, 4, dtype=torch.float64, requires_grad=True)):
        out = m(x)[0]
        with pytest.raises(RuntimeError, match="double backward .create_graph=True.* not supported"):
            torch.autograd.grad(out, x, grad_out if grad_out is not None else torch.ones_like(out),
                                create_graph=True)


def test_training_loop_matches_torch_loss_curve():
    """Embedding + LSTM + Linear, SGD, 50 steps: the same loss curve within 1e-4."""
    def model(lstm_cls):
        torch.manual_seed(0)
        emb = torch.nn.Embedding(20, 8)
        lstm = lstm_cls(8, 16, num_layers=2, batch_first=True)
        head = torch.nn.Linear(16, 20)
        return torch.nn.ModuleList([emb, lstm, head])

    def train(mods):
        opt = torch.optim.SGD(mods.parameters(), lr=0.5)
        g = torch.Generator().manual_seed(1)
        losses = []
        for _ in range(50):
            tok = torch.randint(0, 20, (4, 11), generator=g)
            out, _ = mods[1](mods[0](tok[:, :-1]))
            loss = torch.nn.functional.cross_entropy(mods[2](out).reshape(-1, 20), tok[:, 1:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return np.array(losses)

    ref = train(model(torch.nn.LSTM))
    ours = train(model(ft.LSTM))
    assert np.abs(ref - ours).max() < 1e-4, np.abs(ref - ours).max()
    assert ref[-1] < ref[0]  # it really trained


def test_same_parameters_and_init_as_torch():
    torch.manual_seed(3)
    a = ft.GRU(5, 7, num_layers=2)
    torch.manual_seed(3)
    b = torch.nn.GRU(5, 7, num_layers=2)
    assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    assert isinstance(a, torch.nn.GRU)


@pytest.mark.parametrize("i", range(4), ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_runs_in_float32(i, dtype, monkeypatch):
    """float16 modules, and bfloat16 ones on a backend without bfloat16 products (forced
    here), compute in float32 and return torch's dtypes: outputs, states, and every gradient
    in its tensor's dtype, equal to a float32 run of the same values rounded once (torch's
    own half run rounds every step: looser)."""
    monkeypatch.setattr(ft, "_bf16_products", lambda backend_name: False)
    torch.manual_seed(20 + i)
    m, t = _pair(i, 5, 8, dtype=dtype, num_layers=2, bidirectional=True, batch_first=True)
    m32, _ = _pair(i, 5, 8, dtype=torch.float32, num_layers=2, bidirectional=True, batch_first=True)
    m32.load_state_dict({k: v.float() for k, v in m.state_dict().items()})
    x = torch.randn(3, 6, 5).to(dtype)
    h = torch.randn(4, 3, 8).to(dtype)
    hx = (h, torch.randn(4, 3, 8).to(dtype)) if i == 2 else h
    half, half_t = _run(m, x, hx), _run(t, x, hx)
    full = _run(m32, x.float(), tuple(u.float() for u in hx) if i == 2 else hx.float(), loss_dtype=dtype)
    flat = lambda r: [r[0], *r[1], r[2], *r[3], *r[4]]
    tol = 8e-3 if dtype == torch.bfloat16 else 1e-3   # ours: up to 3e-3, 3.4e-4; torch: 1.2e-2, 1.2e-3 and up
    for ours, theirs, exact in zip(flat(half), flat(half_t), flat(full)):
        assert ours.dtype == theirs.dtype == dtype
        assert torch.allclose(ours.float(), exact, rtol=tol, atol=tol), (ours.float() - exact).abs().max()
        assert torch.allclose(ours.float(), theirs.float(), rtol=8 * tol, atol=8 * tol)


def _spy_precisions(monkeypatch):
    """The (precision, w_ih dtype) of every cpu forward_layer call from here on."""
    from fastrnn.backends import cpu
    seen, real = [], cpu.forward_layer

    def spy(*args, **kw):
        seen.append((kw.get("precision", "float32"), args[4].dtype))
        return real(*args, **kw)
    monkeypatch.setattr(cpu, "forward_layer", spy)
    return seen


@pytest.mark.parametrize("i", range(4), ids=IDS)
def test_bfloat16_runs_bfloat16_products(i, monkeypatch):
    """A bfloat16 module computes what torch's own does, bfloat16 products summed in
    float32, reading its bfloat16 weight matrices as they are (no float copy a call): the
    reference backend's bfloat16 run of the same values, near float32. Inference and
    training alike: a recorded call's gradients come back in bfloat16, from bfloat16
    products in BPTT too, and are nearer float32's than torch's own bfloat16 module's."""
    if fastrnn.backends.get("cpu").bf16_unavailable_reason():
        pytest.skip(fastrnn.backends.get("cpu").bf16_unavailable_reason())
    torch.manual_seed(30 + i)
    m, t = _pair(i, 6, 20, dtype=torch.bfloat16, num_layers=2, bidirectional=True, backend="cpu")
    r, _ = _pair(i, 6, 20, dtype=torch.bfloat16, num_layers=2, bidirectional=True, backend="reference")
    r.load_state_dict(m.state_dict())
    m32, _ = _pair(i, 6, 20, dtype=torch.float32, num_layers=2, bidirectional=True)
    m32.load_state_dict({k: v.float() for k, v in m.state_dict().items()})
    seen = _spy_precisions(monkeypatch)
    for T, B in ((1, 1), (1, 3), (9, 12)):   # the direct and the packed kernels
        x = torch.randn(T, B, 6).to(torch.bfloat16)
        hx = torch.randn(4, B, 20).to(torch.bfloat16)
        hx = (hx, torch.randn(4, B, 20).to(torch.bfloat16)) if i == 2 else hx
        for ctx in (torch.no_grad, torch.inference_mode):
            seen.clear()
            with ctx():
                out, hn = m(x, hx)
                calls = list(seen)
                out_r, hn_r = r(x, hx)
                out_32, _ = m32(x.float(), tuple(h.float() for h in hx) if i == 2 else hx.float())
            assert calls == [("bfloat16", np.uint16)] * 4, calls
            assert out.dtype == torch.bfloat16
            # bfloat16 outputs: one bfloat16 step apart where the float sums' order differs
            assert torch.allclose(out.float(), out_r.float(), rtol=8e-3, atol=1e-3), (out.float() - out_r.float()).abs().max()
            for a, b in zip(hn if i == 2 else (hn,), hn_r if i == 2 else (hn_r,)):
                assert torch.allclose(a.float(), b.float(), rtol=8e-3, atol=1e-3)
            assert torch.allclose(out.float(), out_32, rtol=3e-2, atol=3e-2)
        # training: every output and gradient (bfloat16) against the reference backend's
        # bfloat16 run and float32's, in relative norm
        seen.clear()
        ours = _run(m, x, hx)
        assert seen == [("bfloat16", np.uint16)] * 4, seen
        ref, theirs = _run(r, x, hx), _run(t, x, hx)
        full = _run(m32, x.float(), tuple(h.float() for h in hx) if i == 2 else hx.float(), loss_dtype=torch.bfloat16)
        flat = lambda res: [res[0], *res[1], res[2], *res[3], *res[4]]
        rel = lambda a, b: float((a.float() - b.float()).norm() / max(float(b.float().norm()), 1e-30))
        worst_ours = worst_torch = 0.0
        for a, b, c, d in zip(flat(ours), flat(ref), flat(full), flat(theirs)):
            assert a.dtype == torch.bfloat16
            assert rel(a, b) < 8e-3, rel(a, b)
            # a bias gradient of a few relu units sums terms that cancel: 5e-2 measured
            assert rel(a, c) < 0.1, rel(a, c)
            worst_ours, worst_torch = max(worst_ours, rel(a, c)), max(worst_torch, rel(d, c))
        assert worst_ours < 2 * worst_torch + 1e-2, (worst_ours, worst_torch)


def test_bfloat16_products_only_for_bfloat16_weights(monkeypatch):
    """Under autocast (float32 weights, bfloat16 input) the layers compute in float32 as
    before; a bfloat16 module with proj_size runs bfloat16 products on float copies of its
    weights (the projected kernels read float weights)."""
    if fastrnn.backends.get("cpu").bf16_unavailable_reason():
        pytest.skip(fastrnn.backends.get("cpu").bf16_unavailable_reason())
    seen = _spy_precisions(monkeypatch)
    m, _ = _pair(2, 4, 6, dtype=torch.float32, backend="cpu")
    x = torch.randn(5, 2, 4).to(torch.bfloat16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        m(x)
    mp = ft.LSTM(4, 6, proj_size=3, backend="cpu").to(torch.bfloat16)
    with torch.no_grad():
        mp(x)
    assert seen == [("float32", np.float32), ("bfloat16", np.float32)], seen


def test_bfloat16_projection_matches_the_reference_backend(monkeypatch):
    """A bfloat16 LSTM with proj_size, 2 layers, bidirectional, packed input: outputs,
    states and every gradient (bfloat16) within 8e-3 of the reference backend's bfloat16
    run, and near float32's."""
    if fastrnn.backends.get("cpu").bf16_unavailable_reason():
        pytest.skip(fastrnn.backends.get("cpu").bf16_unavailable_reason())
    torch.manual_seed(4)
    kw = dict(proj_size=7, num_layers=2, bidirectional=True)
    m = ft.LSTM(6, 20, **kw, backend="cpu").to(torch.bfloat16)
    r = ft.LSTM(6, 20, **kw, backend="reference").to(torch.bfloat16)
    m32 = ft.LSTM(6, 20, **kw, backend="cpu")
    r.load_state_dict(m.state_dict())
    m32.load_state_dict({k: v.float() for k, v in m.state_dict().items()})
    seen = _spy_precisions(monkeypatch)
    x = torch.randn(9, 5, 6).to(torch.bfloat16)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, [9, 3, 7, 9, 1], enforce_sorted=False)
    rel = lambda a, b: float((a.float() - b.float()).norm() / max(float(b.float().norm()), 1e-30))
    results = []
    for model, inp in ((m, packed), (r, packed), (m32, torch.nn.utils.rnn.pack_padded_sequence(
            x.float(), [9, 3, 7, 9, 1], enforce_sorted=False))):
        model.zero_grad()
        out, (h, c) = model(inp)
        (out.data.float() * torch.linspace(-1, 1, out.data.numel()).reshape(out.data.shape)).sum().backward()
        results.append([t.detach() for t in (out.data, h, c)] + [p.grad for p in model.parameters()])
    assert seen == [("bfloat16", np.float32)] * 4 + [("float32", np.float32)] * 4, seen   # m, then m32
    for a, b, c in zip(*results):
        assert a.dtype == torch.bfloat16
        assert rel(a, b) < 8e-3, rel(a, b)
        assert rel(a, c) < 0.1, rel(a, c)


def test_autocast_mixed_dtypes_compute_in_float32():
    """Under autocast torch lets the input's dtype differ from the weights'; the layers
    compute in float32 and return the input's dtype."""
    m, _ = _pair(2, 4, 6, dtype=torch.float32)
    x = torch.randn(5, 2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, (h, c) = m(x.bfloat16())
    assert out.dtype == h.dtype == c.dtype == torch.bfloat16
    ref, _ = m(x.bfloat16().float())
    assert torch.allclose(out.float(), ref, atol=8e-3)


def test_other_dtypes_are_not_implemented():
    from fastrnn.torch import _compute_dtype
    with pytest.raises(NotImplementedError, match="dtype torch.complex64 is not supported"):
        _compute_dtype(torch.complex64)


def test_torch_argument_checks_apply():
    m = ft.LSTM(4, 8)
    with pytest.raises(RuntimeError, match="input.size"):
        m(torch.randn(3, 2, 5))


@pytest.mark.parametrize("cls, tcls", [(fastrnn.RNN, torch.nn.RNN), (fastrnn.LSTM, torch.nn.LSTM),
                                       (fastrnn.GRU, torch.nn.GRU)])
def test_from_torch_and_to_torch(cls, tcls):
    t = tcls(3, 5, num_layers=2, bidirectional=True, batch_first=True, dtype=torch.float64)
    m = cls.from_torch(t, backend="reference")
    assert m.dtype == np.float64 and m.batch_first and m.num_layers == 2
    x = np.random.default_rng(0).standard_normal((2, 4, 3))
    out_m = m(x)[0]
    out_t = t(torch.from_numpy(x))[0].detach().numpy()
    np.testing.assert_allclose(out_m, out_t, atol=1e-12)
    back = m.to_torch()
    assert type(back) is tcls
    for (n1, p1), (n2, p2) in zip(back.named_parameters(), t.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)
    with pytest.raises(TypeError, match="module"):
        cls.from_torch(torch.nn.Linear(2, 2))


def test_import_without_torch_says_how_to_install():
    code = "import sys; sys.modules['torch'] = None\ntry:\n import fastrnn.torch\nexcept ImportError as e: print(e)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "pip install" in r.stdout and "torch" in r.stdout


def test_cuda_tensors_need_the_cuda_backend(monkeypatch):
    on_gpu = types.SimpleNamespace(is_cuda=True)   # stands in for a CUDA tensor's flag
    with pytest.raises(ValueError, match="backend: CUDA tensors need the cuda backend.*'cpu'"):
        ft.LSTM(4, 8, backend="cpu")._backend_for(on_gpu)
    monkeypatch.setattr(fastrnn.backends, "why_unavailable", lambda name: "no GPU here")
    with pytest.raises(RuntimeError, match="not available here: no GPU here"):
        ft.LSTM(4, 8)._backend_for(on_gpu)


def test_state_on_another_device_is_rejected():
    m = ft.GRU(4, 8)
    with pytest.raises(ValueError, match="hx: expected a tensor on cpu"):
        m(torch.randn(3, 2, 4), torch.zeros(1, 2, 8, device="meta"))


needs_cuda_backend = pytest.mark.skipif("cuda" not in fastrnn.backends.available(),
                                        reason="cuda backend unavailable (CI: the simulator)")


@needs_cuda_backend
@pytest.mark.parametrize("i", [1, 2, 3], ids=IDS[1:])
def test_cuda_backend_with_cpu_tensors_matches_torch(i):
    """backend='cuda' on CPU tensors: copied to the device and back (the simulator in CI)."""
    torch.manual_seed(20 + i)
    m, t = _pair(i, 2, 3, bidirectional=i == 2, backend="cuda")
    x = torch.randn(3, 2, 2, dtype=torch.float64)
    x = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([2, 3]), enforce_sorted=False)
    out_m, _ = m(x)
    out_t, _ = t(x)
    assert torch.allclose(out_m.data, out_t.data, atol=1e-12)
    gm = torch.autograd.grad(out_m.data.square().sum(), list(m.parameters()))
    gt = torch.autograd.grad(out_t.data.square().sum(), list(t.parameters()))
    _assert_same(list(gm), list(gt), 1e-10)


gpu_tensors = pytest.mark.skipif(
    not torch.cuda.is_available() or "cuda" not in fastrnn.backends.available()
    or os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", reason="needs a CUDA GPU with torch's CUDA build")


@gpu_tensors
@pytest.mark.parametrize("i", range(4), ids=IDS)
@pytest.mark.parametrize("form", ["batch_first", "packed", "hx", "side_stream"])
def test_cuda_tensors_match_torch_on_the_gpu(i, form):
    """CUDA tensors in, CUDA tensors out, same values and gradients as torch.nn (cuDNN,
    float64) on the same device."""
    torch.manual_seed(30 + i)
    dev = torch.device("cuda")
    m, t = _pair(i, 4, 6, num_layers=2, bidirectional=True, batch_first=form == "batch_first")
    m, t = m.to(dev), t.to(dev)
    T, B = 7, 3
    x = torch.randn((B, T, 4) if form == "batch_first" else (T, B, 4), dtype=torch.float64, device=dev)
    hx = None
    if form == "hx":
        hx = torch.randn(4, B, 6, dtype=torch.float64, device=dev)
        hx = (hx, torch.randn_like(hx)) if i == 2 else hx
    if form == "packed":
        x = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([4, 7, 2]), enforce_sorted=False)

    def run(module):
        out, hn = module(x, hx)
        data = out.data if form == "packed" else out
        hs = list(hn) if i == 2 else [hn]
        loss = (data * torch.linspace(-1, 1, data.numel(), dtype=data.dtype, device=dev)
                .reshape(data.shape)).sum() + sum(h.square().sum() for h in hs)
        grads = torch.autograd.grad(loss, list(module.parameters()))
        return [data.detach()] + [h.detach() for h in hs] + list(grads)

    if form == "side_stream":   # the backend's default-stream work ordered with torch's stream
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            ours = run(m)
        torch.cuda.current_stream().wait_stream(stream)
    else:
        ours = run(m)
    theirs = run(t)
    for a, b in zip(ours, theirs):
        assert a.device == b.device and a.dtype == b.dtype
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-9), (a - b).abs().max()

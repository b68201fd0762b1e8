"""fastrnn.torch under torch.compile: models holding its modules compile and compute what
they compute eagerly (dynamo traces around the modules, not into them)."""
import pytest

torch = pytest.importorskip("torch")
import fastrnn.torch as ft  # noqa: E402

CLASSES = [(ft.RNN, {}), (ft.RNN, {"nonlinearity": "relu"}), (ft.LSTM, {}), (ft.GRU, {}),
           (ft.LSTM, {"proj_size": 3, "bidirectional": True})]
IDS = ["rnn_tanh", "rnn_relu", "lstm", "gru", "lstm_proj_bidir"]


class _Model(torch.nn.Module):
    """torch layers before and after the recurrent one, so there is something to compile."""

    def __init__(self, cls, kw):
        super().__init__()
        # sizes that take the cpu backend's packed-weight path (and its weight cache)
        self.pre = torch.nn.Linear(5, 24, dtype=torch.float32)
        self.rnn = cls(24, 32, num_layers=2, batch_first=True, dtype=torch.float32, **kw)
        out = (kw.get("proj_size") or 32) * (2 if kw.get("bidirectional") else 1)
        self.post = torch.nn.Linear(out, 4, dtype=torch.float32)

    def forward(self, x):
        y, _ = self.rnn(torch.tanh(self.pre(x)))
        return self.post(y[:, -1]).relu()


class _Counting:
    """A torch.compile backend that runs each graph as traced (through AOTAutograd, so the
    backward is a compiled graph too) and keeps the graphs it was given."""

    def __init__(self):
        self.graphs = []

    def __call__(self, gm, example_inputs):
        from functorch.compile import make_boxed_func
        from torch._dynamo.backends.common import aot_autograd
        self.graphs.append(gm)
        return aot_autograd(fw_compiler=lambda g, _: make_boxed_func(g.forward))(gm, example_inputs)


def _step(model, x):
    """The output and every parameter's gradient of one forward and backward."""
    model.zero_grad()
    out = model(x)
    (out * torch.arange(out.numel(), dtype=out.dtype).reshape(out.shape)).sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


def _assert_same(eager, compiled):
    (out_e, grads_e), (out_c, grads_c) = eager, compiled
    torch.testing.assert_close(out_c, out_e, rtol=1e-6, atol=1e-6)
    assert len(grads_e) == len(grads_c)
    for a, b in zip(grads_e, grads_c):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("i", range(len(CLASSES)), ids=IDS)
def test_compiled_model_matches_eager(i):
    """By default dynamo runs a frame that calls an RNNBase module eagerly, as it does for
    torch.nn.LSTM. Before, it traced into fastrnn's forward and stopped the program
    (InternalTorchDynamoError on the cffi library object)."""
    torch.manual_seed(i)
    model = _Model(*CLASSES[i])
    x = torch.randn(4, 16, 5, dtype=torch.float32)
    eager = _step(model, x)   # the same model: its kernels' caches then hold its weights
    compiled = torch.compile(model, backend=_Counting())
    _assert_same(eager, _step(compiled, x))
    _assert_same(eager, _step(compiled, x))   # the second call runs what the first cached


@pytest.mark.parametrize("i", range(len(CLASSES)), ids=IDS)
def test_with_allow_rnn_the_layers_around_it_compile(i):
    """With dynamo's allow_rnn, the torch layers before and after compile into graphs and
    fastrnn's module runs between them (a graph break), forward and backward."""
    torch.manual_seed(i)
    model = _Model(*CLASSES[i])
    x = torch.randn(4, 16, 5, dtype=torch.float32)
    eager = _step(model, x)   # the same model: its kernels' caches then hold its weights
    backend = _Counting()
    with torch._dynamo.config.patch(allow_rnn=True):
        compiled = torch.compile(model, backend=backend)
        _assert_same(eager, _step(compiled, x))
    ops = {str(n.target) for g in backend.graphs for n in g.graph.nodes if n.op == "call_function"}
    assert len(backend.graphs) >= 2, "expected a graph before and one after the recurrent layer"
    assert any("linear" in op for op in ops) and any("tanh" in op for op in ops), ops


@pytest.mark.parametrize("inference", [False, True])
def test_compiled_module_alone(inference):
    """torch.compile of the module itself, with a PackedSequence, recorded or not."""
    torch.manual_seed(0)
    lstm = ft.LSTM(4, 32, num_layers=2, dtype=torch.float32)
    twin = torch.nn.LSTM(4, 32, num_layers=2, dtype=torch.float32)
    twin.load_state_dict(lstm.state_dict())
    x = torch.randn(16, 4, 4, dtype=torch.float32)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, [16, 2, 9, 12], enforce_sorted=False)
    compiled = torch.compile(lstm, backend=_Counting())
    with torch.inference_mode(inference):
        out, (h, c) = compiled(packed)
        ref, (h_ref, c_ref) = twin(packed)
    torch.testing.assert_close(out.data, ref.data.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h_ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(c, c_ref.detach(), rtol=1e-5, atol=1e-5)
    if not inference:
        out.data.sum().backward()
        ref.data.sum().backward()
        torch.testing.assert_close(lstm.weight_hh_l1.grad, twin.weight_hh_l1.grad, rtol=1e-5, atol=1e-5)

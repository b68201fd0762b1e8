"""Model API: shapes, state dicts, modes, gradient accumulation, registry and clear errors."""
import numpy as np
import pytest

import fastrnn
from fastrnn import backends
from fastrnn.backends import reference
from helpers import CELLS, layer_inputs, make_module, rel_err


def test_parameter_names_shapes_and_init_range():
    m = fastrnn.LSTM(3, 5, num_layers=2, bidirectional=True, seed=0)
    names = [n for n, _ in m.named_parameters()]
    assert names[:4] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    assert names[4] == "weight_ih_l0_reverse" and len(names) == 16
    p = dict(m.named_parameters())
    assert p["weight_ih_l1"].shape == (20, 10) and p["weight_hh_l1_reverse"].shape == (20, 5)
    assert all(np.abs(v).max() <= 1 / np.sqrt(5) for v in p.values())
    assert list(m.grads) == names
    assert not any(n.startswith("bias") for n, _ in fastrnn.GRU(3, 5, bias=False).named_parameters())


def test_seed_makes_init_reproducible():
    a = fastrnn.GRU(3, 4, seed=5).state_dict()
    b = fastrnn.GRU(3, 4, seed=5).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("cell", CELLS)
def test_output_shapes_batch_first_and_lengths(cell):
    m = make_module(cell, 3, 4, num_layers=2, bidirectional=True, batch_first=True, backend="reference")
    x = np.random.default_rng(0).standard_normal((5, 7, 3)).astype(np.float32)
    out, hn = m(x, lengths=[7, 3, 1, 0, 5])
    assert out.shape == (5, 7, 8)
    assert np.all(out[1, 3:] == 0) and np.all(out[3] == 0)
    h = hn[0] if cell == "lstm" else hn
    assert h.shape == (4, 5, 4)
    # a zero-length sequence keeps its initial state
    assert np.all(h[:, 3] == 0)


def test_state_dict_round_trip_and_all_or_nothing_load():
    a = fastrnn.LSTM(3, 4, seed=1)
    b = fastrnn.LSTM(3, 4, seed=2)
    b.load_state_dict(a.state_dict())
    x = np.ones((2, 1, 3), np.float32)
    assert np.array_equal(a(x)[0], b(x)[0])
    before = b.state_dict()
    bad = a.state_dict()
    bad["weight_hh_l0"] = np.zeros((3, 3))
    with pytest.raises(ValueError, match=r"weight_hh_l0.*expected shape \(16, 4\)"):
        b.load_state_dict(bad)
    assert all(np.array_equal(before[k], v) for k, v in b.state_dict().items())
    with pytest.raises(ValueError, match="missing keys"):
        b.load_state_dict({"weight_ih_l0": before["weight_ih_l0"]})
    # the state dict is a copy: changing it does not change the module
    sd = b.state_dict()
    sd["bias_ih_l0"][:] = 99
    assert not np.any(b.state_dict()["bias_ih_l0"] == 99)


@pytest.mark.parametrize("copy_of", ["pickle", "deepcopy"])
def test_a_module_pickles_and_copies_after_a_training_forward(copy_of):
    import copy
    import pickle
    m = fastrnn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2, dropout=0.2, seed=0)
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    out, _ = m(x)
    m.backward(np.ones_like(out))
    m(x)   # a pending backward refers to the backend; the copy leaves it behind
    c = pickle.loads(pickle.dumps(m)) if copy_of == "pickle" else copy.deepcopy(m)
    assert all(np.array_equal(v, c.grads[k]) for k, v in m.grads.items())
    assert all(np.array_equal(v, c.state_dict()[k]) for k, v in m.state_dict().items())
    with pytest.raises(ValueError, match="no saved forward pass"):
        c.backward(np.ones_like(out))
    m.backward(np.ones_like(out))   # the original keeps its own
    m.eval(), c.eval()
    assert np.array_equal(m(x)[0], c(x)[0])
    # the copy's arrays are its own
    c.named_parameters()[0][1][...] = 0
    assert not np.array_equal(m(x)[0], c(x)[0])


def test_gradients_accumulate_until_zero_grad():
    m = fastrnn.GRU(2, 3, backend="reference", dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((4, 2, 2))
    out, _ = m(x)
    m.backward(np.ones_like(out))
    g1 = m.grads["weight_hh_l0"].copy()
    m(x)
    m.backward(np.ones_like(out))
    assert np.allclose(m.grads["weight_hh_l0"], 2 * g1)
    m.zero_grad()
    assert not np.any(m.grads["weight_hh_l0"])


def test_eval_keeps_no_workspace_and_backward_needs_forward():
    m = fastrnn.LSTM(2, 3, backend="reference")
    x = np.zeros((3, 1, 2), np.float32)
    with pytest.raises(ValueError, match="backward: no saved forward"):
        m.backward(np.zeros((3, 1, 3), np.float32))
    m.eval()
    m(x)
    assert m._saved is None
    with pytest.raises(ValueError, match="backward"):
        m.backward(np.zeros((3, 1, 3), np.float32))
    m.train()
    out, _ = m(x)
    m.backward(np.zeros_like(out))
    with pytest.raises(ValueError, match="one backward"):
        m.backward(np.zeros_like(out))


def test_reference_train_false_keeps_no_workspace():
    rng = np.random.default_rng(0)
    args = layer_inputs(rng, "lstm", 4, 2, 3, 5, np.float64)
    y, h, c, saved = reference.forward_layer("lstm", *args, train=False)
    assert saved is None
    y2, h2, c2, saved2 = reference.forward_layer("lstm", *args, train=True)
    assert rel_err(y, y2) == 0 and rel_err(c, c2) == 0 and saved2 is not None


@pytest.mark.parametrize("kwargs, arg", [
    (dict(input_size=0, hidden_size=3), "input_size"),
    (dict(input_size=2, hidden_size=-1), "hidden_size"),
    (dict(input_size=2, hidden_size=3, num_layers=0), "num_layers"),
    (dict(input_size=2, hidden_size=3, dropout=1.5), "dropout"),
    (dict(input_size=2, hidden_size=3, backend="tpu"), "backend"),
    (dict(input_size=2, hidden_size=3, dtype=np.int32), "dtype"),
    (dict(input_size=2, hidden_size=3, nonlinearity="sigmoid"), "nonlinearity"),
])
def test_constructor_errors_name_the_argument(kwargs, arg):
    with pytest.raises((ValueError, TypeError), match=arg):
        fastrnn.RNN(**kwargs)


def test_forward_errors_name_the_argument():
    m = fastrnn.LSTM(3, 4, num_layers=2, backend="reference")
    x = np.zeros((5, 2, 3), np.float32)
    cases = [
        (lambda: m(np.zeros((5, 2, 4), np.float32)), ValueError, r"x: expected shape \(T, B, 3\).*got \(5, 2, 4\)"),
        (lambda: m(np.zeros((5, 2, 3, 1), np.float32)), ValueError, "x: expected shape"),
        (lambda: m(x.astype(np.float64)), TypeError, "x: expected dtype float32.*got float64"),
        (lambda: m([[1.0]]), TypeError, "x: expected a numpy.ndarray"),
        (lambda: m(x, np.zeros((2, 2, 4), np.float32)), TypeError, "hx: expected a tuple"),
        (lambda: m(x, (np.zeros((1, 2, 4), np.float32), np.zeros((2, 2, 4), np.float32))),
         ValueError, r"h_0.*expected shape \(2, 2, 4\).*got \(1, 2, 4\)"),
        (lambda: m(x, lengths=[5, 6]), ValueError, r"lengths: expected values in \[0, 5\]"),
        (lambda: m(x, lengths=[5]), ValueError, r"lengths: expected shape \(2,\)"),
        (lambda: m(x, lengths=[1.5, 2]), TypeError, "lengths: expected integers"),
        (lambda: m(x, lengths=[-1, 2]), ValueError, "lengths"),
    ]
    for call, exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            call()


class _DeviceArrayStandIn:
    """What the modules see of a CuPy array or torch CUDA tensor: the interface, no numpy."""
    __cuda_array_interface__ = dict(shape=(5, 2, 3), typestr="<f4", data=(0, False), version=3)
    shape, dtype = (5, 2, 3), np.dtype(np.float32)


def test_device_arrays_are_refused_with_the_ways_in():
    """The modules take numpy arrays; a device array gets an error that says where device
    arrays are used in place (fastrnn.torch, the cuda backend's layer calls)."""
    m = fastrnn.GRU(3, 4, backend="reference")
    d = _DeviceArrayStandIn()
    hint = "a CUDA device array: the modules take numpy arrays.*fastrnn.torch.*forward_layer"
    with pytest.raises(TypeError, match="x: expected a numpy.ndarray or a fastrnn.Lookup, got _DeviceArrayStandIn " + f"[(]{hint}"):
        m(d)
    with pytest.raises(TypeError, match=f"hx: expected a numpy.ndarray, got _DeviceArrayStandIn [(]{hint}"):
        m(np.zeros((5, 2, 3), np.float32), d)
    m(np.zeros((5, 2, 3), np.float32))
    with pytest.raises(TypeError, match=f"grad_out: expected a numpy.ndarray, got _DeviceArrayStandIn [(]{hint}"):
        m.backward(d)
    with pytest.raises(TypeError, match=r"x: expected a numpy.ndarray or a fastrnn.Lookup, got list$"):
        m([[1.0]])   # no hint for what is not a device array


def test_backward_errors_name_the_argument():
    m = fastrnn.GRU(3, 4, backend="reference")
    out, hn = m(np.zeros((5, 2, 3), np.float32))
    with pytest.raises(ValueError, match=r"grad_out: expected shape \(5, 2, 4\)"):
        m.backward(np.zeros((5, 2, 5), np.float32))
    with pytest.raises(TypeError, match="grad_out: expected dtype float32"):
        m.backward(np.zeros((5, 2, 4)))
    with pytest.raises(ValueError, match="grad_hn: expected shape"):
        m.backward(np.zeros_like(out), np.zeros((2, 2, 4), np.float32))


@pytest.mark.parametrize("name", ["reference"] + [n for n in ("cpu",) if n in backends.available()])
def test_backend_contract_checks_before_any_work(name):
    be = backends.get(name)
    rng = np.random.default_rng(0)
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = layer_inputs(rng, "lstm", 4, 2, 3, 5, np.float32)
    cases = [
        (dict(w_hh=w_hh[:-1]), ValueError, "w_hh: expected shape"),
        (dict(w_ih=w_ih[:, :2]), ValueError, r"w_ih: expected shape \(20, 3\)"),
        (dict(h0=h0.astype(np.float64)), TypeError, "h0: expected dtype float32"),
        (dict(c0=None), TypeError, "c0: expected a numpy.ndarray"),
        (dict(b_ih=b_ih[:3]), ValueError, "b_ih"),
        (dict(x=x[0]), ValueError, r"x: expected 3 dimensions"),
        (dict(x=x.astype(np.int64)), TypeError, "x: expected dtype float32 or float64"),
        (dict(b_hh=None), ValueError, "b_ih, b_hh: expected both or neither"),
    ]
    base = dict(x=x, h0=h0, c0=c0, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh)
    for change, exc, pattern in cases:
        args = dict(base, **change)
        with pytest.raises(exc, match=pattern):
            be.forward_layer("lstm", **args)
    with pytest.raises(ValueError, match="cell: expected one of"):
        be.forward_layer("lstmx", **base)
    _, _, _, saved = be.forward_layer("lstm", **base)
    with pytest.raises(ValueError, match="dy: expected shape"):
        be.backward_layer("lstm", saved, np.zeros((4, 2, 6), np.float32), None, None)
    with pytest.raises(ValueError, match="saved"):
        be.backward_layer("lstm", None, None, None, None)
    # another backend's workspace holds other arrays under the same names: refused
    for other in backends.available():
        if other != name and other != "cuda":
            theirs = backends.get(other).forward_layer("lstm", **base)[3]
            with pytest.raises(ValueError, match=f"saved: expected the workspace of a {name} 'lstm'"):
                be.backward_layer("lstm", theirs, None, None, None)


def test_registry():
    assert "reference" in backends.available()
    assert backends.names() == ["reference", "cpu", "cuda"]
    assert backends.resolve("auto") in backends.available()
    assert backends.why_unavailable("reference") is None
    with pytest.raises(ValueError, match="backend: expected one of"):
        backends.get("fpga")


def test_import_does_not_import_torch():
    import subprocess
    import sys
    code = "import sys, fastrnn; fastrnn.LSTM(2, 3); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_array_pool_reuses_and_bounds():
    from fastrnn.backends.pool import ArrayPool
    pool = ArrayPool(max_bytes=1000, per_shape=1)
    a = pool.empty((10,), np.float32)
    pool.release(a)
    assert pool.cached_bytes == 40 and pool.empty((10,), np.float32) is a
    assert pool.empty((10,), np.float64) is not a
    pool.release(np.empty(1000, np.float32))  # over max_bytes: not kept
    assert pool.cached_bytes == 0
    pool.release(a[2:])  # a view does not own its memory: not kept
    assert pool.cached_bytes == 0


@pytest.mark.parametrize("threads", [1, 3])
def test_zero_fill_clears_exactly_the_arrays(threads):
    """zero_grad's fill: big contiguous arrays go to C (memset split over threads), the
    rest to numpy; a strided view clears its own elements and no others."""
    saved = fastrnn.get_num_threads()
    fastrnn.set_num_threads(threads)
    try:
        base = np.ones((700, 700), np.float32)
        arrays = [np.ones(3, np.float32), np.ones(300_001, np.float64), np.ones((513, 517), np.float32),
                  base[:, ::2]]
        backends.zero_fill(arrays)
    finally:
        fastrnn.set_num_threads(saved)
    assert not any(a.any() for a in arrays)
    assert (base[:, 1::2] == 1).all()
    frozen = np.ones(100_000)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        backends.zero_fill([frozen])


def test_zero_grad_clears_every_gradient():
    m = fastrnn.LSTM(300, 300, seed=0)           # weight gradients over the C fill's threshold
    x = np.random.default_rng(0).standard_normal((4, 2, 300)).astype(np.float32)
    m(x)
    m.backward(np.ones((4, 2, 300), np.float32))
    assert all(g.any() for g in m.grads.values())
    m.zero_grad()
    assert not any(g.any() for g in m.grads.values())

"""LSTM with a projection (PyTorch's proj_size): the cpu kernels against the reference, the
reference and the drop-in against torch.nn.LSTM(proj_size=...), and the argument checks."""
import os

import numpy as np
import pytest

from fastrnn import backends
from helpers import lstmp_inputs, random_lengths, rel_err, run_lstmp as run

reference = backends.get("reference")
_skip_without_cpu = pytest.mark.skipif("cpu" not in backends.available(),
                                       reason=f"cpu backend unavailable: {backends.why_unavailable('cpu')}")


def needs_cpu(test):
    """A cpu-backend test, run on the kernels as chosen by size and on the packed ones only
    (conftest.py's both_cpu_paths: the small shapes here would otherwise skip the packed)."""
    return pytest.mark.usefixtures("both_cpu_paths")(_skip_without_cpu(test))


# odd sizes: H and P not multiples of the vector width or the thread split; P = 1; P near H
SHAPES = [(6, 4, 5, 37, 11), (3, 1, 2, 9, 1), (5, 3, 4, 20, 19), (1, 2, 3, 8, 4)]


@needs_cpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("ragged", [False, True])
def test_cpu_matches_reference(dtype, reverse, ragged):
    cpu = backends.get("cpu")
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for k, (T, B, I, H, P) in enumerate(SHAPES):
        rng = np.random.default_rng([k, reverse, ragged])
        args = lstmp_inputs(rng, T, B, I, H, P, dtype)
        lengths = random_lengths(rng, T, B) if ragged else None
        ours = run(cpu, args, lengths, reverse, k)
        ref = run(reference, [a.astype(np.float64) for a in args], lengths, reverse, k)
        assert len(ours) == len(ref) == 11   # y, h, c, dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr
        for name, a, b in zip("y h c dx dh0 dc0 dw_ih dw_hh db_ih db_hh dw_hr".split(), ours, ref):
            assert a.shape == b.shape and a.dtype == dtype, name
            assert rel_err(a, b) < tol, (name, (T, B, I, H, P), rel_err(a, b))


@needs_cpu
@pytest.mark.parametrize("shape", [(3, 2, 0, 5, 2), (0, 2, 3, 5, 2), (3, 0, 3, 5, 2)],
                         ids=["no_inputs", "no_steps", "no_batch"])
def test_cpu_empty_dimensions_match_reference(shape):
    cpu = backends.get("cpu")
    args = lstmp_inputs(np.random.default_rng(1), *shape, np.float64)
    ours, ref = run(cpu, args, None, False, 0), run(reference, args, None, False, 0)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape and np.allclose(a, b, atol=1e-12)


@needs_cpu
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_cpu_threads_and_inference(threads):
    """Any thread split gives the same numbers; the inference forward equals the training one."""
    import fastrnn
    cpu = backends.get("cpu")
    saved_threads = fastrnn.get_num_threads()
    try:
        rng = np.random.default_rng(5)
        args = lstmp_inputs(rng, 7, 5, 6, 45, 13, np.float32)
        lengths = random_lengths(rng, 7, 5)
        fastrnn.set_num_threads(1)
        one = run(cpu, args, lengths, True, 1)
        fastrnn.set_num_threads(threads)
        many = run(cpu, args, lengths, True, 1)
        *a, w_hr = args
        y, h, c, saved = cpu.forward_layer("lstm", *a, lengths=lengths, reverse=True, train=False, w_hr=w_hr)
        assert saved is None
        for u, v in zip([y, h, c], many[:3]):
            assert np.array_equal(u, v)
        for u, v in zip(one, many):
            assert rel_err(u, v) < 1e-6
    finally:
        fastrnn.set_num_threads(saved_threads)


@needs_cpu
@pytest.mark.parametrize("changed", ["w_hh", "w_hr", "w_ih"])
def test_cpu_packed_weights_follow_in_place_changes(changed):
    """The packed weights are cached per version, w_hr included: an in-place edit repacks."""
    cpu = backends.get("cpu")
    # T * B = 36: above cpu.DIRECT_MAX_ROWS, so inference runs on the packed weights
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = lstmp_inputs(np.random.default_rng(2), 12, 3, 4, 20, 6, np.float64)
    weights = dict(w_ih=w_ih, w_hh=w_hh, w_hr=w_hr)
    call = lambda be: be.forward_layer("lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh, train=False, w_hr=w_hr)[0]
    cpu.packed_cache.clear()
    before = cpu.packed_cache.packs
    assert np.allclose(call(cpu), call(reference), atol=1e-12)
    assert np.array_equal(call(cpu), call(cpu)) and cpu.packed_cache.packs == before + 1   # reused
    weights[changed][1] *= -2.0
    assert np.allclose(call(cpu), call(reference), atol=1e-12)
    assert cpu.packed_cache.packs == before + 2


@needs_cpu
@pytest.mark.path_choice
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reverse,ragged", [(False, False), (True, True)])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_cpu_small_calls_read_unpacked_weights(dtype, reverse, ragged, threads):
    """At most cpu.DIRECT_MAX_ROWS (step, sequence) rows: the unpacked kernel, inference and
    training (then BPTT packs its own parts of W_hh and W_hr), against the reference, with
    and without bias, I = 0, P > H; nothing goes through the packed-weights cache."""
    import fastrnn
    cpu = backends.get("cpu")
    saved_threads = fastrnn.get_num_threads()
    tol = 1e-5 if dtype == np.float32 else 1e-12
    try:
        fastrnn.set_num_threads(threads)
        packs = cpu.packed_cache.packs
        for k, (T, B, I, H, P) in enumerate([(1, 1, 6, 37, 11), (16, 1, 3, 20, 19), (1, 32, 4, 9, 1),
                                             (3, 5, 0, 12, 4), (2, 3, 5, 8, 13), (8, 4, 3, 10, 6)]):
            rng = np.random.default_rng([k, threads, reverse])
            *a, w_hr = lstmp_inputs(rng, T, B, I, H, P, dtype, bias=k % 2 == 0)
            lengths = random_lengths(rng, T, B) if ragged else None
            ours = cpu.forward_layer("lstm", *a, lengths=lengths, reverse=reverse, train=False, w_hr=w_hr)
            ref = reference.forward_layer("lstm", *[None if v is None else v.astype(np.float64) for v in a],
                                          lengths=lengths, reverse=reverse, train=False, w_hr=w_hr.astype(np.float64))
            assert ours[3] is None
            for u, v in zip(ours[:3], ref[:3]):
                assert u.shape == v.shape and u.dtype == dtype and rel_err(u, v) < tol, (T, B, I, H, P)
            args = (*a, w_hr)
            trained = run(cpu, args, lengths, reverse, k)
            want = run(reference, [None if v is None else v.astype(np.float64) for v in args], lengths, reverse, k)
            for u, v in zip(trained, want):
                assert (u is None) == (v is None)
                if v is not None:
                    assert u.shape == v.shape and rel_err(u, v) < 10 * tol, ("training", T, B, I, H, P)
        assert cpu.packed_cache.packs == packs
    finally:
        fastrnn.set_num_threads(saved_threads)


@needs_cpu
def test_cpu_backward_consumes_unless_retained_and_refuses_grads_out():
    cpu = backends.get("cpu")
    *a, w_hr = lstmp_inputs(np.random.default_rng(0), 4, 2, 3, 8, 3, np.float32)
    y, h, c, saved = cpu.forward_layer("lstm", *a, w_hr=w_hr)
    first = cpu.backward_layer("lstm", saved, np.ones_like(y), None, None, retain=True)
    again = cpu.backward_layer("lstm", saved, np.ones_like(y), None, None)
    for u, v in zip(first, again):
        assert u is None or np.array_equal(u, v)
    with pytest.raises(ValueError, match="already used"):
        cpu.backward_layer("lstm", saved, np.ones_like(y), None, None)
    y, h, c, saved = cpu.forward_layer("lstm", *a, w_hr=w_hr)
    with pytest.raises(ValueError, match="grads_out"):
        cpu.backward_layer("lstm", saved, None, None, None, grads_out=tuple(np.zeros_like(w) for w in a[3:7]))


@pytest.mark.parametrize("name", ["reference", "cpu", "cuda"])
def test_bad_shapes_name_the_argument(name):
    if name not in backends.available():
        pytest.skip(f"{name} backend unavailable")
    be = backends.get(name)
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = lstmp_inputs(np.random.default_rng(0), 4, 2, 3, 8, 3, np.float64)
    good = dict(x=x, h0=h0, c0=c0, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh)
    call = lambda cell="lstm", w_hr=w_hr, **kw: be.forward_layer(cell, *dict(good, **kw).values(), w_hr=w_hr)
    with pytest.raises(ValueError, match=r"w_hh: expected shape \(4\*H, P\)"):
        call(w_hh=np.zeros((32, 8)))
    with pytest.raises(ValueError, match=r"h0: expected shape \(2, 3\)"):
        call(h0=np.zeros((2, 8)))
    with pytest.raises(ValueError, match=r"c0: expected shape \(2, 8\)"):
        call(c0=np.zeros((2, 3)))
    with pytest.raises(TypeError, match="w_hr: expected dtype float64"):
        call(w_hr=w_hr.astype(np.float32))
    with pytest.raises(ValueError, match="only an LSTM has a projection"):
        be.forward_layer("gru", x, h0, None, np.zeros((24, 3)), np.zeros((24, 3)), None, None, w_hr=w_hr)
    y, h, c, saved = call()
    with pytest.raises(ValueError, match=r"dy: expected shape \(4, 2, 3\)"):
        be.backward_layer("lstm", saved, np.zeros((4, 2, 8)), None, None)


# ----- the cuda backend (the Numba simulator in CI) --------------------------------------
needs_cuda = pytest.mark.skipif("cuda" not in backends.available(),
                                reason=f"cuda backend unavailable: {backends.why_unavailable('cuda')}")
# P > H too: the gates kernel's threads (one per unit) copy a P-wide state row
# (shape, ragged, bias): P < H, P > H, P = 1; ragged or not, bias or not
CUDA_SHAPES = [((3, 3, 4, 9, 4), True, True), ((2, 2, 2, 3, 5), True, False), ((2, 1, 3, 4, 1), False, True)]


@needs_cuda
@pytest.mark.parametrize("dtype, reverse, shapes", [(np.float64, False, (0, 2)), (np.float32, True, (1,))])
def test_cuda_matches_reference(dtype, reverse, shapes):
    """(the shapes are split between the two runs to keep the simulator's time down)"""
    cuda = backends.get("cuda")
    tol = 2e-5 if dtype == np.float32 else 1e-12
    for k in shapes:
        (T, B, I, H, P), ragged, bias = CUDA_SHAPES[k]
        rng = np.random.default_rng([k, reverse, 7])
        args = lstmp_inputs(rng, T, B, I, H, P, dtype, bias=bias)
        lengths = random_lengths(rng, T, B) if ragged else None
        ours = run(cuda, args, lengths, reverse, k)
        ref = run(reference, [None if a is None else a.astype(np.float64) for a in args], lengths, reverse, k)
        assert len(ours) == len(ref) == 11
        for name, a, b in zip("y h c dx dh0 dc0 dw_ih dw_hh db_ih db_hh dw_hr".split(), ours, ref):
            assert isinstance(a, np.ndarray) and a.shape == b.shape and a.dtype == dtype, name
            assert rel_err(a, b) < tol, (name, (T, B, I, H, P), rel_err(a, b))
        assert cuda.last_path["forward"] == "projection"


@needs_cuda
def test_cuda_inference_and_device_arrays():
    """Inference equals the training forward; device arrays in give device arrays out (every
    gradient, dw_hr included); a second backward from the same workspace gives the same."""
    from numba import cuda as nb_cuda
    cuda = backends.get("cuda")
    rng = np.random.default_rng(11)
    args = lstmp_inputs(rng, 2, 3, 2, 6, 2, np.float64)
    lengths = np.array([2, 1, 0])
    ref = run(reference, args, lengths, True, 3)
    *a, w_hr = args
    y, h, c, saved = cuda.forward_layer("lstm", *a, lengths=lengths, reverse=True, train=False, w_hr=w_hr)
    assert saved is None
    for u, v in zip((y, h, c), ref[:3]):
        assert rel_err(u, v) < 1e-12
    dev = [nb_cuda.to_device(v) for v in args]
    y, h, c, saved = cuda.forward_layer("lstm", *dev[:-1], lengths=lengths, reverse=True, w_hr=dev[-1])
    assert all(hasattr(v, "copy_to_host") and not isinstance(v, np.ndarray) for v in (y, h, c))
    g_rng = np.random.default_rng(3)   # run()'s incoming gradients
    dy, dh, dc = (g_rng.standard_normal(s) for s in (y.shape, h.shape, c.shape))
    for _ in range(2):
        grads = cuda.backward_layer("lstm", saved, *(nb_cuda.to_device(g) for g in (dy, dh, dc)))
        assert len(grads) == 8 and all(hasattr(g, "copy_to_host") for g in grads)
        for u, v in zip((y, h, c) + tuple(grads), ref):
            assert rel_err(u.copy_to_host(), v) < 1e-12


@needs_cuda
@pytest.mark.parametrize("shape", [(3, 2, 0, 5, 2), (0, 2, 3, 5, 2), (3, 0, 3, 5, 2)],
                         ids=["no_inputs", "no_steps", "no_batch"])
def test_cuda_empty_dimensions_match_reference(shape):
    args = lstmp_inputs(np.random.default_rng(1), *shape, np.float64)
    ours, ref = run(backends.get("cuda"), args, None, False, 0), run(reference, args, None, False, 0)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape and np.allclose(a, b, atol=1e-12)


# ----- against torch.nn.LSTM(proj_size=...) through the drop-in -------------------------
torch = pytest.importorskip("torch")


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("form", ["time_major", "batch_first", "unbatched", "packed", "hx", "no_bias"])
def test_dropin_matches_torch(backend, form):
    """Outputs, states and every gradient (input, hx, all parameters) in float64."""
    if backend not in backends.available():
        pytest.skip(f"{backend} backend unavailable")
    import fastrnn.torch as ft
    from test_torch_adapter import _assert_same, _run
    torch.manual_seed(3)
    kw = dict(num_layers=2, bidirectional=True, proj_size=3, dtype=torch.float64)
    if form == "batch_first":
        kw["batch_first"] = True
    if form == "no_bias":
        kw["bias"] = False
    theirs = torch.nn.LSTM(4, 6, **kw)
    ours = ft.LSTM(4, 6, backend=backend, **kw)
    ours.load_state_dict(theirs.state_dict())
    T, B = 7, 3
    shape = (B, T, 4) if form == "batch_first" else (T, 4) if form == "unbatched" else (T, B, 4)
    x = torch.randn(shape, dtype=torch.float64)
    hx = None
    if form == "hx":
        hx = (torch.randn(4, B, 3, dtype=torch.float64), torch.randn(4, B, 6, dtype=torch.float64))
    if form == "packed":
        x = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([4, 7, 2]), enforce_sorted=False)
        (out_m, (h_m, c_m)), (out_t, (h_t, c_t)) = ours(x), theirs(x)
        assert out_m.data.shape == out_t.data.shape and h_m.shape == h_t.shape and c_m.shape == c_t.shape
        _assert_same([out_m.data, h_m, c_m], [out_t.data, h_t, c_t], 1e-12)
        loss = lambda o, h, c: (o.data * torch.arange(o.data.numel(), dtype=o.data.dtype).reshape(o.data.shape)).sum() \
            + h.sum() + 2 * c.sum()
        gm = torch.autograd.grad(loss(out_m, h_m, c_m), list(ours.parameters()))
        gt = torch.autograd.grad(loss(out_t, h_t, c_t), list(theirs.parameters()))
        _assert_same(list(gm), list(gt), 1e-10)
        return
    _assert_same(_run(ours, x, hx), _run(theirs, x, hx), 1e-10)


@needs_cuda
def test_dropin_cuda_backend_with_cpu_tensors():
    """backend='cuda' on CPU tensors (copied to the device and back; the simulator in CI):
    a dense batch with hx and a packed bidirectional one: outputs and every gradient as torch.nn's."""
    import fastrnn.torch as ft
    from test_torch_adapter import _assert_same, _run
    torch.manual_seed(6)
    kw = dict(bidirectional=True, proj_size=2, dtype=torch.float64)
    theirs = torch.nn.LSTM(3, 4, **kw)
    ours = ft.LSTM(3, 4, backend="cuda", **kw)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 2, 3, dtype=torch.float64)
    # dense with hx: one direction (the reverse one runs in the packed call below)
    one = dict(proj_size=2, dtype=torch.float64)
    theirs1, ours1 = torch.nn.LSTM(3, 4, **one), ft.LSTM(3, 4, backend="cuda", **one)
    ours1.load_state_dict(theirs1.state_dict())
    hx = (torch.randn(1, 2, 2, dtype=torch.float64), torch.randn(1, 2, 4, dtype=torch.float64))
    _assert_same(_run(ours1, x, hx), _run(theirs1, x, hx), 1e-10)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([1, 2]), enforce_sorted=False)
    _assert_same(_packed_run(ours, packed), _packed_run(theirs, packed), 1e-10)


def _packed_run(module, packed):
    """Outputs and parameter gradients of a linear loss, for a packed input."""
    out, (h, c) = module(packed)
    g = torch.Generator(device=out.data.device).manual_seed(0)
    w = lambda a: torch.randn(a.shape, generator=g, dtype=a.dtype, device=a.device)
    loss = (out.data * w(out.data)).sum() + (h * w(h)).sum() + (c * w(c)).sum()
    return [out.data, h, c] + list(torch.autograd.grad(loss, list(module.parameters())))


gpu_tensors = pytest.mark.skipif(
    not torch.cuda.is_available() or "cuda" not in backends.available()
    or os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", reason="needs a CUDA GPU with torch's CUDA build")


@gpu_tensors
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dropin_cuda_tensors_match_torch_on_the_gpu(dtype):
    """CUDA tensors in and out, against torch.nn.LSTM(proj_size) (cuDNN) on the same device."""
    import fastrnn.torch as ft
    from test_torch_adapter import _assert_same, _run
    torch.manual_seed(7)
    dev = torch.device("cuda")
    kw = dict(num_layers=2, bidirectional=True, proj_size=24, dtype=dtype, device=dev)
    theirs = torch.nn.LSTM(40, 64, **kw)
    ours = ft.LSTM(40, 64, **kw)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(33, 9, 40, dtype=dtype, device=dev)
    hx = (torch.randn(4, 9, 24, dtype=dtype, device=dev), torch.randn(4, 9, 64, dtype=dtype, device=dev))
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.randint(1, 34, (9,)), enforce_sorted=False)
    tol = 1e-9 if dtype == torch.float64 else 2e-4
    with torch.backends.cudnn.flags(allow_tf32=False):
        _assert_same(_run(ours, x, hx), _run(theirs, x, hx), tol)
        _assert_same(_packed_run(ours, packed), _packed_run(theirs, packed), tol)


@needs_cpu
def test_dropin_gradcheck_with_projection():
    import fastrnn.torch as ft
    torch.manual_seed(4)
    m = ft.LSTM(3, 5, proj_size=2, num_layers=2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(4, 2, 5, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in m.named_parameters()]
    assert "weight_hr_l1_reverse" in names

    def f(x, h0, c0, *params):
        out, (h, c) = torch.func.functional_call(m, dict(zip(names, params)), (x, (h0, c0)))
        return out, h, c
    params = [p.detach().clone().requires_grad_(True) for p in m.parameters()]
    assert torch.autograd.gradcheck(f, (x, h0, c0, *params), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_numpy_module_matches_torch(backend, batch_first):
    """fastrnn.LSTM(proj_size=...) from a torch module: outputs, states, and every gradient
    through module.backward (ragged batch, hx, 2 layers, both directions)."""
    import fastrnn
    if backend not in backends.available():
        pytest.skip(f"{backend} backend unavailable")
    torch.manual_seed(5)
    t = torch.nn.LSTM(4, 7, num_layers=2, bidirectional=True, proj_size=3, batch_first=batch_first,
                      dtype=torch.float64)
    m = fastrnn.LSTM.from_torch(t, backend=backend)
    assert m.proj_size == 3 and [n for n, _ in m.named_parameters()] == [n for n, _ in t.named_parameters()]
    B, T = 3, 6
    lengths = [6, 2, 4]
    x = torch.randn((B, T, 4) if batch_first else (T, B, 4), dtype=torch.float64)
    h0, c0 = torch.randn(4, B, 3, dtype=torch.float64), torch.randn(4, B, 7, dtype=torch.float64)
    out, (h, c) = m(x.numpy(), (h0.numpy(), c0.numpy()), lengths=np.array(lengths))
    xt, h0t, c0t = (a.clone().requires_grad_(True) for a in (x, h0, c0))
    packed = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lengths), batch_first=batch_first,
                                                     enforce_sorted=False)
    out_t, (h_t, c_t) = t(packed, (h0t, c0t))
    out_t = torch.nn.utils.rnn.pad_packed_sequence(out_t, batch_first=batch_first, total_length=T)[0]
    for a, b in ((out, out_t), (h, h_t), (c, c_t)):
        assert np.allclose(a, b.detach().numpy(), atol=1e-12)
    rng = np.random.default_rng(0)
    g_out, g_h, g_c = (rng.standard_normal(a.shape) for a in (out, h, c))
    g_out_masked = g_out * (out != 0)   # torch's padded positions get no gradient
    dx, (dh0, dc0) = m.backward(g_out_masked, (g_h, g_c))
    torch.autograd.backward([out_t, h_t, c_t], [torch.from_numpy(g) for g in (g_out_masked, g_h, g_c)])
    for a, b in ((dx, xt.grad), (dh0, h0t.grad), (dc0, c0t.grad)):
        assert np.allclose(a, b.numpy(), atol=1e-10)
    for name, p in t.named_parameters():
        assert np.allclose(m.grads[name], p.grad.numpy(), atol=1e-10), name
    back = m.to_torch()
    assert back.proj_size == 3 and all(torch.equal(p, q) for p, q in zip(back.parameters(), t.parameters()))


def test_numpy_module_proj_size_is_checked():
    import fastrnn
    with pytest.raises(ValueError, match="proj_size: expected 0, or for an LSTM 1 .. hidden_size - 1"):
        fastrnn.LSTM(3, 4, proj_size=4)
    with pytest.raises(ValueError, match="proj_size"):
        fastrnn.GRU(3, 4, proj_size=2)
    with pytest.raises(ValueError, match="proj_size: expected an integer >= 0"):
        fastrnn.LSTM(3, 4, proj_size=-1)
    m = fastrnn.LSTM(3, 5, proj_size=2, backend="reference")
    with pytest.raises(ValueError, match=r"hx\[0\] \(h_0\): expected shape \(1, 2, 2\).*proj_size"):
        m(np.zeros((4, 2, 3), np.float32), (np.zeros((1, 2, 5), np.float32), np.zeros((1, 2, 5), np.float32)))

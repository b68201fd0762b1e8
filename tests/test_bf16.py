"""precision='bfloat16': the reference's rounding, the cpu kernels against it, and the
errors that name what to change."""
import contextlib
import os
import subprocess
import sys

import numpy as np
import pytest

import fastrnn
from fastrnn import backends
from fastrnn.backends import reference
from fastrnn.bf16 import round_bf16
from fastrnn.lookup import Lookup
from helpers import CELLS, cpu_bf16, layer_inputs, make_module, random_lengths, rel_err


def _bits(a):
    return np.asarray(a, np.float32).view(np.uint32)


def test_round_bf16_ties_to_even_denormals_and_specials():
    one = np.float32(1.0)
    ulp = np.float32(2.0 ** -7)   # bfloat16's spacing at 1
    x = np.array([1 + ulp / 2, 1 + 3 * ulp / 2, 1 + ulp / 2 + 2.0 ** -20, -(1 + ulp / 2),
                  1e-40, -1e-40, np.inf, -np.inf, 3.4e38, 0.0, -0.0], np.float32)
    want = np.array([one, 1 + 2 * ulp, 1 + ulp, -one, 0.0, -0.0, np.inf, -np.inf, np.inf, 0.0, -0.0], np.float32)
    np.testing.assert_array_equal(_bits(round_bf16(x)), _bits(want))
    nan = round_bf16(np.array([np.nan, -np.nan], np.float32))
    assert np.isnan(nan).all() and (_bits(nan) & 0xFFFF == 0).all()
    r = round_bf16(np.random.default_rng(0).standard_normal(1000).astype(np.float32))
    assert (_bits(r) & 0xFFFF == 0).all()   # 8 significant bits left
    assert round_bf16(np.ones((2, 3), np.float32)).shape == (2, 3)


def test_kernel_rounding_is_round_bf16():
    """A relu RNN with one input, weight +-1 and nothing else gives y = relu(+-round(x)):
    the kernels' rounding of x, value by value (ties, denormals, large values)."""
    cpu = cpu_bf16()
    rng = np.random.default_rng(1)
    ulp = 2.0 ** -7
    x = np.concatenate([rng.standard_normal(500) * 10.0 ** rng.integers(-30, 30, 500),
                        [1 + ulp / 2, 1 + 3 * ulp / 2, 2 ** -126 * 0.5, 3.39e38, 1e-45]])
    x = np.concatenate([x, -x]).astype(np.float32)
    B = x.size
    for sign in (1.0, -1.0):
        w_ih = np.full((1, 1), sign, np.float32)
        w_hh = np.zeros((1, 1), np.float32)
        y, _, _, _ = cpu.forward_layer("rnn_relu", x.reshape(1, B, 1), np.zeros((B, 1), np.float32), None,
                                       w_ih, w_hh, None, None, train=False, precision="bfloat16")
        np.testing.assert_array_equal(_bits(y.ravel()), _bits(np.maximum(sign * round_bf16(x), 0)))


def test_reference_rounds_every_product_operand():
    """Reference bf16 = the float32 reference run on rounded weights, with the input and the
    state rounded too: one step from h0 = 0 equals float32 on rounded x and weights."""
    rng = np.random.default_rng(2)
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = layer_inputs(rng, "lstm", 1, 3, 5, 7, np.float32)
    h0[:] = 0
    got = reference.forward_layer("lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh, train=False, precision="bfloat16")
    want = reference.forward_layer("lstm", round_bf16(x), h0, c0, round_bf16(w_ih), round_bf16(w_hh),
                                   b_ih, b_hh, train=False)
    for a, b in zip(got[:3], want[:3]):
        np.testing.assert_array_equal(a, b)
    f32 = reference.forward_layer("lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh, train=False)
    assert 1e-4 < rel_err(got[0], f32[0]) < 3e-2   # rounded, but near


# odd sizes: H and I not multiples of the pair, the vector or the thread split
SHAPES = [(1, 1, 3, 5), (1, 7, 33, 17), (1, 40, 511, 129), (1, 13, 100, 300), (1, 32, 256, 256)]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("reverse,ragged", [(False, False), (True, True)])
def test_one_step_matches_reference_bf16_closely(cell, reverse, ragged, num_threads):
    """One step: the same rounded operands and exact products, only the order of the float32
    sums differs, so the outputs agree to float32 rounding (1, 2 and 3 threads)."""
    cpu = cpu_bf16()
    for threads in (1, 2, 3):
        num_threads(threads)
        for k, (T, B, I, H) in enumerate(SHAPES):
            rng = np.random.default_rng([k, threads, reverse])
            args = layer_inputs(rng, cell, T, B, I, H, np.float32)
            lengths = random_lengths(rng, T, B) if ragged else None
            got = cpu.forward_layer(cell, *args, lengths=lengths, reverse=reverse, train=False, precision="bfloat16")
            want = reference.forward_layer(cell, *args, lengths=lengths, reverse=reverse, train=False,
                                           precision="bfloat16")
            assert got[3] is None
            for a, b in zip(got[:3], want[:3]):
                if b is not None:
                    np.testing.assert_allclose(a, b, rtol=2e-6, atol=2e-6, err_msg=str((threads, T, B, I, H)))


@pytest.mark.parametrize("cell", CELLS)
def test_one_step_direct_and_packed_paths(cell, num_threads):
    """A step of at most DIRECT_MAX_BATCH_BF16 rows reads the float weights directly
    (csrc/direct.inc rounds them as it loads), a larger one or one inside frozen_weights()
    the packed panels; both match the reference's bfloat16 with K (I and H) on every side
    of the kernels' 16- and 32-value loads, ragged and reversed, on 1 and 3 threads."""
    from fastrnn.backends import cpu as cpu_mod
    cpu = cpu_bf16()
    for threads in (1, 3):
        num_threads(threads)
        for k, (I, H) in enumerate([(1, 1), (15, 16), (17, 31), (32, 33), (47, 64), (100, 200)]):
            for B, direct in ((1, True), (cpu_mod.DIRECT_MAX_BATCH_BF16, True),
                              (cpu_mod.DIRECT_MAX_BATCH_BF16 + 1, False)):
                rng = np.random.default_rng([k, B, threads])
                args = layer_inputs(rng, cell, 1, B, I, H, np.float32)
                lengths = random_lengths(rng, 1, B)
                want = reference.forward_layer(cell, *args, lengths=lengths, reverse=True, train=False,
                                               precision="bfloat16")
                for frozen in (False, True):
                    cpu_mod.packed_cache_bf16.clear()
                    with fastrnn.frozen_weights() if frozen else contextlib.nullcontext():
                        got = cpu.forward_layer(cell, *args, lengths=lengths, reverse=True, train=False,
                                                precision="bfloat16")
                    # the direct path packs nothing
                    assert (len(cpu_mod.packed_cache_bf16) == 0) == (direct and not frozen), (I, H, B, frozen)
                    for a, b in zip(got[:3], want[:3]):
                        if b is not None:
                            np.testing.assert_allclose(a, b, rtol=2e-6, atol=2e-6,
                                                       err_msg=str((threads, I, H, B, frozen)))


def _held(w):
    """bfloat16 weights as the uint16 bits a torch bfloat16 tensor holds (values rounded)."""
    return (round_bf16(w).view(np.uint32) >> 16).astype(np.uint16)


@pytest.mark.parametrize("cell", CELLS)
def test_weights_held_as_bfloat16_bits(cell, num_threads):
    """w_ih and w_hh given as bfloat16 (uint16 bits) give the same bits as float weights of
    the same values, on the direct and the packed paths, a Lookup input and I = 0; the
    reference reads them too."""
    from fastrnn.backends import cpu as cpu_mod
    cpu = cpu_bf16()
    num_threads(2)
    for k, (T, B, I, H) in enumerate([(1, 1, 5, 7), (1, 8, 33, 65), (1, 9, 100, 130), (7, 3, 40, 50),
                                      (12, 32, 64, 64), (3, 4, 0, 20)]):
        rng = np.random.default_rng([k, 11])
        x, h0, c0, w_ih, w_hh, b_ih, b_hh = layer_inputs(rng, cell, T, B, I, H, np.float32)
        w_ih, w_hh = round_bf16(w_ih), round_bf16(w_hh)
        held = _held(w_ih), _held(w_hh)   # one pair of arrays: the cache knows them by address
        packs = cpu_mod.packed_cache_bf16.packs
        for reverse in (False, True):
            kw = dict(lengths=random_lengths(rng, T, B), reverse=reverse, train=False, precision="bfloat16")
            want = cpu.forward_layer(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, **kw)
            got = cpu.forward_layer(cell, x, h0, c0, *held, b_ih, b_hh, **kw)
            ref = reference.forward_layer(cell, x, h0, c0, *held, b_ih, b_hh, **kw)
            for a, b, r in zip(got[:3], want[:3], ref[:3]):
                if b is not None:
                    np.testing.assert_array_equal(a, b, err_msg=str((T, B, I, H, reverse)))
                    np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-4)
        direct = T == 1 and B <= cpu_mod.DIRECT_MAX_BATCH_BF16
        # each version packed once, from the bits as from the floats
        assert cpu_mod.packed_cache_bf16.packs - packs == (0 if direct else 2), (T, B, I, H)
    if I:
        table = rng.standard_normal((6, I)).astype(np.float32)
        ids = rng.integers(0, 6, size=(T, B))
        got = cpu.forward_layer(cell, Lookup(table, ids), h0, c0, _held(w_ih), _held(w_hh), b_ih, b_hh,
                                train=False, precision="bfloat16")
        want = cpu.forward_layer(cell, table[ids], h0, c0, w_ih, w_hh, b_ih, b_hh, train=False,
                                 precision="bfloat16")
        np.testing.assert_array_equal(got[0], want[0])


def test_held_weights_when_the_runtime_grants_fewer_threads():
    """Packed for 2 threads, run by 1 (OMP_THREAD_LIMIT=1): with bfloat16 weights held as
    bits the kernel cannot pack its own slices (FASTRNN_ETEAM) and the backend runs it
    again on float copies; the result is the reference's."""
    cpu_bf16()
    code = """if 1:
        import numpy as np, fastrnn
        from fastrnn.backends import get
        from fastrnn.bf16 import round_bf16
        fastrnn.set_num_threads(2)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((6, 16, 24)).astype(np.float32)
        h0 = np.zeros((16, 32), np.float32)
        w_ih = round_bf16(0.2 * rng.standard_normal((96, 24)).astype(np.float32))
        w_hh = round_bf16(0.2 * rng.standard_normal((96, 32)).astype(np.float32))
        bits = lambda w: (w.view(np.uint32) >> 16).astype(np.uint16)
        kw = dict(train=False, precision="bfloat16")
        got = get("cpu").forward_layer("gru", x, h0, None, bits(w_ih), bits(w_hh), None, None, **kw)[0]
        want = get("reference").forward_layer("gru", x, h0, None, w_ih, w_hh, None, None, **kw)[0]
        print(float(np.abs(got - want).max()))
    """
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) < 1e-4


def test_held_weights_errors_name_what_to_change():
    cpu = cpu_bf16()
    rng = np.random.default_rng(12)
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = layer_inputs(rng, "lstm", 2, 3, 4, 5, np.float32)
    for be in (cpu, reference):
        with pytest.raises(TypeError, match="need precision='bfloat16'"):
            be.forward_layer("lstm", x, h0, c0, _held(w_ih), _held(w_hh), b_ih, b_hh, train=False)
        with pytest.raises(TypeError, match="w_ih, w_hh: expected both bfloat16"):
            be.forward_layer("lstm", x, h0, c0, _held(w_ih), w_hh, b_ih, b_hh, train=False, precision="bfloat16")
        with pytest.raises(ValueError, match="w_ih: expected shape"):
            be.forward_layer("lstm", x, h0, c0, _held(w_ih)[:, :3], _held(w_hh), b_ih, b_hh, train=False,
                             precision="bfloat16")
        with pytest.raises(TypeError, match="not taken with a projection.*pass float32 weights"):
            be.forward_layer("lstm", x, h0[:, :2], c0, _held(w_ih), _held(w_hh[:, :2]), b_ih, b_hh,
                             w_hr=w_hh[:2, :5].copy(), train=False, precision="bfloat16")


@pytest.mark.parametrize("cell", CELLS)
def test_sequences_match_reference_bf16(cell, num_threads):
    """Many steps, ragged, both directions, split by units and by batch: where a state lies
    on a rounding boundary the two sides may round it apart (2^-9 of it) and carry that on,
    so nearly every value agrees to float32 rounding and the rest stays near."""
    cpu = cpu_bf16()
    num_threads(2)
    for k, (T, B, I, H) in enumerate([(9, 5, 6, 37), (20, 32, 64, 64), (6, 19, 5, 37), (12, 3, 130, 200)]):
        assert cpu.splits_by_batch(cell, B, H, precision="bfloat16") == (k in (1, 2)), (cell, B, H)
        for reverse in (False, True):
            rng = np.random.default_rng([k, reverse, 7])
            args = layer_inputs(rng, cell, T, B, I, H, np.float32)
            lengths = random_lengths(rng, T, B)
            got = cpu.forward_layer(cell, *args, lengths=lengths, reverse=reverse, train=False, precision="bfloat16")
            want = reference.forward_layer(cell, *args, lengths=lengths, reverse=reverse, train=False,
                                           precision="bfloat16")
            f32 = reference.forward_layer(cell, *args, lengths=lengths, reverse=reverse, train=False)
            for a, b, c in zip(got[:3], want[:3], f32[:3]):
                if b is None:
                    continue
                d = np.abs(a - b)
                assert np.median(d) <= 1e-6 and d.max() <= 2e-2, (k, reverse, np.median(d), d.max())
                assert rel_err(a, c) <= 2e-2   # and bfloat16 stays near float32
            # past a sequence's end y is exactly 0, as in float32
            mask = np.arange(T)[:, None] >= lengths[None, :]
            assert (got[0][mask] == 0).all()


def test_thread_counts_and_splits_give_the_same_bits(num_threads):
    """Every column sums its pairs in one order whichever thread computes it, split by units
    or by batch rows: the outputs are bit-identical on 1, 2 and 3 threads."""
    cpu = cpu_bf16()
    rng = np.random.default_rng(3)
    for cell, B in (("lstm", 32), ("gru", 5), ("rnn_tanh", 12)):
        args = layer_inputs(rng, cell, 10, B, 48, 64, np.float32)
        outs = []
        for threads in (1, 2, 3):
            num_threads(threads)
            outs.append(cpu.forward_layer(cell, *args, train=False, precision="bfloat16")[0])
        assert all(np.array_equal(outs[0], o) for o in outs[1:]), cell


def test_module_matches_reference_module_and_float32(num_threads):
    """The module API: two layers, bidirectional, batch_first, ragged, hx, a Lookup input;
    the cpu module agrees with the reference module in bfloat16 and stays near float32."""
    cpu_bf16()
    rng = np.random.default_rng(4)
    for cell in CELLS:
        kw = dict(num_layers=2, bidirectional=True, batch_first=True, seed=5)
        m = make_module(cell, 24, 40, backend="cpu", precision="bfloat16", **kw).eval()
        r = make_module(cell, 24, 40, backend="reference", precision="bfloat16", **kw).eval()
        f = make_module(cell, 24, 40, backend="cpu", **kw).eval()
        x = rng.standard_normal((6, 11, 24)).astype(np.float32)
        lengths = random_lengths(rng, 11, 6)
        h0 = (0.5 * rng.standard_normal((4, 6, 40))).astype(np.float32)
        hx = (h0, h0.copy()) if cell == "lstm" else h0
        out, _ = m(x, hx, lengths)
        out_r, _ = r(x, hx, lengths)
        out_f, _ = f(x, hx, lengths)
        d = np.abs(out - out_r)
        assert np.median(d) <= 1e-6 and d.max() <= 2e-2, cell
        assert rel_err(out, out_f) <= 2e-2, cell
        table = rng.standard_normal((30, 24)).astype(np.float32)
        ids = rng.integers(0, 30, size=(6, 11))
        np.testing.assert_allclose(m(Lookup(table, ids))[0], m(table[ids])[0], rtol=0, atol=0)
    assert "precision='bfloat16'" in repr(m)


def test_weights_changed_in_place_are_repacked():
    """The packed bfloat16 weights follow the live arrays (an edit by hand repacks)."""
    cpu_bf16()
    m = fastrnn.GRU(8, 16, backend="cpu", precision="bfloat16", seed=0).eval()
    x = np.random.default_rng(6).standard_normal((4, 2, 8)).astype(np.float32)
    before = m(x)[0]
    m.named_parameters()[1][1][:] *= -1   # weight_hh_l0
    after = m(x)[0]
    r = fastrnn.GRU(8, 16, backend="reference", precision="bfloat16", seed=0).eval()
    r.load_state_dict(m.state_dict())
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, r(x)[0], rtol=0, atol=1e-5)


def test_errors_name_what_to_change():
    with pytest.raises(ValueError, match="precision: expected one of"):
        fastrnn.LSTM(4, 8, precision="bf16")
    with pytest.raises(TypeError, match="float32 module"):
        fastrnn.LSTM(4, 8, precision="bfloat16", dtype=np.float64)
    assert fastrnn.LSTM(4, 8, proj_size=3, precision="bfloat16").precision == "bfloat16"   # runs (tests below)
    x = np.zeros((3, 2, 4), np.float32)
    for backend in ("reference", "cpu"):
        if backend not in backends.available():
            continue
        m = fastrnn.LSTM(4, 8, precision="bfloat16", backend=backend)
        m.precision = "float16"
        with pytest.raises(ValueError, match="precision: expected one of"):
            m.eval()(x)
        be = backends.get(backend)
        args = layer_inputs(np.random.default_rng(0), "lstm", 3, 2, 4, 8, np.float32)
        with pytest.raises(TypeError, match="float32"):
            be.forward_layer("lstm", *[a.astype(np.float64) for a in args], train=False, precision="bfloat16")


def test_backend_without_bfloat16_is_refused_by_name():
    class NoBf16:
        name = "cuda"
    m = fastrnn.GRU(4, 8, precision="bfloat16").eval()
    with pytest.raises(RuntimeError, match="backend 'cuda' has no bfloat16 path"):
        m._precision_kwargs(NoBf16)


def test_cpu_without_avx512_bf16_says_why():
    """A forced lower instruction set has no bfloat16 kernels: the module says so by name,
    and the float32 path and the reference's bfloat16 still run."""
    if "cpu" not in backends.available():
        pytest.skip("cpu backend unavailable")
    code = (
        "import numpy as np, fastrnn\n"
        "from fastrnn.backends import cpu\n"
        "from fastrnn.lm import RNNLM\n"
        "def refused(call, *words):\n"
        "    try:\n"
        "        call()\n"
        "    except RuntimeError as e:\n"
        "        assert all(w in str(e) for w in words), e\n"
        "    else:\n"
        "        raise SystemExit(f'no error: {words}')\n"
        "assert cpu.bf16_unavailable_reason() and 'AVX512_BF16' in cpu.bf16_unavailable_reason()\n"
        "m = fastrnn.LSTM(4, 8, backend='cpu', precision='bfloat16').eval()\n"
        "x = np.ones((2, 1, 4), np.float32)\n"
        "refused(lambda: m(x), 'AVX512_BF16')\n"
        "m.precision = 'float32'; m(x)\n"
        "refused(lambda: cpu.dense_bf16(np.ones((1, 4), np.float32), np.ones((3, 4), np.float32)),\n"
        "        'dense_bf16', 'AVX512_BF16')\n"
        "refused(lambda: cpu.to_bf16_bits(np.ones(3, np.float32)), 'to_bf16_bits', 'AVX512_BF16')\n"
        "refused(lambda: cpu.matmul(np.ones((2, 4), np.float32), np.ones((4, 3), np.float32),\n"
        "                           precision='bfloat16'), 'matmul', 'AVX512_BF16')\n"
        "lm = RNNLM(5, 8, 1, backend='cpu')\n"
        "refused(lambda: lm.generate([1], 2, precision='bfloat16'), 'AVX512_BF16')\n"
        "assert lm.rnn.precision == 'float32'\n"
        "fastrnn.LSTM(4, 8, backend='reference', precision='bfloat16').eval()(x)\n"
        "print('ok')\n")
    env = dict(os.environ, FASTRNN_ISA="avx2")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@pytest.mark.parametrize("V, K, n", [(45, 71, 1), (8, 32, 3), (9, 33, 5), (1, 1, 1), (300, 16, 2), (7, 0, 2),
                                     (0, 5, 1), (5, 4, 0)])
def test_dense_bf16_matches_reference(V, K, n, num_threads):
    """A dense layer in bfloat16 products (RNNLM.generate's logits): float and held
    weights, with and without bias, on 1 and 3 threads, against the reference's rounded
    NumPy product; K on each side of the 16- and 32-value loads, rows around the eights."""
    from fastrnn.bf16 import to_bf16_bits
    cpu = cpu_bf16()
    rng = np.random.default_rng(V * 100 + K)
    x = rng.standard_normal((n, K)).astype(np.float32)
    w = rng.standard_normal((V, K)).astype(np.float32)
    b = rng.standard_normal(V).astype(np.float32)
    bits = to_bf16_bits(w)
    np.testing.assert_array_equal(bits.astype(np.uint32) << 16, round_bf16(w).view(np.uint32))
    want = reference.dense_bf16(x, w, b)
    np.testing.assert_array_equal(want, reference.dense_bf16(x, bits, b))   # the same values
    exact = round_bf16(x).astype(np.float64) @ round_bf16(w).astype(np.float64).T + b
    assert np.abs(want - exact).max(initial=0) < 1e-5 * (K + 1)
    for threads in (1, 3):
        num_threads(threads)
        for ww in (w, bits):
            got = cpu.dense_bf16(x, ww, b)
            assert got.shape == (n, V) and got.dtype == np.float32
            assert np.abs(got - exact).max(initial=0) < 1e-5 * (K + 1)
        np.testing.assert_array_equal(cpu.dense_bf16(x, bits), cpu.dense_bf16(x, w))
        assert np.abs(cpu.dense_bf16(x, w) + b - got).max(initial=0) < 1e-6 * (K + 1) + 1e-6


def test_cpu_to_bf16_bits_gives_the_reference_bits(num_threads):
    """The C rounding (held weights for dense_bf16) against bf16.to_bf16_bits: every tail
    length, ties, denormals, infinities, NaN, on 1 and 3 threads; 2-D shapes kept."""
    from fastrnn.bf16 import to_bf16_bits
    cpu = cpu_bf16()
    rng = np.random.default_rng(5)
    specials = np.array([1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8, 1e-40, -1e-40, np.inf, -np.inf, 3.4e38, np.nan,
                         -np.nan, 0.0, -0.0], np.float32)
    for threads in (1, 3):
        num_threads(threads)
        for n in list(range(0, 34)) + [70000]:
            a = rng.standard_normal(n).astype(np.float32)
            a[:len(specials)] = specials[:n]
            np.testing.assert_array_equal(cpu.to_bf16_bits(a), to_bf16_bits(a))
        w = rng.standard_normal((300, 17)).astype(np.float32)
        got = cpu.to_bf16_bits(w[:, ::2])   # a strided view: made contiguous first
        assert got.shape == (300, 9) and got.dtype == np.uint16
        np.testing.assert_array_equal(got, to_bf16_bits(w[:, ::2]))
    with pytest.raises(TypeError, match="a: expected a float32 numpy.ndarray, got float64"):
        cpu.to_bf16_bits(np.ones(3))


def test_dense_bf16_errors_name_the_argument():
    x, w = np.ones((2, 4), np.float32), np.ones((3, 4), np.float32)
    for be in [reference] + ([backends.get("cpu")] if "cpu" in backends.available() else []):
        with pytest.raises(TypeError, match="x: expected a 2-D float32"):
            be.dense_bf16(x.astype(np.float64), w)
        with pytest.raises(TypeError, match="w: expected a 2-D float32 or uint16"):
            be.dense_bf16(x, w.astype(np.float64))
        with pytest.raises(ValueError, match=r"w: expected shape \(V, 4\)"):
            be.dense_bf16(x, w[:, :3])
        with pytest.raises(ValueError, match=r"bias: expected a float32 numpy.ndarray of shape \(3,\)"):
            be.dense_bf16(x, w, np.ones(4, np.float32))


def _matmul_cases(rng):
    """(name, a, b) for each path of the C matmul: few rows (dots), G^T X with many rows
    (matmul_tn), the blocked product by columns and by rows; odd K, partial panels,
    transposed and strided operands."""
    g = rng.standard_normal((37, 1600)).astype(np.float32)
    w = rng.standard_normal((45, 70)).astype(np.float32)
    big = rng.standard_normal((130, 301)).astype(np.float32)
    yield "dots", rng.standard_normal((3, 70)).astype(np.float32), w.T
    yield "tn", g.T, rng.standard_normal((37, 45)).astype(np.float32)
    yield "columns", big[:, :77], rng.standard_normal((77, 301)).astype(np.float32)[:, ::3]
    yield "rows", big.T[:, ::2], w[:, :65].T
    yield "empty_k", big[:, :0], w[:, :0].T


def test_matmul_bf16_matches_rounded_sums(num_threads):
    """cpu.matmul(precision='bfloat16') (the LM decoder's three products) against the sums
    of the rounded operands in float64, on each path, 1 and 3 threads, writing and adding;
    the reference's matmul the same; neither is the float32 product."""
    cpu = cpu_bf16()
    rng = np.random.default_rng(11)
    for name, a, b in _matmul_cases(rng):
        exact = round_bf16(a).astype(np.float64) @ round_bf16(b).astype(np.float64)
        # float32 sums: a few units in the last place per term of the largest |a| |b| sum
        tol = 2.5e-7 * (a.shape[1] + 1) * (1 + (np.abs(a) @ np.abs(b)).max(initial=0))
        plain = a.astype(np.float64) @ b.astype(np.float64)
        if a.shape[1]:
            assert np.abs(plain - exact).max() > 10 * tol, name   # the rounding shows
        assert np.abs(reference.matmul(a, b, precision="bfloat16") - exact).max(initial=0) < tol, name
        for threads in (1, 3):
            num_threads(threads)
            got = cpu.matmul(a, b, precision="bfloat16")
            assert got.dtype == np.float32 and np.abs(got - exact).max(initial=0) < tol, (name, threads)
            acc = np.full(exact.shape, 0.5, np.float32)
            cpu.matmul(a, b, out=acc, accumulate=True, precision="bfloat16")
            assert np.abs(acc - 0.5 - exact).max(initial=0) < tol, (name, threads)


def test_matmul_precision_errors_name_what_to_change():
    a, b = np.ones((2, 4), np.float32), np.ones((4, 3), np.float32)
    for be in [reference] + ([backends.get("cpu")] if "cpu" in backends.available() else []):
        with pytest.raises(ValueError, match="precision: expected one of"):
            be.matmul(a, b, precision="float16")
        with pytest.raises(TypeError, match="precision='bfloat16': expected a float32"):
            be.matmul(a.astype(np.float64), b.astype(np.float64), precision="bfloat16")


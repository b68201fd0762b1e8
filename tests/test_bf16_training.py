"""precision='bfloat16' training: the cpu kernels' forward workspace and BPTT, whose products
round their operands (gate gradients, W_hh, h, x, W_ih) to bfloat16, against the reference
backend's NumPy rounding of the same operands."""
import numpy as np
import pytest

from fastrnn.backends import reference
from fastrnn.cells import get_cell
from fastrnn.bf16 import round_bf16
from fastrnn.lookup import Lookup
from helpers import CELLS, cpu_bf16, layer_inputs, lstmp_inputs, make_module, random_lengths, rel_err, run_lstmp

GRAD_NAMES = ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh")


def _train(be, cell, args, grads_in, lengths, reverse, precision="bfloat16"):
    """Outputs and gradients of one layer-direction: (y, h_T, c_T, dx, dh0, dc0, dW...)."""
    y, h_T, c_T, saved = be.forward_layer(cell, *args, lengths=lengths, reverse=reverse, train=True,
                                          precision=precision)
    return (y, h_T, c_T) + tuple(be.backward_layer(cell, saved, *grads_in))


def _grads_in(rng, cell, T, B, H):
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    dh = rng.standard_normal((B, H)).astype(np.float32)
    dc = rng.standard_normal((B, H)).astype(np.float32) if cell == "lstm" else None
    return dy, dh, dc


@pytest.mark.parametrize("cell", CELLS)
def test_one_step_matches_reference_bf16(cell, num_threads):
    """One step: the gate gradients are the same floats on both sides up to summation order,
    so every gradient agrees to float32 rounding (a value on a rounding boundary may round
    apart: compared in relative norm). K on both sides of the 16- and 32-value loads, ragged,
    reversed, the direct forward (small calls, unpacked) and the packed one, 1-3 threads."""
    cpu = cpu_bf16()
    from fastrnn.backends import cpu as cpu_mod
    for B in (cpu_mod.DIRECT_MAX_BATCH_BF16, cpu_mod.DIRECT_MAX_BATCH_BF16 + 1):   # both kernels run below
        args = layer_inputs(np.random.default_rng(B), cell, 1, B, 4, 8, np.float32)
        saved = cpu.forward_layer(cell, *args, train=True, precision="bfloat16")[3]
        assert saved["packed"] == (B > cpu_mod.DIRECT_MAX_BATCH_BF16), B
    for threads in (1, 2, 3):
        num_threads(threads)
        for k, (B, I, H) in enumerate([(1, 5, 7), (3, 33, 17), (12, 64, 64), (40, 50, 60), (7, 1, 100)]):
            rng = np.random.default_rng([k, threads, 21])
            args = layer_inputs(rng, cell, 1, B, I, H, np.float32)
            lengths = random_lengths(rng, 1, B)
            grads = _grads_in(rng, cell, 1, B, H)
            for reverse in (False, True):
                got = _train(cpu, cell, args, grads, lengths, reverse)
                want = _train(reference, cell, args, grads, lengths, reverse)
                for name, a, b in zip(("y", "h_T", "c_T") + GRAD_NAMES, got, want):
                    if b is not None:
                        assert rel_err(a, b) < 5e-5, (name, threads, B, I, H, reverse, rel_err(a, b))


@pytest.mark.parametrize("cell", CELLS)
def test_sequences_round_like_the_reference(cell, num_threads):
    """Many steps: each side rounds its own gate gradients, and a value on a rounding
    boundary rounds apart now and then, so the two drift by up to about 1e-3 in relative
    norm. Each gradient still lies far nearer the reference's bfloat16 run than its float32
    one (a backward with float32 products would be as far from both)."""
    cpu = cpu_bf16()
    num_threads(2)
    for k, (T, B, I, H) in enumerate([(12, 33, 40, 70), (9, 64, 64, 96), (10, 8, 128, 128), (6, 3, 9, 13)]):
        for reverse in (False, True):
            rng = np.random.default_rng([k, reverse, 22])
            args = layer_inputs(rng, cell, T, B, I, H, np.float32)
            lengths = random_lengths(rng, T, B)
            grads = _grads_in(rng, cell, T, B, H)
            got = _train(cpu, cell, args, grads, lengths, reverse)
            want = _train(reference, cell, args, grads, lengths, reverse)
            f32 = _train(reference, cell, args, grads, lengths, reverse, precision="float32")
            for name, a, b, c in zip(("y", "h_T", "c_T") + GRAD_NAMES, got, want, f32):
                if b is None:
                    continue
                assert rel_err(a, b) < 2e-3, (name, T, B, I, H, reverse, rel_err(a, b))
                if cell != "rnn_relu" or name != "db_ih":   # relu: few units' sums may be exact
                    assert rel_err(a, b) < 0.3 * rel_err(a, c), (name, T, B, I, H, reverse,
                                                                  rel_err(a, b), rel_err(a, c))


def test_held_weights_give_the_same_bits_as_float_weights(num_threads):
    """Weights held as bfloat16 bits (a torch bfloat16 module's) train to the same bits as
    float weights of the same values: the backward reads float copies of them."""
    cpu = cpu_bf16()
    num_threads(2)
    for cell in CELLS:
        rng = np.random.default_rng(23)
        x, h0, c0, w_ih, w_hh, b_ih, b_hh = layer_inputs(rng, cell, 8, 16, 24, 40, np.float32)
        w_ih, w_hh = round_bf16(w_ih), round_bf16(w_hh)
        bits = [(w.view(np.uint32) >> 16).astype(np.uint16) for w in (w_ih, w_hh)]
        grads = _grads_in(rng, cell, 8, 16, 40)
        a = _train(cpu, cell, (x, h0, c0, w_ih, w_hh, b_ih, b_hh), grads, None, False)
        b = _train(cpu, cell, (x, h0, c0, *bits, b_ih, b_hh), grads, None, False)
        for u, v in zip(a, b):
            if u is not None:
                np.testing.assert_array_equal(u, v, err_msg=cell)
                assert u.dtype == np.float32


def test_module_training_matches_reference_module(num_threads):
    """The module API in training mode: two layers, bidirectional, ragged, hx, dropout off;
    outputs and every parameter gradient near the reference module's bfloat16 run, and the
    gradients accumulate over two backward calls as in float32. A Lookup input gives the
    table the gradient its dense rows get."""
    cpu_bf16()
    num_threads(2)
    rng = np.random.default_rng(24)
    for cell in CELLS:
        kw = dict(num_layers=2, bidirectional=True, seed=5, precision="bfloat16")
        m = make_module(cell, 24, 40, backend="cpu", **kw)
        r = make_module(cell, 24, 40, backend="reference", **kw)
        x = rng.standard_normal((7, 5, 24)).astype(np.float32)
        lengths = random_lengths(rng, 7, 5)
        g = rng.standard_normal((7, 5, 80)).astype(np.float32)
        for mod in (m, r):
            for _ in range(2):
                mod(x, lengths=lengths)
                mod.backward(g)
        for name, a in m.grads.items():
            assert rel_err(a, r.grads[name]) < 2e-3, (cell, name, rel_err(a, r.grads[name]))
        table = rng.standard_normal((30, 24)).astype(np.float32)
        ids = rng.integers(0, 30, size=(7, 5))
        m(Lookup(table, ids))
        d_table = m.backward(g)[0]
        m(table[ids])
        dx = m.backward(g)[0]
        want = np.zeros_like(table)
        np.add.at(want, ids, dx)
        np.testing.assert_allclose(d_table, want, rtol=1e-5, atol=1e-5)


def test_training_is_faster_path_not_float32(monkeypatch):
    """A bfloat16 training call runs the bfloat16 kernels (forward and backward), not the
    float32 ones: spied on the cffi entry points."""
    cpu = cpu_bf16()
    from fastrnn.backends import cpu as cpu_mod
    calls = []
    real = cpu_mod.lib

    class Spy:
        def __getattr__(self, name):
            fn = getattr(real, name)
            if name.startswith(("fastrnn_forward", "fastrnn_backward")):
                return lambda *a: (calls.append(name), fn(*a))[1]
            return fn
    monkeypatch.setattr(cpu_mod, "lib", Spy())
    rng = np.random.default_rng(25)
    args = layer_inputs(rng, "gru", 5, 4, 8, 16, np.float32)
    y, _, _, saved = cpu.forward_layer("gru", *args, train=True, precision="bfloat16")
    cpu.backward_layer("gru", saved, np.ones_like(y), None, None)
    assert calls == ["fastrnn_forward_bf16", "fastrnn_backward_bf16"], calls


@pytest.mark.parametrize("cell", CELLS)
def test_lookup_trains_as_its_dense_rows(cell, num_threads):
    """A Lookup input folds the table into the first layer; in bfloat16 its gradients still
    round each step's gate gradients (summed per table row, then multiplied in float32 by the
    rounded table and W_ih), so they are the dense input's (the table's gradient: the
    scatter of dense dx) up to the order of the sums. Split by units and by batch rows,
    weight gradients by rows and by columns, 1-3 threads."""
    cpu = cpu_bf16()
    for threads in (1, 2, 3):
        num_threads(threads)
        for k, (T, B, I, H, V) in enumerate([(6, 2, 9, 20, 7), (8, 32, 24, 64, 50), (5, 6, 40, 33, 11)]):
            rng = np.random.default_rng([k, threads, 26])
            x, h0, c0, *w = layer_inputs(rng, cell, T, B, I, H, np.float32)
            table = rng.standard_normal((V, I)).astype(np.float32)
            ids = rng.integers(0, V, (T, B))
            ids[0, 0] = V - 1
            grads = _grads_in(rng, cell, T, B, H)
            lengths = random_lengths(rng, T, B)
            folded = _train(cpu, cell, (Lookup(table, ids), h0, c0, *w), grads, lengths, False)
            dense = _train(cpu, cell, (table[ids], h0, c0, *w), grads, lengths, False)
            d_table = np.zeros_like(table)
            np.add.at(d_table, ids, dense[3])
            assert folded[3].shape == table.shape
            for name, a, b in zip(("y", "h_T", "c_T", "d_table") + GRAD_NAMES[1:], folded, dense[:3] + (d_table,) + dense[4:]):
                if b is not None:
                    assert rel_err(a, b) < 2e-5, (name, threads, T, B, I, H, V, rel_err(a, b))


# ----- an LSTM with a projection (proj_size) ------------------------------------------

def _train_lstmp(be, args, lengths, reverse, precision="bfloat16"):
    return run_lstmp(be, args, lengths, reverse, 0, precision=precision)


LSTMP_NAMES = ("y", "h_T", "c_T") + GRAD_NAMES + ("dw_hr",)


def test_projection_one_step_matches_reference_bf16(num_threads):
    """proj_size: one step's forward and BPTT (every product on bfloat16 operands: x, h, m,
    the gate and state gradients, W_ih, W_hh, W_hr) against the reference's rounding; P = 1,
    P near H, sizes off the vector width, ragged, reversed, 1-3 threads (a team other than
    the packing's packs its own parts). Within the step m = o tanh(c') is itself an operand
    (of W_hr), so an m one float ulp apart can round to bfloat16 apart: 5e-4 in relative
    norm, and far nearer than float32's run."""
    cpu = cpu_bf16()
    for threads in (1, 2, 3):
        num_threads(threads)
        for k, (B, I, H, P) in enumerate([(1, 5, 7, 1), (3, 33, 17, 16), (12, 64, 64, 20), (40, 9, 60, 59)]):
            rng = np.random.default_rng([k, threads, 31])
            args = lstmp_inputs(rng, 1, B, I, H, P, np.float32)
            lengths = random_lengths(rng, 1, B)
            for reverse in (False, True):
                got = _train_lstmp(cpu, args, lengths, reverse)
                want = _train_lstmp(reference, args, lengths, reverse)
                f32 = _train_lstmp(reference, args, lengths, reverse, precision="float32")
                for name, a, b, c in zip(LSTMP_NAMES, got, want, f32):
                    assert a.dtype == np.float32
                    assert rel_err(a, b) < 5e-4, (name, threads, B, I, H, P, reverse, rel_err(a, b))
                    assert rel_err(a, b) < 0.1 * rel_err(a, c), (name, threads, B, reverse, rel_err(a, c))


def test_projection_sequences_round_like_the_reference(num_threads):
    """proj_size over many steps: within a few 1e-3 of the reference's bfloat16 run (values on
    rounding boundaries round apart now and then) and far nearer it than float32's."""
    cpu = cpu_bf16()
    num_threads(2)
    for k, (T, B, I, H, P) in enumerate([(12, 33, 40, 70, 24), (9, 64, 64, 96, 48), (6, 3, 9, 13, 5)]):
        for reverse in (False, True):
            rng = np.random.default_rng([k, reverse, 32])
            args = lstmp_inputs(rng, T, B, I, H, P, np.float32)
            lengths = random_lengths(rng, T, B)
            got = _train_lstmp(cpu, args, lengths, reverse)
            want = _train_lstmp(reference, args, lengths, reverse)
            f32 = _train_lstmp(reference, args, lengths, reverse, precision="float32")
            for name, a, b, c in zip(LSTMP_NAMES, got, want, f32):
                assert rel_err(a, b) < 3e-3, (name, T, B, I, H, P, reverse, rel_err(a, b))
                assert rel_err(a, b) < 0.3 * rel_err(a, c), (name, T, B, reverse, rel_err(a, b), rel_err(a, c))


def test_projection_module_trains_like_the_reference_module(num_threads):
    """fastrnn.LSTM(proj_size, precision='bfloat16'), 2 layers, bidirectional, ragged: every
    parameter gradient near the reference module's bfloat16 run; the bfloat16 packing is
    cached per weight version, apart from the float32 one."""
    cpu_bf16()
    from fastrnn.backends import cpu as cpu_mod
    num_threads(2)
    rng = np.random.default_rng(33)
    kw = dict(num_layers=2, bidirectional=True, seed=6, precision="bfloat16", proj_size=9)
    m = make_module("lstm", 24, 40, backend="cpu", **kw)
    r = make_module("lstm", 24, 40, backend="reference", **kw)
    x = rng.standard_normal((7, 5, 24)).astype(np.float32)
    lengths = random_lengths(rng, 7, 5)
    g = rng.standard_normal((7, 5, 18)).astype(np.float32)
    packs = cpu_mod.packed_cache_bf16.packs
    for mod in (m, r):
        out, _ = mod(x, lengths=lengths)
        mod.backward(g)
    assert cpu_mod.packed_cache_bf16.packs == packs + 4   # one per layer-direction
    m(x, lengths=lengths)
    assert cpu_mod.packed_cache_bf16.packs == packs + 4   # the same weights: packed once
    for name, a in m.grads.items():
        assert rel_err(a, r.grads[name]) < 3e-3, (name, rel_err(a, r.grads[name]))


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_inference_packs_only_the_forward_bf16_panels(cell, num_threads):
    """As for float (test_cpu_backend): an inference packs the forward's bfloat16 panels
    alone, a training call on the same weights adds BPTT's, and gives the bits of a
    packing made for training."""
    cpu_mod = cpu_bf16()
    num_threads(2)
    rng = np.random.default_rng(34)
    T, B, I, H = 20, 5, 24, 40
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = layer_inputs(rng, cell, T, B, I, H, np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    code = get_cell(cell).code

    def train():
        y, h_T, c_T, saved = cpu_mod.forward_layer(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, precision="bfloat16")
        return (y, h_T, c_T) + tuple(cpu_mod.backward_layer(cell, saved, dy, None, None))

    cpu_mod.packed_cache_bf16.clear()
    fresh = train()
    cpu_mod.packed_cache_bf16.clear()
    y = cpu_mod.forward_layer(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, train=False, precision="bfloat16")[0]
    (_, packed, full), = cpu_mod.packed_cache_bf16._entries.values()
    assert not full and packed.size == cpu_mod.lib.fastrnn_packed_size_bf16(code, I, H, 2, 0)
    np.testing.assert_array_equal(y, fresh[0])
    for a, b in zip(train(), fresh):
        assert (a is None) == (b is None) and (a is None or np.array_equal(a, b))
    (_, packed, full), = cpu_mod.packed_cache_bf16._entries.values()
    assert full and packed.size == cpu_mod.lib.fastrnn_packed_size_bf16(code, I, H, 2, 1)

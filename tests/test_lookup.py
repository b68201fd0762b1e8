"""Lookup input (x = table[ids]): the cpu kernels fold the table into the input projection;
every path must give the dense input's outputs, and the table's gradient must be dx summed
per id."""
import numpy as np
import pytest

import fastrnn
from fastrnn import Lookup, backends
from helpers import CELLS, layer_inputs, make_module, random_lengths, rel_err

# every test on the kernels as chosen by size and on the packed ones only (conftest.py)
pytestmark = pytest.mark.usefixtures("both_cpu_paths")

FAST = [b for b in ("cpu",) if b in backends.available()]


def _table_grad_by_hand(ids, dx, V):
    want = np.zeros((V, dx.shape[-1]))
    for i, row in zip(ids.reshape(-1), dx.reshape(-1, dx.shape[-1])):
        want[i] += row
    return want


@pytest.mark.skipif(not FAST, reason="cpu backend unavailable")
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("V", [5, 500])   # folded (V <= T*B) and expanded (V > T*B)
@pytest.mark.parametrize("wide", [False, True])  # H = 256 (128 double): dG rows 4 KB apart
@pytest.mark.parametrize("B", [4, 13])   # 13: the recurrence splits by batch rows on 2 threads
def test_cpu_layer_lookup_matches_dense_reference(cell, dtype, V, wide, B):
    from fastrnn.backends import cpu, reference
    rng = np.random.default_rng([CELLS.index(cell), V, wide, B])
    T, I, H = 7, 6, (256 if dtype == np.float32 else 128) if wide else 37
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = layer_inputs(rng, cell, T, B, I, H, dtype)
    table = rng.standard_normal((V, I)).astype(dtype)
    ids = rng.integers(0, V, (T, B))
    lengths = random_lengths(rng, T, B)
    dy = rng.standard_normal((T, B, H)).astype(dtype)
    for reverse in (False, True):
        y, hT, cT, saved = cpu.forward_layer(cell, Lookup(table, ids), h0, c0, w_ih, w_hh, b_ih, b_hh,
                                             lengths=lengths, reverse=reverse)
        as64 = lambda a: None if a is None else a.astype(np.float64)
        args64 = map(as64, (table[ids], h0, c0, w_ih, w_hh, b_ih, b_hh))
        y_r, hT_r, _, saved_r = reference.forward_layer(cell, *args64, lengths=lengths, reverse=reverse)
        tol_o, tol_g = (1e-5, 1e-4) if dtype == np.float32 else (1e-10, 1e-10)
        assert rel_err(y, y_r) < tol_o and rel_err(hT, hT_r) < tol_o
        dtable, dh0, _, dw_ih, dw_hh, db_ih, _ = cpu.backward_layer(cell, saved, dy, None, None)
        dx_r, dh0_r, _, dw_ih_r, dw_hh_r, db_ih_r, _ = reference.backward_layer(cell, saved_r, as64(dy),
                                                                                None, None)
        assert dtable.shape == (V, I)
        assert rel_err(dtable, _table_grad_by_hand(ids, dx_r, V)) < tol_g
        for a, b in ((dh0, dh0_r), (dw_ih, dw_ih_r), (dw_hh, dw_hh_r), (db_ih, db_ih_r)):
            assert rel_err(a, b) < tol_g


@pytest.mark.parametrize("backend", ["reference"] + FAST)
@pytest.mark.parametrize("layout", ["time_major", "batch_first", "unbatched"])
def test_module_with_lookup_input_matches_dense_input(backend, layout):
    """Two bidirectional layers: a Lookup input gives the dense input's outputs, parameter
    gradients, and its table gets the dense input's gradient summed per id."""
    rng = np.random.default_rng(11)
    V, I, H, T, B = 9, 5, 13, 6, 3
    kw = dict(num_layers=2, bidirectional=True, batch_first=layout == "batch_first",
              backend=backend, dtype=np.float64, seed=2)
    m_lookup, m_dense = make_module("lstm", I, H, **kw), make_module("lstm", I, H, **kw)
    table = rng.standard_normal((V, I))
    shape = {"time_major": (T, B), "batch_first": (B, T), "unbatched": (T,)}[layout]
    ids = rng.integers(0, V, shape)
    out_l, _ = m_lookup(Lookup(table, ids))
    out_d, _ = m_dense(table[ids])
    assert out_l.shape == out_d.shape and rel_err(out_l, out_d) < 1e-12
    g = rng.standard_normal(out_l.shape)
    dtable, _ = m_lookup.backward(g)
    dx, _ = m_dense.backward(g)
    assert dtable.shape == (V, I)
    assert rel_err(dtable, _table_grad_by_hand(ids, dx, V)) < 1e-12
    for k in m_dense.grads:
        assert rel_err(m_lookup.grads[k], m_dense.grads[k]) < 1e-12, k


def test_lookup_rejects_bad_tables_and_ids():
    table = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="ids"):
        Lookup(table, np.array([[0, 4]]))
    with pytest.raises(ValueError, match="ids"):
        Lookup(table, np.array([[-1, 0]]))
    with pytest.raises(TypeError, match="ids"):
        Lookup(table, np.array([[0.0, 1.0]]))
    with pytest.raises(TypeError, match="table"):
        Lookup(np.zeros((4, 3), np.int64), np.array([[0]]))
    with pytest.raises(TypeError, match="table"):
        Lookup(np.zeros(4, np.float32), np.array([[0]]))
    m = fastrnn.LSTM(3, 5)   # float32, input size 3
    with pytest.raises(TypeError, match="dtype"):
        m(Lookup(np.zeros((4, 3)), np.zeros((2, 2), int)))
    with pytest.raises(ValueError, match="shape"):
        m(Lookup(np.zeros((4, 2), np.float32), np.zeros((2, 2), int)))


def test_table_grad_adds_into_a_given_array_and_checks_its_shape():
    rng = np.random.default_rng(5)
    table = rng.standard_normal((9, 4))
    ids = rng.integers(0, 9, (5, 3))
    dx = rng.standard_normal((5, 3, 4))
    running = rng.standard_normal((9, 4))
    want = running + _table_grad_by_hand(ids, dx, 9)
    got = Lookup(table, ids).table_grad(dx, add_to=running)
    assert got is running and rel_err(got, want) < 1e-12
    with pytest.raises(ValueError, match="add_to"):
        Lookup(table, ids).table_grad(dx, add_to=np.zeros((8, 4)))

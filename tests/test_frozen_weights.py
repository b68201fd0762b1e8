"""fastrnn.frozen_weights: inside the block each set of weights is compared with its packed
version once, not at every call; outside it, every call compares again."""
import threading

import numpy as np
import pytest

import fastrnn
from fastrnn import backends
from fastrnn.backends import packed_weights
from fastrnn.backends.packed_weights import PackedWeightsCache
from helpers import layer_inputs, rel_err


class CountingCache(PackedWeightsCache):
    """A cache over numpy 'packing' (a copy) that counts compares and packs."""

    def __init__(self):
        self.compares = 0
        self.packed_parts = []   # each packing's bptt

        def same_bits(a, b):
            self.compares += 1
            return np.array_equal(a, b)

        def pack(code, I, H, w_ih, w_hh, n, bptt):
            self.packed_parts.append(bptt)
            return np.concatenate([w_ih.ravel(), w_hh.ravel()])
        super().__init__(pack, same_bits=same_bits)


def weights(seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((8, 3)), rng.standard_normal((8, 2))


def test_compares_once_per_block_and_again_after_it():
    cache, (w_ih, w_hh) = CountingCache(), weights(0)
    cache.get(0, w_ih, w_hh, 2, frozen_ok=True)
    cache.get(0, w_ih, w_hh, 2, frozen_ok=True)
    assert (cache.packs, cache.compares) == (1, 2)       # outside: both arrays, every call
    with fastrnn.frozen_weights():
        for _ in range(5):
            cache.get(0, w_ih, w_hh, 2, frozen_ok=True)
        with fastrnn.frozen_weights():                   # nested: the same block
            cache.get(0, w_ih, w_hh, 2, frozen_ok=True)
    assert (cache.packs, cache.compares) == (1, 4)       # the first call in the block only
    w_hh[1, 1] += 1.0                                    # after the block: seen at once
    assert np.array_equal(cache.get(0, w_ih, w_hh, 2, frozen_ok=True)[-16:], w_hh.ravel())
    assert cache.packs == 2


def test_weights_packed_inside_a_block_are_not_compared_again_in_it():
    cache, (w_ih, w_hh) = CountingCache(), weights(1)
    with fastrnn.frozen_weights():
        first = cache.get(0, w_ih, w_hh, 2, frozen_ok=True)
        assert cache.get(0, w_ih, w_hh, 2, frozen_ok=True) is first
        assert cache.get(0, w_ih, w_hh, 3, frozen_ok=True) is not first   # another thread count: another entry
    assert (cache.packs, cache.compares) == (2, 0)


def test_the_block_is_per_thread():
    cache, (w_ih, w_hh) = CountingCache(), weights(2)
    cache.get(0, w_ih, w_hh, 2, frozen_ok=True)
    started, done = threading.Event(), threading.Event()

    def other():
        started.wait()
        cache.get(0, w_ih, w_hh, 2, frozen_ok=True)    # not in a block: compares
        done.set()

    t = threading.Thread(target=other)
    t.start()
    with fastrnn.frozen_weights():
        cache.get(0, w_ih, w_hh, 2, frozen_ok=True)
        started.set()
        done.wait(10)
    t.join()
    assert cache.compares == 4


def test_per_call_copies_are_compared_every_call():
    """Arrays the backend copied for one call (frozen_ok=False) are not held for the block
    (each call's copy would stay alive until it ends): they are compared as outside it."""
    cache, (w_ih, w_hh) = CountingCache(), weights(5)
    with fastrnn.frozen_weights():
        for _ in range(3):
            cache.get(0, w_ih, w_hh, 2)     # frozen_ok=False
        assert not packed_weights._frozen.verified
    assert (cache.packs, cache.compares) == (1, 4)


def test_block_ends_on_an_exception():
    cache, (w_ih, w_hh) = CountingCache(), weights(3)
    with pytest.raises(RuntimeError):
        with fastrnn.frozen_weights():
            cache.get(0, w_ih, w_hh, 2, frozen_ok=True)
            raise RuntimeError("stop")
    cache.get(0, w_ih, w_hh, 2, frozen_ok=True)
    assert cache.compares == 2


@pytest.mark.skipif("cpu" not in backends.available(), reason="cpu backend unavailable")
def test_cpu_backend_in_a_block_matches_reference_and_sees_edits_after_it():
    cpu, ref = backends.get("cpu"), backends.get("reference")
    rng = np.random.default_rng(4)
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = layer_inputs(rng, "lstm", 3, 2, 5, 16, np.float64)
    with fastrnn.frozen_weights():
        for _ in range(3):
            y = cpu.forward_layer("lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh, train=False)[0]
            assert rel_err(y, ref.forward_layer("lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh, train=False)[0]) < 1e-12
        assert len(packed_weights._frozen.verified) == 1
        w_f = np.asfortranarray(w_hh)   # copied to C order at every call: nothing held
        for _ in range(3):
            y, h, c, saved = cpu.forward_layer("lstm", x, h0, c0, w_ih, w_f, b_ih, b_hh)
            cpu.backward_layer("lstm", saved, np.ones_like(y), None, None)
        assert len(packed_weights._frozen.verified) == 1
    w_hh *= 0.5
    y = cpu.forward_layer("lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh, train=False)[0]
    assert rel_err(y, ref.forward_layer("lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh, train=False)[0]) < 1e-12


def test_an_inference_packs_the_forward_panels_and_training_adds_bptts():
    # inference (bptt=False) packs the forward's panels only; a training call on the same
    # weights repacks with BPTT's (keeping the snapshot: the weights compared equal), which
    # then serves inference too; new weights start over
    cache, (w_ih, w_hh) = CountingCache(), weights(1)
    cache.get(0, w_ih, w_hh, 2, bptt=False)
    cache.get(0, w_ih, w_hh, 2, bptt=False)
    assert cache.packed_parts == [False] and cache.compares == 2
    snapshot = cache._entries[next(iter(cache._entries))][0]
    cache.get(0, w_ih, w_hh, 2, bptt=True)
    assert cache.packed_parts == [False, True] and cache.compares == 4
    assert cache._entries[next(iter(cache._entries))][0] is snapshot
    cache.get(0, w_ih, w_hh, 2, bptt=False)
    cache.get(0, w_ih, w_hh, 2, recurrent_only=True)
    assert cache.packed_parts == [False, True]
    w_ih[0, 0] += 1.0
    cache.get(0, w_ih, w_hh, 2, bptt=False)
    assert cache.packed_parts == [False, True, False]
    # a backward (recurrent_only: W_hh compared alone) on a forward-only entry repacks, and
    # takes fresh snapshots, W_ih's not being compared
    old = cache._entries[next(iter(cache._entries))][0]
    cache.get(0, w_ih, w_hh, 2, recurrent_only=True)
    assert cache.packed_parts == [False, True, False, True]
    new = cache._entries[next(iter(cache._entries))][0]
    assert new is not old and np.array_equal(new[0], w_ih) and np.array_equal(new[1], w_hh)
    w_hh[0, 0] += 1.0
    with fastrnn.frozen_weights():
        cache.get(0, w_ih, w_hh, 2, frozen_ok=True, bptt=False)   # verified in the block, no BPTT panels
        cache.get(0, w_ih, w_hh, 2, frozen_ok=True, bptt=False)
        assert cache.packed_parts[4:] == [False]
        cache.get(0, w_ih, w_hh, 2, frozen_ok=True, bptt=True)    # verified, but BPTT's wanted: repacks
        assert cache.packed_parts[4:] == [False, True]

"""pytest-benchmark suite over the same engine as `fastrnn bench` (fastrnn/bench.py).

    pytest benchmarks/ --benchmark-json=out.json

One group per (cell, mode, H, B, T) point, so pytest-benchmark's table compares the
backends and peers at that point. Grid: the CPU-backend issue's (cells RNN tanh, LSTM,
GRU; H 128, 512; B 1, 32; T 32, 256; inference and training), plus one-step inference
(T = 1, B 1 and 4: a decoding step, where the cpu backend reads the weights unpacked,
csrc/direct.inc). The reference backend joins with FASTRNN_BENCH_REFERENCE=1 (it is slow
at these sizes).
"""
import os

import pytest

from fastrnn import bench

TARGETS = [t for t in bench.available_targets()[0]
           if t != "reference" or os.environ.get("FASTRNN_BENCH_REFERENCE") == "1"]
POINTS = [(c, m, h, b, t) for c in ("rnn_tanh", "lstm", "gru") for m in bench.MODES
          for h in (128, 512) for b in (1, 32) for t in (32, 256)]
POINTS += [(c, "inference", h, b, 1) for c in ("rnn_tanh", "lstm", "gru") for h in (128, 512) for b in (1, 4)]


@pytest.mark.parametrize("backend", TARGETS)
@pytest.mark.parametrize("cell, mode, hidden, batch, seq_len", POINTS,
                         ids=[f"{c}-{m}-H{h}-B{b}-T{t}" for c, m, h, b, t in POINTS])
def test_throughput(benchmark, cell, mode, hidden, batch, seq_len, backend):
    case = bench.Case(cell, hidden, batch, seq_len, mode, backend)
    run = bench.make_runner(case)
    benchmark.group = f"{cell} {mode} H={hidden} B={batch} T={seq_len}"
    benchmark.extra_info.update(tokens=seq_len * batch, flops=case.flops(), backend=backend)
    benchmark.pedantic(run, rounds=5, warmup_rounds=1, iterations=1)

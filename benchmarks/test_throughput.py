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
CELLS = ("rnn_tanh", "lstm", "gru")
CASES = bench.grid_cases(CELLS, (128, 512), (1, 32), (32, 256), bench.MODES, TARGETS)
CASES += bench.grid_cases(CELLS, (128, 512), (1, 4), (1,), ("inference",), TARGETS)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.cell}-{c.mode}-H{c.hidden}-B{c.batch}-T{c.seq_len}-{c.backend}"
                                             for c in CASES])
def test_throughput(benchmark, case):
    run = bench.make_runner(case)
    benchmark.group = f"{case.cell} {case.mode} H={case.hidden} B={case.batch} T={case.seq_len}"
    benchmark.extra_info.update(tokens=case.seq_len * case.batch, flops=case.flops(), backend=case.backend)
    benchmark.pedantic(run, rounds=5, warmup_rounds=1, iterations=1)

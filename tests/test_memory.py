"""`fastrnn bench --memory` (fastrnn/memory.py): peak memory a point, each in a fresh process."""
import json
import subprocess
import sys

import numpy as np
import pytest

from fastrnn import bench, memory, report

pytestmark = pytest.mark.skipif(memory.unavailable_reason() is not None,
                                reason=f"peak memory: {memory.unavailable_reason()}")


def mb(n):
    return n / 1e6


def test_an_output_is_counted_even_where_the_setup_freed_memory():
    # the inputs' float64 temporaries (16 MB each) are freed before the baseline; glibc kept
    # them resident, and the 8.4 MB output of each call landed there uncounted (0.76 MB
    # measured) until the baseline was taken after malloc_trim
    case = bench.Case("lstm", 256, 32, 256, "inference", "reference")
    r = memory.measure(case, threads=1)
    y_bytes = 256 * 32 * 256 * 4
    assert r["peak_bytes"] >= y_bytes, (mb(r["peak_bytes"]), mb(y_bytes))
    assert r["held_bytes"] <= r["peak_bytes"] and r["baseline_bytes"] > 0


def test_training_counts_its_workspace_and_inference_keeps_none():
    # the reference LSTM keeps each step's four gates for BPTT: T*B*4H floats at least
    T, B, H = 256, 16, 128
    train = memory.measure(bench.Case("lstm", H, B, T, "training", "reference"), threads=1)
    infer = memory.measure(bench.Case("lstm", H, B, T, "inference", "reference"), threads=1)
    gates = T * B * 4 * H * 4
    assert train["peak_bytes"] >= gates, (mb(train["peak_bytes"]), mb(gates))
    assert infer["peak_bytes"] < train["peak_bytes"] / 2, (mb(infer["peak_bytes"]), mb(train["peak_bytes"]))


def test_memory_ratios_pair_each_row_with_torch_at_its_precision():
    point = dict(cell="gru", mode="training", hidden=8, batch=2, seq_len=3)
    rows = [dict(point, backend=b, peak_bytes=p) for b, p in
            (("cpu", 30), ("torch-cpu", 60), ("cpu-bf16", 20), ("torch-cpu-bf16", 10), ("reference", 15))]
    memory.add_ratios(rows)
    assert {r["backend"]: r[memory.RATIO] for r in rows} == \
        {"cpu": 0.5, "torch-cpu": 1.0, "cpu-bf16": 2.0, "torch-cpu-bf16": 1.0, "reference": 0.25}
    lines = memory.summary(rows).splitlines()
    assert "* cpu training: peak memory / torch's B > 1 0.50-0.50x" in lines
    assert not any(line.startswith("* torch") for line in lines)


def test_cli_memory_writes_a_table_json_and_csv(tmp_path):
    backends = "cpu,reference" + (",torch-cpu" if "torch-cpu" in bench.available_targets()[0] else "")
    r = subprocess.run([sys.executable, "-m", "fastrnn", "bench", "--memory", "--cells", "gru",
                        "--hidden", "16", "--batch", "2", "--seq-len", "8", "--backends", backends,
                        "--no-progress", "--out", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "peak MB" in r.stdout and "held MB" in r.stdout
    data = json.load(open(tmp_path / "fastrnn-bench-memory.json"))
    assert data["schema"] == report.MEMORY_SCHEMA and data["settings"]["calls"] == memory.CALLS
    rows = data["results"]
    assert {(row["backend"], row["mode"]) for row in rows} == \
        {(b, m) for b in backends.split(",") for m in bench.MODES}
    assert all(row["peak_bytes"] >= row["held_bytes"] >= 0 for row in rows)
    if "torch-cpu" in backends:
        assert all(np.isfinite(row[memory.RATIO]) for row in rows)
        assert "* cpu training: peak memory / torch's" in r.stdout
    csv_rows = (tmp_path / "fastrnn-bench-memory.csv").read_text().splitlines()
    assert len(csv_rows) == len(rows) + 1 and csv_rows[0].startswith("cell,mode,hidden")


def test_cli_memory_refuses_device_backends_by_name(tmp_path):
    r = subprocess.run([sys.executable, "-m", "fastrnn", "bench", "--memory", "--backends", "cpu,cuda",
                        "--out", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and "--memory measures host memory; not cuda" in r.stderr


def test_without_linux_proc_the_reason_is_given(monkeypatch):
    monkeypatch.setattr(memory.sys, "platform", "darwin")
    assert memory.unavailable_reason() == "needs Linux's /proc (this is darwin)"


def test_a_failing_probe_names_the_point(monkeypatch):
    case = bench.Case("lstm", 8, 1, 2, "inference", "no-such-backend")
    with pytest.raises(RuntimeError, match="memory probe of .*no-such-backend.* failed"):
        memory.measure(case, threads=1)

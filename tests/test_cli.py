"""`fastrnn info` and `fastrnn bench` on a tiny grid: outputs, JSON schema, compare, errors."""
import csv
import json
import os
import subprocess
import sys

import pytest

from fastrnn import cli, report

TINY = ["bench", "--cells", "gru,lstm", "--hidden", "8", "--batch", "2", "--seq-len", "3,5",
        "--repeats", "2", "--max-seconds", "0.05", "--no-progress"]


def run_cli(args, cwd=None):
    return subprocess.run([sys.executable, "-m", "fastrnn"] + args, capture_output=True, text=True, cwd=cwd)


def test_info_lists_every_backend_with_a_reason():
    r = run_cli(["info"])
    assert r.returncode == 0, r.stderr
    for name in ("reference", "cpu", "cuda", "torch-cpu", "torch-cudnn"):
        assert name in r.stdout
    assert "threads:" in r.stdout and "cpu:" in r.stdout


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = TINY + ["--backends", "reference", "--out", str(out)]
    assert cli.main(argv) == 0
    return out


def test_bench_writes_json_csv_and_table(tiny_run, capsys):
    data = report.load_run(os.path.join(tiny_run, "fastrnn-bench.json"))
    assert data["schema"] == report.SCHEMA
    for key in ("cpu_model", "threads", "gpu", "fastrnn", "numpy", "torch"):
        assert key in data["machine"]
    assert data["matmul_peak_gflops"] > 0
    rows = data["results"]
    assert len(rows) == 2 * 2 * 2  # cells x modes x seq_len (one backend)
    for r in rows:
        assert r["tokens_per_s"] > 0 and r["repeats"] >= 1 and r["min_s"] <= r["median_s"] <= r["max_s"]
        assert r["tokens_per_s"] == pytest.approx(r["seq_len"] * r["batch"] / r["median_s"])
        assert r["speedup_vs_reference"] == pytest.approx(1.0)
    with open(os.path.join(tiny_run, "fastrnn-bench.csv")) as f:
        assert len(list(csv.DictReader(f))) == len(rows)


def test_bench_plot_is_a_png(tiny_run):
    pytest.importorskip("matplotlib")
    with open(os.path.join(tiny_run, "fastrnn-bench.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_compare_two_runs(tiny_run, tmp_path, capsys):
    a = os.path.join(tiny_run, "fastrnn-bench.json")
    data = json.load(open(a))
    for r in data["results"]:  # a second run, twice as fast
        r["tokens_per_s"] *= 2
    b = tmp_path / "b.json"
    b.write_text(json.dumps(data))
    assert cli.main(["bench", "--compare", a, str(b), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "B/A" in out and "2.00" in out
    with open(tmp_path / "fastrnn-bench-compare.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(float(r["ratio"]) == pytest.approx(2.0) for r in rows)


@pytest.mark.parametrize("args, message", [
    (["bench", "--backends", "tpu"], "unknown"),
    (["bench", "--hidden", "0"], "positive"),
    (["bench", "--batch", "-3"], "positive"),
    (["bench", "--seq-len", "abc"], "integers"),
    (["bench", "--max-seconds", "0"], "max-seconds"),
    (["bench", "--max-seconds", "nan"], "max-seconds"),
    (["bench", "--name", "../elsewhere/run"], "--name: expected a file name stem"),
    (["bench", "--backends", "reference", "--cells", "rnn_tanh", "--hidden", "10000000", "--batch", "1",
      "--seq-len", "2", "--no-progress"], "out of memory at rnn_tanh inference H=10000000"),
    (["bench", "--compare", "/nonexistent/a.json", "/nonexistent/b.json"], "cannot read"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments_exit_2_with_a_message(args, message, tmp_path):
    r = run_cli(args, cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert message in r.stderr and "Traceback" not in r.stderr


def test_compare_rejects_a_file_that_is_not_a_run(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    r = run_cli(["bench", "--compare", str(bad), str(bad)], cwd=tmp_path)
    assert r.returncode == 2 and "not a fastrnn bench result" in r.stderr


def test_take_turns_alternates_calls_after_warmup():
    from fastrnn import bench
    for max_seconds, rounds in ((1e9, 3), (0.0, 2)):   # repeats, or min_repeats once time is up
        log = []
        times = bench.take_turns([lambda: log.append("a"), lambda: log.append("b")],
                                 repeats=3, max_seconds=max_seconds, min_repeats=2, warmup=2)
        assert log == ["a", "a", "b", "b"] + ["a", "b"] * rounds
        assert [len(t) for t in times] == [rounds, rounds] and all(x >= 0 for t in times for x in t)


def test_measure_takes_more_samples_of_short_calls():
    """Short calls are repeated until min_seconds (at most max_samples), long ones `repeats`
    times, and max_seconds cuts a slow point short after min_repeats."""
    import time
    from fastrnn import bench
    calls = []
    times = bench.measure(lambda: calls.append(1), repeats=5, min_seconds=10.0, max_samples=300)
    assert len(times) == 300 and len(calls) == 301       # one warm-up
    slow = bench.measure(lambda: time.sleep(0.01), repeats=5, min_seconds=0.02)
    assert len(slow) == 5
    capped = bench.measure(lambda: time.sleep(0.01), repeats=50, min_repeats=3, max_seconds=0.05)
    assert 3 <= len(capped) < 10
    assert bench._spread([1.0] * 7 + [9.0], 1.0) == 0.0   # an outlier among many: IQR
    assert bench._spread([1.0, 2.0, 3.0], 2.0) == 1.0     # few samples: the whole range


def test_run_paired_interleaves_backends_per_point():
    """run_paired gives one row per case, same point for both backends, with repeat times."""
    from fastrnn import bench
    cases = bench.grid_cases(("gru",), (8,), (2,), (3, 5), ("inference",), ("reference", "cpu"))
    order = []
    rows = bench.run_paired(cases, 100.0, repeats=4, max_seconds=0.0, on_step=order.append)
    assert len(rows) == len(cases) and len(order) == 2
    assert [(r["seq_len"], r["backend"]) for r in rows] == [(3, "reference"), (3, "cpu"), (5, "reference"), (5, "cpu")]
    assert all(r["repeats"] == 4 and r["tokens_per_s"] > 0 for r in rows)


def test_bfloat16_targets_are_opt_in_and_paired_with_torch_bf16():
    from fastrnn import bench
    targets = ["cpu", "cpu-bf16", "torch-cpu", "torch-cpu-bf16"]
    assert bench.default_targets(targets) == ["cpu", "torch-cpu"]
    cases = bench.grid_cases(("lstm",), (8,), (2,), (3,), bench.MODES, targets)
    assert {(c.mode, c.backend) for c in cases} == {(m, t) for m in bench.MODES for t in targets}
    rows = [dict(cell="lstm", mode="inference", hidden=8, batch=2, seq_len=3, backend=t, tokens_per_s=v)
            for t, v in zip(targets, (10.0, 30.0, 20.0, 15.0))]
    bench.add_ratios(rows)
    by = {r["backend"]: r["speedup_vs_torch-cpu"] for r in rows}
    assert by == {"cpu": 0.5, "cpu-bf16": 2.0, "torch-cpu": 1.0, "torch-cpu-bf16": 1.0}


def test_bench_runs_the_bfloat16_targets(tmp_path):
    from fastrnn import bench
    available, why = bench.available_targets()
    if "cpu-bf16" not in available:
        pytest.skip(f"cpu-bf16: {why.get('cpu-bf16')}")
    peers = ",torch-cpu-bf16" if "torch-cpu-bf16" in available else ""
    r = run_cli(["bench", "--cells", "gru", "--hidden", "16", "--batch", "2", "--seq-len", "3",
                 "--repeats", "2", "--max-seconds", "0.05", "--no-progress", "--backends", "cpu-bf16" + peers,
                 "--out", str(tmp_path)])
    assert r.returncode == 0, r.stderr
    rows = json.load(open(tmp_path / "fastrnn-bench.json"))["results"]
    assert {(row["backend"], row["mode"]) for row in rows} == \
        {(t, m) for t in ("cpu-bf16" + peers).split(",") for m in bench.MODES}
    assert all(row["tokens_per_s"] > 0 for row in rows)


def test_threads_past_the_cap_are_a_usage_error():
    from fastrnn.threads import max_threads
    for cmd in ("bench", "train"):
        r = run_cli([cmd, "--threads", str(max_threads() + 1)])
        assert r.returncode == 2 and f"argument --threads: expected at most {max_threads()}" in r.stderr

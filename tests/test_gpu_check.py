"""benchmarks/gpu_check.py keeps what it measured when a device call runs out of time: the
result file is saved after every check and every timed point, and --deadline stops the
grid in time. The GPU work is stubbed here (the script refuses to run without a real GPU);
what is tested is the bookkeeping around it."""
import json
import os
import sys
import time
import types

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
gpu_check = pytest.importorskip("gpu_check")


class Stop(Exception):
    """Stands for the device call's time limit killing the script."""


def fake_gpu(monkeypatch, fastrnn_s=0.002, fail_at=None, pause=0.0):
    """Stub the device side: a backend that plans and reports a path, runners whose timing
    is fastrnn_s (cuDNN: 1 ms); the point numbered fail_at (from 1) raises Stop."""
    plan = dict(persistent=True, blocks=1, S=1, BT=1, KC=1, nbb=1, step_gemm=False, local=None)
    fc = types.SimpleNamespace(unavailable_reason=lambda: None, SIMULATOR=False, last_path={},
                               _device_limits=lambda: (1, 1, "Stub GPU"), describe=lambda: "stub",
                               plan=lambda *a, **k: plan)
    monkeypatch.setattr(gpu_check, "fcuda", fc)
    calls = []
    monkeypatch.setattr(gpu_check, "fastrnn_runner", lambda *a: "fastrnn")
    monkeypatch.setattr(gpu_check, "torch_runner", lambda *a: "cudnn")

    def timeit(which):
        calls.append(which)
        if fail_at is not None and len(calls) == 2 * fail_at - 1:
            raise Stop
        time.sleep(pause)
        return fastrnn_s if which == "fastrnn" else 0.001
    monkeypatch.setattr(gpu_check, "timeit", timeit)
    return calls


def fake_checks(cells, rng, on_row):
    rows = []
    for cell in cells:
        rows.append(dict(cell=cell, ok=True))
        on_row(rows)
    return rows


def test_a_run_cut_short_leaves_its_checks_and_points(monkeypatch, tmp_path):
    pytest.importorskip("torch")
    fake_gpu(monkeypatch, fail_at=3)
    monkeypatch.setattr(gpu_check, "correctness", fake_checks)
    out = tmp_path / "gpu.json"
    with pytest.raises(Stop):
        gpu_check.main(["--cells", "rnn_tanh,lstm", "--hs", "256", "--bs", "1,8", "--quick",
                        "--out", str(out)])
    res = json.loads(out.read_text())
    assert res["complete"] is False and res["device"] == "Stub GPU"
    assert [c["cell"] for c in res["checks"]] == ["rnn_tanh", "lstm"] and res["all_checks_ok"]
    assert [(r["cell"], r["B"], r["T"]) for r in res["timing"]] == [("rnn_tanh", 1, 32), ("rnn_tanh", 1, 256)]
    assert res["targets"][0]["points"] == 2 and res["targets"][0]["met"] == 0   # ratio 0.5
    assert not list(tmp_path.glob("*.tmp"))


def test_a_full_run_is_marked_complete(monkeypatch, tmp_path, capsys):
    pytest.importorskip("torch")
    fake_gpu(monkeypatch, fastrnn_s=0.0005)
    monkeypatch.setattr(gpu_check, "correctness", fake_checks)
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--cells", "gru", "--hs", "256", "--bs", "8", "--quick", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["complete"] is True and len(res["timing"]) == 4     # inference, train x T 32, 256
    assert [t["met"] for t in res["targets"][:2]] == [2, 2]         # ratio 2
    assert "checks: all ok" in capsys.readouterr().out


def test_the_deadline_stops_the_grid(monkeypatch):
    calls = fake_gpu(monkeypatch, pause=0.02)
    seen = []
    rows = gpu_check.timing(["lstm", "gru"], (256,), (1, 8), (32, 256), None, budget_s=1e9,
                            stop_at=time.perf_counter() + 0.1, on_row=lambda r: seen.append(len(r)))
    assert 1 <= len(rows) < 16 and seen == list(range(1, len(rows) + 1))
    assert len(calls) == 2 * len(rows)
    # no deadline, no budget left: nothing is timed
    assert gpu_check.timing(["lstm"], (256,), (1,), (32,), None, budget_s=-1) == []

"""The CPU benchmark scripts run end to end (--smoke: tiny sizes, one timed call a point),
so a change to the API they call cannot leave them broken until someone next measures.
Each checks, before it times a point, that fastrnn and torch compute the same thing; the
smoke run goes through those checks too. Needs PyTorch (the peer); skipped without it.
(benchmarks/lm_vs_torch.py --quick runs in test_lm_torch.py, gpu_ab.py and gpu_session.sh
in test_gpu_ab.py.)"""
import json
import math
import os
import subprocess
import sys

import pytest

from fastrnn import backends

torch = pytest.importorskip("torch")

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BENCH = os.path.join(ROOT, "benchmarks")
pytestmark = pytest.mark.skipif("cpu" not in backends.available(), reason="cpu backend unavailable")


def _env():
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)   # the scripts time CPU paths; a simulated GPU is not one
    return env


def _run_script(name, tmp_path, *args):
    out = tmp_path / f"{name}.json"
    p = subprocess.run([sys.executable, os.path.join(BENCH, f"{name}.py"), "--smoke", "--out", str(out), *args],
                       capture_output=True, text=True, timeout=300, env=_env())
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"wrote {out}" in p.stdout
    return json.loads(out.read_text())


def _rate(x):
    assert isinstance(x, float) and math.isfinite(x) and x > 0, x
    return x


def test_cpu_vs_torch_smoke(tmp_path):
    d = _run_script("cpu_vs_torch", tmp_path)
    assert d["settings"]["smoke"] is True
    rows = d["results"]
    # 3 cells x 2 modes x H {8} x B {1, 3} x T {1, 4}, once per backend
    points = {(r["cell"], r["mode"], r["hidden"], r["batch"], r["seq_len"]) for r in rows}
    assert len(points) == 24 and len(rows) == 48
    assert sorted({r["backend"] for r in rows}) == ["cpu", "torch-cpu"]
    for r in rows:
        _rate(r["tokens_per_s"])
        if r["backend"] == "cpu":
            _rate(r["speedup_vs_torch-cpu"])


def test_torch_dropin_smoke(tmp_path):
    d = _run_script("torch_dropin", tmp_path)
    assert d["smoke"] is True
    # cells x H {8} x B {1, 3} x T {1, 4}; the projection's (8, 3) x B x T; one decoding H
    assert sorted({r["cell"] for r in d["results"]}) == ["GRU", "LSTM", "RNN"] and len(d["results"]) == 12
    assert len(d["projection"]) == 4 and len(d["decode"]) == 1
    for r in d["results"] + d["projection"]:
        assert _rate(r["ratio"]) == pytest.approx(r["fastrnn_tokens_per_s"] / r["torch_tokens_per_s"])
    assert len(d["decode"][0]["tokens_per_s"]) == 3
    for v in d["decode"][0]["tokens_per_s"].values():
        _rate(v)


def test_torch_dropin_takes_a_cell_subset(tmp_path):
    d = _run_script("torch_dropin", tmp_path, "--cells", "GRU")
    assert {r["cell"] for r in d["results"]} == {"GRU"}


def test_torch_bf16_smoke(tmp_path):
    d = _run_script("torch_bf16", tmp_path)
    assert d["smoke"] is True
    assert d["fastrnn_bf16_products"] == (backends.get("cpu").bf16_unavailable_reason() is None)
    assert len(d["results"]) == 8 and len(d["decode"]) == 1   # 2 cells x B {1, 3} x T {1, 4}
    assert len(d["training"]) == 4   # 2 cells x B {1, 3} x T {4}
    for r in d["results"] + d["decode"] + d["training"]:
        assert sorted(r["tokens_per_s"]) == sorted(["torch f32", "torch bf16", "fastrnn f32", "fastrnn bf16"])
        for v in r["tokens_per_s"].values():
            _rate(v)


def test_lm_generate_smoke(tmp_path):
    d = _run_script("lm_generate", tmp_path)
    assert d["smoke"] is True and [r["model"] for r in d["results"]] == ["tiny LSTM", "tiny GRU"]
    bf16 = backends.get("cpu").bf16_unavailable_reason() is None
    for r in d["results"]:
        ms = r["ms_per_token"]
        assert sorted(ms) == sorted(["fastrnn f32", "fastrnn bf16", "torch f32", "torch bf16"])
        for v, t in ms.items():
            if v == "fastrnn bf16" and not bf16:
                assert t is None
            else:
                _rate(t)


def test_a_script_rejects_an_unknown_cell(tmp_path):
    p = subprocess.run([sys.executable, os.path.join(BENCH, "torch_bf16.py"), "--smoke", "--cells", "RNN",
                        "--out", str(tmp_path / "x.json")], capture_output=True, text=True, timeout=120, env=_env())
    assert p.returncode == 2 and "--cells: unknown ['RNN']" in p.stderr


def test_the_agreement_check_stops_a_script_whose_sides_differ():
    sys.path.insert(0, BENCH)
    try:
        import torch_dropin
    finally:
        sys.path.remove(BENCH)
    a = torch.zeros(3, 2)
    torch_dropin.check_agree([(a, a), (a, a + 5e-5)], 1e-4, "same")
    with pytest.raises(RuntimeError, match="x: the sides disagree by 0.0002"):
        torch_dropin.check_agree([(a, a), (a, a + 2e-4)], 1e-4, "x")
    big = torch.full((2,), 100.0)   # relative to the largest value past 1
    torch_dropin.check_agree([(big,), (big + 5e-3,)], 1e-4, "relative")
    with pytest.raises(RuntimeError, match="nan"):
        torch_dropin.check_agree([(a,), (a * float("nan"),)], 1e-4, "nan")


def test_pytest_benchmark_suite_runs_a_point(tmp_path):
    """benchmarks/test_throughput.py (pytest-benchmark) at one point, writing its JSON."""
    out = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        os.path.join(BENCH, "test_throughput.py"), "-k", "cpu and lstm-training-H128-B1-T32",
                        f"--benchmark-json={out}"], capture_output=True, text=True, timeout=300, env=_env(), cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    runs = json.loads(out.read_text())["benchmarks"]
    assert {b["extra_info"]["backend"] for b in runs} >= {"cpu", "torch-cpu"}
    for b in runs:
        assert b["group"] == "lstm training H=128 B=1 T=32" and b["stats"]["rounds"] == 5
        _rate(b["stats"]["median"])

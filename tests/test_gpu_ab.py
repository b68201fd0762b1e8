"""benchmarks/gpu_ab.py runs end to end (under the simulator in CI, at a tiny size): a
GPU session is short, and the script must not be found broken there."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from fastrnn import backends

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


@pytest.mark.skipif("cuda" not in backends.available(), reason="cuda backend unavailable")
def test_ab_two_sides_write_rows(tmp_path):
    out = tmp_path / "ab.json"
    p = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_ab.py"), "--base", ROOT,
                        "--head-env", "FASTRNN_CUDA_BT=4", "--shapes", "gru:3:2:2:train,lstm:3:1:2:inf",
                        "--rounds", "1", "--reps", "1", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    d = json.loads(out.read_text())
    assert d["head_env"] == {"FASTRNN_CUDA_BT": "4"} and d["base_env"] == {}
    assert [(r["cell"], r["train"]) for r in d["rows"]] == [("gru", True), ("lstm", False)]
    for r in d["rows"]:
        assert r["base_s"] > 0 and r["head_s"] > 0 and len(r["head_all"]) == 1
    assert "backward" not in d["rows"][1]["path_head"]   # inference: only its own path


def test_ab_rejects_a_bad_shape():
    p = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_ab.py"), "--base", ROOT,
                        "--shapes", "lstm:3:1:2:both"], capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "mode must be inf or train" in p.stdout + p.stderr


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU here: check would run in full")
def test_session_script_runs_its_stages(tmp_path):
    # benchmarks/gpu_session.sh (a GPU session's measurements in a few device calls): with
    # no GPU here the check stage fails cleanly and the summary names it; a bad stage exits 2
    env = dict(os.environ, OUT=str(tmp_path),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    script = os.path.join(ROOT, "benchmarks", "gpu_session.sh")
    p = subprocess.run(["bash", script, "check"], capture_output=True, text=True, timeout=600,
                       cwd=ROOT, env=env)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "=== summary" in p.stdout and "check rc=2" in p.stdout, p.stdout
    assert (tmp_path / "check.log").exists() and (tmp_path / "versions.txt").exists()
    p = subprocess.run(["bash", script, "fast"], capture_output=True, text=True, timeout=600,
                       cwd=ROOT, env=env)
    assert p.returncode == 2 and "unknown stage fast" in p.stdout


@pytest.mark.skipif("cuda" not in backends.available(), reason="cuda backend unavailable")
def test_local_sweep_times_its_variants(tmp_path):
    # benchmarks/gpu_local_sweep.py (the local kernels' layout choices against each other):
    # each variant with its own layout is timed, one with the default's layout is not, and
    # the units-split kernels run as the peer
    out = tmp_path / "sweep.json"
    p = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_local_sweep.py"),
                        "--shapes", "rnn_tanh:6:2:2:inf", "--variants", "default,threads256,bq>=2,units-split",
                        "--rounds", "1", "--reps", "1", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    rows = json.loads(out.read_text())["rows"]
    # under the simulator a block has its fixed thread count: threads256 repeats the default
    assert [r["variant"] for r in rows] == ["default", "bq>=2", "units-split"]
    assert [r["layouts"][0]["BQ"] for r in rows[:2]] == [1, 2] and rows[2]["layouts"] == [None]
    assert [r["path"] for r in rows] == [{"forward": "local"}] * 2 + [{"forward": "persistent"}]
    assert all(r["median_s"] > 0 for r in rows) and rows[1]["vs_default"] > 0
    # kernel time of the local launches (the simulator's events give a placeholder value)
    assert isinstance(rows[0]["kernel_ms"], float) and rows[2]["kernel_ms"] is None
    assert "fastest local variant per shape" in p.stdout


@pytest.mark.skipif("cuda" not in backends.available(), reason="cuda backend unavailable")
def test_fixed_cost_breakdown(monkeypatch):
    # benchmarks/gpu_overhead.py --fixed (where a short call's time goes) at a tiny shape:
    # a line per shape and switch, with the GPU time of the call's operations
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import gpu_overhead
    lines = []
    gpu_overhead.fixed_costs(lines.append, shapes=(("rnn_tanh", 5, 1, 2, False),), reps=2)
    fixed = [x for x in lines if x.startswith("fixed") and "torch tensors" not in x]
    assert any("torch tensors in" in x for x in lines)   # timed, or why not
    assert len(fixed) == 2 and "local=auto" in fixed[0] and "local=0" in fixed[1]
    assert "{'forward': 'local'}" in fixed[0] and "{'forward': 'persistent'}" in fixed[1]
    gpu = [x for x in lines if "GPU us a call" in x]
    assert "fwd_local" in gpu[0] and "fwd_persistent" in gpu[1] and "_init_state_kernel" in gpu[0]
    assert "matmul" in gpu[0]   # the projection: the Numba kernel here, cuBLAS where CuPy is
    assert "function calls" in lines[-1]   # the host profile

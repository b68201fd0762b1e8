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

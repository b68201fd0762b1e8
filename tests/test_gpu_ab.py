"""benchmarks/gpu_ab.py runs end to end (under the simulator in CI, at a tiny size): a
GPU session is short, and the script must not be found broken there."""
import json
import os
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

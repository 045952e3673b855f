"""``bash benchmarks/gpu_check.sh OUT --smoke``: every part runs in its own process on CPU (tiny
model) and the summary merges their JSON; cached == uncached holds in fp32."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_smoke(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(tmp_path), "--smoke"],
                          env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {part: r["status"] for part, r in summary.items()} == dict.fromkeys(("latency", "throughput", "exactness"), "ok")
    latency = summary["latency"]["batch"]
    assert set(latency) == {"1", "2"} and all(f["ms"]["bard_block32"] > 0 for f in latency.values())
    assert summary["latency"]["sdpa_kernels"]["steady_no_mask"]  # the profiler saw the attention op
    assert summary["throughput"]["batch"]["1"]["tokens_per_s"]["bard_tpf4"] > 0
    assert summary["exactness"]["cached_equals_uncached"] is True
    assert summary["exactness"]["sdpa_vs_eager_argmax_agreement"] == 1.0
    assert "cached == uncached: True" in done.stdout


def test_gpu_check_reports_a_failed_part(tmp_path):
    """A part that fails is reported (exit 1) without hiding the parts that passed."""
    (tmp_path / "latency.rc").write_text("0\n")
    (tmp_path / "latency.json").write_text(json.dumps({"cache_tokens": 8, "batch": {}}))
    (tmp_path / "throughput.rc").write_text("124\n")
    (tmp_path / "exactness.rc").write_text("1\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "summary", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [summary[p]["status"] for p in ("latency", "throughput", "exactness")] == ["ok", "timeout", "failed (rc 1)"]

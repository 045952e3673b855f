"""`bard demo`: the target arithmetic, and the --quick pipeline end to end (~1 min on an idle 2-core CPU)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nemo_automodel_bard.toy.pipeline import summary_fields


def _row(name, em, tpf, tps):
    return {"name": name, "exact_match": em, "tpf": tpf, "tokens_per_s": tps}


def test_summary_fields_hand_computed():
    rows = [_row("AR", 0.90, 1.0, 10.0), _row("swd_b32@0.5", 0.70, 6.0, 50.0), _row("swd_b32@0.9", 0.895, 4.5, 41.0)]
    out = summary_fields(rows, "swd_b32", target_threshold=0.9)
    assert out["bard_setting"] == "swd_b32@0.9"
    assert out["accuracy_gap_points"] == pytest.approx(0.5)
    assert out["speedup_tokens_per_s"] == pytest.approx(4.1)
    assert out["targets"] == {"within_1_point_of_ar": True, "tpf_at_least_4": True, "speedup_at_least_4x": True}
    worse = summary_fields([_row("AR", 0.9, 1.0, 10.0), _row("swd_b32@0.9", 0.85, 3.9, 39.0)], "swd_b32")
    assert worse["targets"] == {"within_1_point_of_ar": False, "tpf_at_least_4": False, "speedup_at_least_4x": False}


def test_quick_demo_writes_complete_summary(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "nemo_automodel_bard.cli", "demo", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    for key in ("stage_seconds", "total_seconds", "results", "accuracy_gap_points", "bard_tpf",
                "speedup_tokens_per_s", "targets", "checkpoints"):
        assert key in summary, key
    assert set(summary["stage_seconds"]) >= {"data", "ar", "convert", "pbm", "swd", "eval"}
    names = {r["name"] for r in summary["results"]}
    assert {"AR", "pbm_b4@0.9", "pbm_b32@0.9", "swd_b32@0.5", "swd_b32@0.9"} <= names
    for row in summary["results"]:
        assert row["samples"] == 6 and row["forwards"] > 0 and row["tokens"] > 0
        assert 0.0 <= row["exact_match"] <= 1.0
    assert (out / "accuracy_vs_throughput.png").stat().st_size > 0

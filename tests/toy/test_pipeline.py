"""`bard demo`: the target arithmetic, and the --quick pipeline end to end (~1 min on an idle 2-core CPU)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

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
    assert (out / "accuracy_vs_throughput.png").stat().st_size > 0

    # The reported scores are those of the written checkpoints: decode them again here (greedy,
    # deterministic) and compare answer by answer with the references.
    from nemo_automodel_bard.toy import evaluate as ev

    examples = ev.load_examples(out / "data" / "test.jsonl")
    rows = {r["name"]: r for r in summary["results"]}
    ar_model, processor = ev.load_ar(summary["checkpoints"]["ar"])
    ar_texts = [ev.ar_decoder(ar_model, processor, 32)(e).text for e in examples]
    swd = ev.load_bard(summary["checkpoints"]["swd_b32"])
    settings = dict(block_size=32, denoising_steps=32, remasking_strategy="low_confidence_dynamic",
                    confidence_threshold=0.9, temperature=0.0)
    swd_texts = [ev.bard_decoder(swd, processor, 32, **settings)(e).text for e in examples]
    for name, texts in (("AR", ar_texts), ("swd_b32@0.9", swd_texts)):
        matches = sum(ev.exact_match(text, e["answer"]) for text, e in zip(texts, examples))
        assert rows[name]["exact_match"] == pytest.approx(matches / len(examples)), name
    assert summary["accuracy_gap_points"] == pytest.approx(
        100 * (rows["AR"]["exact_match"] - rows["swd_b32@0.9"]["exact_match"]))


def test_retrain_ar_stage_trains_through_the_automodel_recipe(tmp_path):
    """``bard demo --retrain-ar``'s stage 0: toy/stage0.py (AutoModel's VLM recipe), not the shipped copy."""
    from transformers import Qwen3VLForConditionalGeneration

    from nemo_automodel_bard.toy.pipeline import ASSET_AR, PROFILES, stage_ar
    from nemo_automodel_bard.toy.task import generate_splits

    generate_splits(tmp_path / "data", seed=0, sizes={"train": 64, "test": 4})
    path, note = stage_ar(tmp_path, PROFILES["quick"], retrain=True)
    assert note.startswith("trained from scratch")
    assert "[stage0 recipe]" in (tmp_path / "logs" / "ar.log").read_text()
    log = json.loads((path / "train_log.json").read_text())
    assert [p["steps"] for p in log["phases"]] == [1, 2]
    trained = Qwen3VLForConditionalGeneration.from_pretrained(str(path)).state_dict()
    shipped = Qwen3VLForConditionalGeneration.from_pretrained(str(ASSET_AR)).state_dict()
    assert not all(torch.equal(trained[k], shipped[k]) for k in shipped)

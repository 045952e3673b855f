"""`bard demo`: the target arithmetic, and the --quick pipeline end to end (~1 min on an idle 2-core CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nemo_automodel_bard.toy.pipeline import summary_fields


def _row(name, em, tpf, tps):
    return {"name": name, "exact_match": em, "tpf": tpf, "tokens_per_s": tps}


def test_summary_fields_hand_computed():
    rows = [_row("AR", 0.90, 1.0, 10.0), _row("swd_b32@0.5", 0.70, 6.0, 50.0), _row("swd_b32@0.9", 0.895, 4.5, 41.0)]
    out = summary_fields(rows, "swd_b32", target_threshold=0.9)
    assert out["bard_setting"] == "swd_b32@0.9" and out["threshold_chosen_on"] == "fixed"
    assert out["accuracy_gap_points"] == pytest.approx(0.5)
    assert out["speedup_tokens_per_s"] == pytest.approx(4.1)
    assert out["targets"] == {"within_1_point_of_ar": True, "tpf_at_least_4": True, "speedup_at_least_4x": True}
    worse = summary_fields([_row("AR", 0.9, 1.0, 10.0), _row("swd_b32@0.9", 0.85, 3.9, 39.0)], "swd_b32")
    assert worse["targets"] == {"within_1_point_of_ar": False, "tpf_at_least_4": False, "speedup_at_least_4x": False}


def _hits_row(name, hits, tpf, per_task):
    return {**_row(name, sum(hits) / len(hits), tpf, 1.0), "hits": hits, "per_task": per_task,
            "per_task_samples": {"read": 2, "count": 2}}


def test_summary_fields_uses_the_val_threshold_the_paired_interval_and_interleaved_speed():
    ar = _hits_row("AR", [1, 1, 1, 0], 1.0, {"read": 1.0, "count": 0.5})
    rows = [ar, _hits_row("swd_b32@0.5", [1, 1, 0, 0], 6.0, {"read": 1.0, "count": 0.0}),
            _hits_row("swd_b32@0.9", [1, 1, 1, 1], 3.0, {"read": 1.0, "count": 1.0})]
    chosen = {"threshold": 0.5}
    speed = {"batch_1": {"speedup": {"median": 3.5}}, "batch_8": {"speedup": {"median": 2.0}}}
    out = summary_fields(rows, "swd_b32", chosen, speed)
    # the val choice wins over the better test row at 0.9
    assert out["bard_setting"] == "swd_b32@0.5" and out["threshold_chosen_on"] == "val"
    assert out["accuracy_gap_points"] == pytest.approx(25.0)
    assert out["bard_minus_ar_points"]["diff"] == pytest.approx(-25.0)
    # differences (Bard - AR) are 0, 0, -1, 0: every resample's mean is one of 0, -1/4, ..., -1
    low, high = out["accuracy_gap_interval_points"]
    assert 0.0 <= low <= 25.0 <= high <= 100.0
    assert out["per_type_exact_match"]["count"] == {"ar": 0.5, "bard": 0.0, "samples": 2}
    assert out["speedup_tokens_per_s"] == {"batch_1": 3.5, "batch_8": 2.0}
    assert out["bard_tpf"] == 6.0
    assert out["targets"] == {"within_1_point_of_ar": False, "tpf_at_least_4": True, "speedup_at_least_4x": False}


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
    # issue 12: threshold from val, paired interval, interleaved speed at batch 1 and 8, the machine
    assert summary["threshold_chosen_on"] == "val"
    assert summary["threshold"] in (0.5, 0.9)
    assert {r["samples"] for r in summary["val_results"]} == {6}
    low, high = summary["accuracy_gap_interval_points"]
    assert low <= summary["accuracy_gap_points"] <= high
    assert set(summary["speedup_tokens_per_s"]) == {"batch_1", "batch_8"}
    assert all(v > 0 for v in summary["speedup_tokens_per_s"].values())
    assert summary["bard_tpf"] > 0 and summary["per_type_exact_match"]
    assert summary["machine"]["cpu_model"] and summary["machine"]["torch_threads"] == 1

    # The reported scores are those of the written checkpoints: decode them again here (greedy,
    # deterministic) and compare answer by answer with the references.
    from nemo_automodel_bard.toy import evaluate as ev

    examples = ev.load_examples(out / "data" / "test.jsonl")
    rows = {r["name"]: r for r in summary["results"]}
    ar_model, processor = ev.load_ar(summary["checkpoints"]["ar"])
    ar_texts = [ev.ar_decoder(ar_model, processor, 32)([e])[0].text for e in examples]
    swd = ev.load_bard(summary["checkpoints"]["swd_b32"])
    settings = dict(block_size=32, denoising_steps=32, remasking_strategy="low_confidence_dynamic",
                    confidence_threshold=0.9, temperature=0.0)
    swd_texts = [ev.bard_decoder(swd, processor, 32, **settings)([e])[0].text for e in examples]
    for name, texts in (("AR", ar_texts), ("swd_b32@0.9", swd_texts)):
        matches = sum(ev.exact_match(text, e["answer"]) for text, e in zip(texts, examples))
        assert rows[name]["exact_match"] == pytest.approx(matches / len(examples)), name
    assert summary["accuracy_gap_points"] == pytest.approx(
        100 * (rows["AR"]["exact_match"] - rows["swd_b32@0.9"]["exact_match"]))
    assert summary["speed"]["batch_1"]["bard_tpf"] > 0

    # benchmarks/toy_speed.py on the same run: its hooks see every forward generate counts,
    # and the parts add up to the measured total
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import toy_speed

    result = toy_speed.measure(out, prompts=3, repeats=1, threshold=0.9, max_new_tokens=32)
    bard_rows = [ev.bard_decoder(swd, processor, 32, **settings)([e])[0] for e in examples[:3]]
    bard, ar = result["split_ms"]["bard"], result["split_ms"]["ar"]
    assert bard["forwards_per_answer"] == pytest.approx(sum(r.forwards for r in bard_rows) / 3)
    assert bard["tokens_per_answer"] == pytest.approx(sum(r.tokens for r in bard_rows) / 3)
    assert ar["forwards_per_answer"] == pytest.approx(ar["tokens_per_answer"])
    for split in (ar, bard):
        assert sum(split[p] for p in toy_speed.PARTS) == pytest.approx(split["total"])
        assert min(split[p] for p in toy_speed.PARTS if p != "loop") > 0
    assert result["speedup"] > 0 and toy_speed.bounds(result)["bard_loop_free"] > 0


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


def _demo(*args, timeout=1500):
    return subprocess.run([sys.executable, "-m", "nemo_automodel_bard.cli", "demo", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_quick_demo_on_a_dataset_folder_it_did_not_generate(tmp_path):
    """``bard demo --data DIR --quick`` on the shapes task: its own words, AR trained on it, per-type scores."""
    from transformers import AutoProcessor

    from nemo_automodel_bard.toy import evaluate as ev
    from nemo_automodel_bard.toy.shapes import QUESTIONS, write_dataset

    write_dataset(tmp_path / "shapes", train=64, test=8, seed=0)  # no val.jsonl: split from train
    out = tmp_path / "demo"
    proc = _demo("--quick", "--data", str(tmp_path / "shapes"), "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    data = summary["data"]
    assert data["val_from_train"] and data["rows"] == {"train": 58, "val": 6, "test": 8}  # quick: val = 6
    assert data["tasks"] == sorted(QUESTIONS) and data["max_new_tokens"] == 32
    assert summary["notes"]["ar"] == "trained from scratch, curriculum train:4"
    log = json.loads((out / "ar" / "train_log.json").read_text())
    assert [p["phase"] for p in log["phases"]] == ["train:4"] and log["steps"] == 4
    # the AR model's tokenizer is the data's word-level one: every training word is a token
    tok = AutoProcessor.from_pretrained(str(out / "ar")).tokenizer
    train = ev.load_examples(out / "data" / "train.jsonl")
    words = sorted({w for e in train for w in (e["question"] + " " + e["answer"]).split()})
    assert tok.unk_token_id not in tok.convert_tokens_to_ids(words) and len(tok) == 9 + 3 + data["words"]
    assert "digits" not in tok.get_vocab()
    # per-type scores come from the rows' "task" key; the AR row's exact match from its own texts
    assert set(summary["per_type_exact_match"]) <= set(QUESTIONS)
    test = ev.load_examples(out / "data" / "test.jsonl", 6)
    ar_model, processor = ev.load_ar(out / "ar")
    texts = [ev.ar_decoder(ar_model, processor, 32)([e])[0].text for e in test]
    ar_row = next(r for r in summary["results"] if r["name"] == "AR")
    assert ar_row["samples"] == 6
    assert ar_row["exact_match"] == pytest.approx(sum(ev.exact_match(t, e["answer"]) for t, e in zip(texts, test)) / 6)
    assert summary["threshold_chosen_on"] == "val" and set(summary["speedup_tokens_per_s"]) == {"batch_1", "batch_8"}


def test_demo_refuses_a_dataset_it_cannot_serve_and_bad_flag_mixes(tmp_path):
    from nemo_automodel_bard.toy.shapes import write_dataset

    write_dataset(tmp_path / "d", train=10, test=2)
    (tmp_path / "d" / "test.jsonl").unlink()
    proc = _demo("--quick", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o"), timeout=300)
    assert proc.returncode == 2 and "test.jsonl not found" in proc.stderr
    proc = _demo("--quick", "--data", str(tmp_path / "d"), "--retrain-ar", timeout=300)
    assert proc.returncode == 2 and "--retrain-ar is for the toy task" in proc.stderr
    proc = _demo("--quick", "--ar-steps", "5", timeout=300)
    assert proc.returncode == 2 and "--ar-steps sets the AR training of --data" in proc.stderr
    proc = _demo("--quick", "--profile", "full", timeout=300)
    assert proc.returncode == 2 and "--quick and --profile full contradict each other" in proc.stderr


def test_full_profile_trains_longer_than_the_default_on_the_same_evaluation():
    from nemo_automodel_bard.toy.pipeline import PROFILES

    full, default = PROFILES["full"], PROFILES["default"]
    assert all(f >= d for f, d in zip(full.pbm_steps, default.pbm_steps)) and full.swd_steps > default.swd_steps
    assert (full.test, full.val, full.thresholds, full.train) == (default.test, default.val, default.thresholds,
                                                                  default.train)


def test_a_folder_made_with_other_training_settings_is_not_reused(tmp_path):
    from dataclasses import replace

    from nemo_automodel_bard.toy.pipeline import PROFILES, StaleRunError, check_reuse

    quick = PROFILES["quick"]
    check_reuse(tmp_path, quick, seed=0, data=None)
    check_reuse(tmp_path, replace(quick, test=3, thresholds=(0.7,)), seed=0, data=None)  # evaluation only: reused
    for changed, field in ((replace(quick, pbm_steps=(3, 2, 2, 2)), "pbm_steps"), (replace(quick, swd_steps=9), "swd_steps")):
        with pytest.raises(StaleRunError, match=field):
            check_reuse(tmp_path, changed, seed=0, data=None)
    with pytest.raises(StaleRunError, match="seed"):
        check_reuse(tmp_path, quick, seed=1, data=None)
    # a run from before run.json: its summary's profile is the record
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "summary.json").write_text(json.dumps({"profile": {"pbm_steps": [1000, 150, 150, 500], "swd_steps": 300}}))
    with pytest.raises(StaleRunError, match=r"pbm_steps: \[1000, 150, 150, 500\] there"):
        check_reuse(legacy, PROFILES["default"], seed=0, data=None)
    # the command line: exit 2 before any stage runs
    proc = _demo("--quick", "--pbm-steps", "3,2,2,2", "--out", str(tmp_path), timeout=300)
    assert proc.returncode == 2 and "pass a new --out" in proc.stderr
    assert not (tmp_path / "data").exists()


def test_a_finished_swd_stage_is_reused_without_relaunching_the_recipe(tmp_path, monkeypatch):
    from dataclasses import replace

    from nemo_automodel_bard.toy import pipeline

    launched = []
    monkeypatch.setattr(pipeline, "_run_logged", lambda name, cmd, log, **kw: launched.append(name))
    profile = replace(pipeline.PROFILES["quick"], swd_steps=300)
    final = tmp_path / "swd" / "epoch_1_step_299" / "model" / "consolidated"
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")
    (final / "model.safetensors").write_bytes(b"x")
    assert pipeline.stage_swd(tmp_path, tmp_path / "s", tmp_path / "t", profile) == final and launched == []
    # a checkpoint of an earlier step is not the finished stage: the recipe runs (and resumes)
    assert pipeline.stage_swd(tmp_path, tmp_path / "s", tmp_path / "t", replace(profile, swd_steps=600)) == final
    assert launched == ["swd"]

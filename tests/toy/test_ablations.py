"""Ablation rows keep the data and the step budget and change exactly one thing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nemo_automodel_bard.toy.ablations import (
    EXAMPLES,
    RunLayout,
    budget_overrides,
    pbm_steps,
    run_profile,
    train_command,
    variants,
)


@pytest.fixture
def run(tmp_path) -> RunLayout:
    for b, i in ((4, 0), (8, 1), (16, 2), (32, 3)):
        (tmp_path / "pbm" / f"stage_{i}_b{b}" / "hf").mkdir(parents=True)
    return RunLayout(tmp_path)


def _override(variant, key: str) -> str:
    (value,) = [o.split("=", 1)[1] for o in variant.overrides if o.startswith(f"--{key}=")]
    return value


def test_rows_share_data_and_step_budget(run):
    stages = [(4, 6), (8, 4), (16, 4), (32, 6)]
    rows = {v.name: v for v in variants(run, Path("pbm.yaml"), Path("swd.yaml"), stages)}
    assert set(rows) == {"pbm_b32", "swd_anchor", "direct_b32", "mixed_pbm_b32", "swd_ar", "swd_none"}
    train = [v for v in rows.values() if v.recipe]
    assert {_override(v, "dataset.path_or_dataset") for v in train} == {str(run.root / "data" / "train.jsonl")}
    # direct: one B=32 stage with all 20 steps, from the same converted init as PBM
    assert _override(rows["direct_b32"], "pbm.stages") == "[{block_size: 32, max_steps: 20}]"
    assert _override(rows["direct_b32"], "model.pretrained_model_name_or_path") == str(run.root / "bard_init")
    # mixed: the progressive stages of the YAML, only the noise schedule changes
    assert _override(rows["mixed_pbm_b32"], "bard.noise.schedule") == "mixed"
    assert _override(rows["mixed_pbm_b32"], "pbm.stages") == (
        "[{block_size: 4, max_steps: 6}, {block_size: 8, max_steps: 4}, {block_size: 16, max_steps: 4}, "
        "{block_size: 32, max_steps: 6}]")
    # SWD rows: same student (PBM B=32 export), only the teacher changes
    student = str(run.root / "pbm" / "stage_3_b32" / "hf")
    for name, kind in (("swd_ar", "ar"), ("swd_none", "none")):
        assert _override(rows[name], "model.pretrained_model_name_or_path") == student
        assert _override(rows[name], "teacher.kind") == kind
    assert _override(rows["swd_ar"], "teacher_model.pretrained_model_name_or_path") == str(run.root / "ar")
    assert rows["pbm_b32"].checkpoint == Path(student)


def test_train_command_is_bard_finetune(run):
    row = next(v for v in variants(run, Path("p.yaml"), Path("s.yaml"), [(4, 1), (32, 1)]) if v.name == "swd_none")
    cmd = train_command(row)
    assert cmd[1:6] == ["-m", "nemo_automodel_bard.cli", "finetune", "--recipe", "bard_swd"]
    assert cmd[6:8] == ["--config", "s.yaml"]


def test_missing_pbm_stage_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="block size 32"):
        variants(RunLayout(tmp_path), Path("p.yaml"), Path("s.yaml"), [(32, 1)])


def test_pbm_steps_reads_the_toy_yaml():
    stages = pbm_steps(EXAMPLES / "toy_pbm.yaml")
    assert [b for b, _ in stages] == [4, 8, 16, 32]
    assert all(s > 0 for _, s in stages)


def test_budget_follows_the_demo_profile(run):
    (run.root / "summary.json").write_text(json.dumps({"profile": {"batch_size": 16, "warmup": 5, "swd_steps": 7}}))
    profile = run_profile(run)
    extra = budget_overrides(profile)
    assert extra == ["--step_scheduler.global_batch_size=16", "--step_scheduler.local_batch_size=16",
                     "--lr_scheduler.lr_warmup_steps=5"]
    rows = variants(run, Path("p.yaml"), Path("s.yaml"), [(4, 1), (32, 1)], swd_steps=7, extra=extra)
    for row in rows:
        if row.recipe:
            assert all(o in row.overrides for o in extra)
        if row.recipe == "bard_swd":
            assert _override(row, "step_scheduler.max_steps") == "7"
    assert budget_overrides(None) == []


def test_comparisons_are_paired_differences_of_the_rows_that_were_evaluated():
    from nemo_automodel_bard.toy.ablations import comparisons

    def row(name, hits):
        return {"name": name, "metrics": {"hits": hits}}

    rows = [row("pbm_b32", [1, 1, 1, 1]), row("direct_b32", [1, 1, 1, 1]),
            row("swd_anchor", [1, 1, 1, 0]), row("swd_ar", [0, 0, 0, 0]), {"name": "swd_none", "error": "x"}]
    out = {(c["row"], c["against"]): c for c in comparisons(rows)}
    assert set(out) == {("pbm_b32", "direct_b32"), ("swd_anchor", "swd_ar")}  # swd_none, mixed: not evaluated
    equal = out[("pbm_b32", "direct_b32")]
    assert (equal["diff"], equal["low"], equal["high"], equal["samples"]) == (0.0, 0.0, 0.0, 4)
    better = out[("swd_anchor", "swd_ar")]
    # per-sample differences 1, 1, 1, 0: every resample's mean lies in [0, 100] points
    assert better["diff"] == 75.0 and 0.0 <= better["low"] <= 75.0 <= better["high"] <= 100.0


def test_finished_variants_are_reused_and_revision_rows_added(run, monkeypatch, tmp_path):
    """A second run with --revision-threshold trains nothing and decodes the revised rows too."""
    from nemo_automodel_bard.toy import ablations

    (run.pbm_stage(32) / "config.json").write_text("{}")
    for folder in ("direct_b32/stage_0_b32/hf", "mixed_pbm/stage_3_b32/hf"):
        (run.root / "ablations" / folder).mkdir(parents=True)
        (run.root / "ablations" / folder / "config.json").write_text("{}")
    calls = []
    monkeypatch.setattr(ablations.subprocess, "run", lambda *a, **k: calls.append(a) or None)

    def fake_eval(checkpoint, data, limit, block, threshold, max_new, revision=0.0):
        return {"hits": [1, 0] if revision else [0, 0], "exact_match": 0.5 if revision else 0.0}

    monkeypatch.setattr(ablations, "_evaluate", fake_eval)
    assert ablations.main(["--run", str(run.root), "--only", "pbm_b32,direct_b32,mixed_pbm_b32",
                           "--revision-threshold", "0.3"]) == 0
    assert calls == []  # both trained variants existed
    out = json.loads((run.root / "ablations" / "ablations.json").read_text())
    rows = {r["name"]: r for r in out["rows"]}
    assert set(rows) == {"pbm_b32", "direct_b32", "mixed_pbm_b32", "mixed_pbm_b32+rev"}
    assert rows["direct_b32"]["reused"] and rows["direct_b32"]["command"].startswith("bard finetune")
    compared = {(c["row"], c["against"]): c for c in out["comparisons"]}
    assert compared[("mixed_pbm_b32+rev", "mixed_pbm_b32")]["diff"] == 50.0
    assert "reused" in (run.root / "ablations" / "ablations.md").read_text()

"""SWD settings parsing and the teacher-compatibility check (configs only, no models built)."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLConfig

from nemo_automodel_bard.models.bard_vl.configuration import BardVLConfig
from nemo_automodel_bard.recipes.swd_config import (
    DistillSettings,
    TeacherMismatchError,
    TeacherSettings,
    anchor_block_size,
    check_teacher_compatible,
)


def _text(vocab=256, hidden=64):
    return dict(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
    )


def _bard(vocab=256, hidden=64, mask=250, block_size=4):
    return BardVLConfig(text_config=_text(vocab, hidden), mask_token_id=mask, block_size=block_size)


def _qwen(vocab=256, hidden=64):
    return Qwen3VLConfig(text_config=_text(vocab, hidden))


def test_matching_anchor_and_ar_teachers_are_accepted():
    check_teacher_compatible(_bard(block_size=32), _bard(block_size=4), TeacherSettings(kind="anchor"))
    check_teacher_compatible(_bard(), _qwen(), TeacherSettings(kind="ar"))
    # kind none never looks at a teacher.
    check_teacher_compatible(_bard(), None, TeacherSettings(kind="none"))


@pytest.mark.parametrize(
    "teacher,kind,message",
    [
        (_bard(vocab=300), "anchor", "vocab_size differs"),
        (_bard(hidden=32), "anchor", "hidden_size differs"),
        (_bard(mask=251), "anchor", "mask_token_id differs"),
        (_qwen(), "anchor", "needs a Bard-VL teacher"),
        (_bard(), "ar", "autoregressive Qwen3-VL"),
        (_qwen(vocab=300), "ar", "vocab_size differs"),
        (_qwen(hidden=128), "ar", "hidden_size differs"),
    ],
)
def test_mismatched_teacher_is_refused_with_the_reason(teacher, kind, message):
    with pytest.raises(TeacherMismatchError, match=message):
        check_teacher_compatible(_bard(), teacher, TeacherSettings(kind=kind))


def test_hidden_size_mismatch_can_be_allowed_but_vocab_cannot():
    allow = TeacherSettings(kind="anchor", allow_hidden_size_mismatch=True)
    check_teacher_compatible(_bard(hidden=64), _bard(hidden=128), allow)
    with pytest.raises(TeacherMismatchError, match="vocab_size"):
        check_teacher_compatible(_bard(hidden=64), _bard(vocab=300, hidden=128), allow)


def test_settings_reject_unknown_keys_and_bad_values():
    assert DistillSettings.from_mapping(None) == DistillSettings(0.5, 1.0, 16, 1.0, "full", False)
    assert DistillSettings.from_mapping({"student_support": "topk"}).student_support == "topk"
    with pytest.raises(ValueError, match="unknown key.*kd_ratio"):
        DistillSettings.from_mapping({"kd_ratio": 0.5})
    with pytest.raises(ValueError, match="unknown key.*ofload"):
        TeacherSettings.from_mapping({"ofload": True})
    with pytest.raises(ValueError, match="teacher.kind"):
        TeacherSettings.from_mapping({"kind": "diffusion"})
    with pytest.raises(ValueError, match="student_support"):
        DistillSettings.from_mapping({"student_support": "dense"})


def test_anchor_block_size_defaults_to_the_teacher_config():
    assert anchor_block_size(TeacherSettings(), _bard(block_size=4), 32) == 4
    assert anchor_block_size(TeacherSettings(block_size=8), _bard(block_size=4), 32) == 8
    with pytest.raises(ValueError, match="exceeds"):
        anchor_block_size(TeacherSettings(block_size=64), _bard(), 32)


def test_packaged_yamls_parse_and_the_4b_one_holds_the_spec_hyper_parameters():
    from pathlib import Path

    import yaml

    from nemo_automodel_bard.recipes.swd import BardSWDRecipe

    root = Path(__file__).resolve().parents[2] / "recipes"
    for name in ("bard_swd_tiny.yaml", "bard_swd_qwen3vl_4b.yaml"):
        recipe = BardSWDRecipe(yaml.safe_load((root / name).read_text()))
        assert recipe.teacher_settings.kind == "anchor" and recipe.teacher_settings.block_size == 4
    cfg = yaml.safe_load((root / "bard_swd_qwen3vl_4b.yaml").read_text())
    lr = cfg["optimizer"]["lr"]
    assert lr == 6e-6 and cfg["optimizer"]["betas"] == [0.9, 0.95] and cfg["optimizer"]["weight_decay"] == 0
    sched = cfg["lr_scheduler"]
    assert sched["lr_warmup_steps"] == 100 and sched["lr_decay_style"] == "cosine"
    assert sched["init_lr"] == pytest.approx(0.1 * lr) and sched["min_lr"] == pytest.approx(0.5 * lr)
    assert cfg["step_scheduler"]["global_batch_size"] == 64 and cfg["clip_grad_norm"]["max_norm"] == 1.0
    assert cfg["bard"]["block_size"] == 32
    distill = DistillSettings.from_mapping(cfg["distill"])
    assert (distill.top_k, distill.kl_weight, distill.temperature, distill.ce_inverse_t) == (16, 0.5, 1.0, False)


def test_a_teacher_kind_without_teacher_model_is_refused():
    from nemo_automodel_bard.recipes.swd import BardSWDRecipe

    with pytest.raises(ValueError, match="needs a `teacher_model:` section"):
        BardSWDRecipe({"teacher": {"kind": "anchor"}, "model": {}})
    with pytest.raises(ValueError, match="unknown top-level"):
        BardSWDRecipe({"teacher": {"kind": "none"}, "model": {}, "teachr_model": {}})


def test_4b_recipe_uses_upstreams_full_vocabulary_normalisation():
    """Issue 11 item 7: the YAML that claims upstream's hyper-parameters uses upstream's loss form."""
    import yaml

    root = Path(__file__).resolve().parents[2] / "recipes"
    config = yaml.safe_load((root / "bard_swd_qwen3vl_4b.yaml").read_text())
    assert DistillSettings.from_mapping(config["distill"]).student_support == "full"

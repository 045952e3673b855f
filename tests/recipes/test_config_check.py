"""YAML validation (unknown keys named, D12) and the config rewrites the recipe makes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from nemo_automodel_bard.recipes.block_diffusion import COLLATE_TARGET, VISION_TOWER_PATTERN, prepare_config
from nemo_automodel_bard.recipes.config_check import AUTOMODEL_SECTIONS, BARD_SECTIONS, BardSettings, ConfigKeyError, PBMSettings
from nemo_automodel_bard.recipes.pbm import FROM_PRETRAINED, BardPBMRecipe, stage_config
from nemo_automodel_bard.testing import tiny_model

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
KNOWN = AUTOMODEL_SECTIONS | BARD_SECTIONS


def _tiny_yaml() -> dict:
    return yaml.safe_load((RECIPES / "bard_pbm_tiny.yaml").read_text())


def test_unknown_top_level_key_is_named():
    config = _tiny_yaml()
    config["optimiser"] = {"lr": 1.0}
    with pytest.raises(ConfigKeyError, match="optimiser"):
        BardPBMRecipe(config)


@pytest.mark.parametrize(
    "section, key",
    [({"noise": {"schedul": "mask"}}, "schedul"), ({"loss": {"normalisation": "x"}}, "normalisation"),
     ({"packing": {"size": 3}}, "size"), ({"blocksize": 4}, "blocksize")],
)
def test_unknown_bard_keys_are_named(section, key):
    with pytest.raises(ConfigKeyError, match=rf"`bard[.a-z]*:`: {key}"):
        BardSettings.from_mapping(section)


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="schedule"):
        BardSettings.from_mapping({"noise": {"schedule": "uniform"}})
    with pytest.raises(ValueError, match="normalization"):
        BardSettings.from_mapping({"loss": {"normalization": "mean"}})


@pytest.mark.parametrize(
    "value, match",
    [(-1, r"bard.loss.chunk_tokens must be >= 0"), (512.5, r"bard.loss.chunk_tokens: expected an integer, got 512.5"),
     (True, r"bard.loss.chunk_tokens: expected an integer, got True"), ("2k", r"expected an integer, got '2k'")],
)
def test_loss_chunk_tokens_is_checked(value, match):
    with pytest.raises(ValueError, match=match):
        BardSettings.from_mapping({"loss": {"chunk_tokens": value}})


def test_loss_chunk_tokens_default_and_off():
    assert BardSettings.from_mapping({}).loss.chunk_tokens == 2048
    assert BardSettings.from_mapping({"loss": {"chunk_tokens": 0}}).loss.chunk_tokens == 0
    from nemo_automodel_bard.recipes.config_check import check_config

    config = yaml.safe_load((RECIPES / "bard_swd_qwen3vl_8b.yaml").read_text())
    assert config["bard"]["loss"]["chunk_tokens"] == 2048  # on in the 4B/8B YAMLs
    config["bard"]["loss"]["chunk_tokens"] = -5
    with pytest.raises(ConfigKeyError, match=r"bard.loss.chunk_tokens must be >= 0"):
        check_config(config, frozenset({"teacher", "teacher_model", "teacher_freeze_config", "distill"}))


def test_pbm_stage_keys():
    stages = PBMSettings.from_mapping({"stages": [{"block_size": 4, "max_steps": 3, "optimizer.lr": 1e-4}]}, KNOWN).stages
    assert stages[0].overrides == {"step_scheduler.max_steps": 3, "optimizer.lr": 1e-4}
    with pytest.raises(ConfigKeyError, match="`lr` in pbm.stages\\[0\\]"):
        PBMSettings.from_mapping({"stages": [{"block_size": 4, "lr": 1e-4}]}, KNOWN)
    with pytest.raises(ConfigKeyError, match="`optimiser.lr`"):
        PBMSettings.from_mapping({"stages": [{"block_size": 4, "optimiser.lr": 1e-4}]}, KNOWN)
    with pytest.raises(ConfigKeyError, match="block_size"):
        PBMSettings.from_mapping({"stages": [{"max_steps": 3}]}, KNOWN)
    with pytest.raises(ConfigKeyError, match="`pbm:`: stage"):
        PBMSettings.from_mapping({"stage": []}, KNOWN)


def test_automodel_packing_and_foreign_collate_are_refused():
    config = _tiny_yaml()
    config["packed_sequence"] = {"pack_size": 4096}
    with pytest.raises(ConfigKeyError, match="bard.packing.pack_size"):
        prepare_config(config)
    config = _tiny_yaml()
    config["dataloader"]["collate_fn"] = {"_target_": "my.collate"}
    with pytest.raises(ConfigKeyError, match="dataloader.collate_fn"):
        prepare_config(config)


def test_prepare_config_wires_collator_dataset_and_vision_lr():
    config = prepare_config(_tiny_yaml())
    collate = config["dataloader"]["collate_fn"]
    assert collate == {"_target_": COLLATE_TARGET, "block_size": 4, "pack_size": 512, "pad_to_multiple_of": 1}
    assert config["dataset"]["block_size"] == 4 and config["dataset"]["pretokenize"] is False
    assert config["dist_env"]["backend"] in ("gloo", "nccl")
    [override] = config["optimizer"]["param_group_overrides"]
    assert override["lr_mult"] == 0.1
    no_scheduler = _tiny_yaml()
    del no_scheduler["lr_scheduler"]
    with pytest.raises(ConfigKeyError, match="lr_scheduler"):
        prepare_config(no_scheduler)


def test_vision_pattern_selects_the_tower_but_not_the_mergers():
    names = [n for n, _ in tiny_model().named_parameters()]
    chosen = {n for n in names if re.search(VISION_TOWER_PATTERN, n)}
    assert chosen and all(n.startswith("model.visual.") for n in chosen)
    assert any(".blocks." in n for n in chosen) and any("patch_embed" in n for n in chosen)
    assert not any("merger" in n for n in chosen)
    assert any("merger" in n for n in names)


def test_stage_config_chains_stages():
    base = _tiny_yaml()
    stage = PBMSettings.from_mapping({"stages": [{"block_size": 8, "max_steps": 5, "optimizer.lr": 1e-4}]}, KNOWN).stages[0]
    derived = stage_config(base, 1, stage, Path("/ckpt/stage_0_b4/hf"))
    assert derived["checkpoint"]["checkpoint_dir"].endswith("checkpoints/stage_1_b8")
    assert derived["bard"]["block_size"] == 8 and derived["step_scheduler"]["max_steps"] == 5
    assert derived["optimizer"]["lr"] == 1e-4 and "pbm" not in derived
    assert derived["model"]["_target_"] == FROM_PRETRAINED
    assert derived["model"]["pretrained_model_name_or_path"] == "/ckpt/stage_0_b4/hf"
    first = stage_config(base, 0, stage, None)
    assert first["model"] == base["model"]


@pytest.mark.parametrize("name", ["bard_pbm_tiny.yaml", "bard_pbm_qwen3vl_4b.yaml"])
def test_shipped_yamls_pass_the_checks(name):
    config = yaml.safe_load((RECIPES / name).read_text())
    recipe = BardPBMRecipe(config)
    assert [s.block_size for s in recipe.stages()] == ([4, 8] if "tiny" in name else [4, 8, 16, 32])
    prepare_config(config)


def test_vision_tower_learning_rate_is_scaled_by_the_scheduler():
    from types import SimpleNamespace

    from nemo_automodel.components.config.loader import ConfigNode
    from nemo_automodel.recipes._typed_config import RecipeConfig

    cfg = RecipeConfig(ConfigNode(prepare_config(_tiny_yaml())))
    model = tiny_model()
    [optimizer] = cfg.optimizer.build(model)
    [scheduler] = cfg.lr_scheduler.build(optimizer, SimpleNamespace(epoch_len=None, num_epochs=1, max_steps=12))
    scheduler.step(5)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    vision = group_of[id(params["model.visual.blocks.0.attn.qkv.weight"])]
    merger = group_of[id(params["model.visual.merger.linear_fc1.weight"])]
    language = group_of[id(params["model.language_model.layers.0.mlp.up_proj.weight"])]
    assert merger is language and vision is not language
    assert vision["lr"] == pytest.approx(0.1 * language["lr"]) and language["lr"] > 0


def test_pack_size_must_hold_every_sample_max_length_allows():
    # Tiny YAML: max_length 240 (P + R), block 4 -> layouts up to 499 tokens, pack 512: accepted.
    prepare_config(_tiny_yaml())
    config = _tiny_yaml()
    config["dataset"]["max_length"] = 256  # layouts up to 515 tokens at block 4
    with pytest.raises(ValueError, match=r"pack_size=512 cannot hold .* up to 515 tokens; set pack_size >= 515 or "
                                         r"max_length <= 253"):
        prepare_config(config)
    config["bard"]["packing"]["pack_size"] = None  # one sample per row: rows grow with the sample
    prepare_config(config)


def test_only_the_fake_media_switches_of_the_collator_are_the_users():
    config = _tiny_yaml()
    config["dataloader"]["collate_fn"] = {"fake_videos": True}
    collate = prepare_config(config)["dataloader"]["collate_fn"]
    assert collate["fake_videos"] is True and collate["_target_"] == COLLATE_TARGET
    config["dataloader"]["collate_fn"] = {"_target_": COLLATE_TARGET, "pack_size": 64}
    with pytest.raises(ConfigKeyError, match="pack_size are set by the recipe"):
        prepare_config(config)

# ---------------------------------------------------------------- check_config: all problems, one message
from nemo_automodel_bard.recipes.config_check import check_config, type_problem  # noqa: E402

SWD_SECTIONS = frozenset({"teacher", "teacher_model", "teacher_freeze_config", "distill"})


@pytest.mark.parametrize("name", sorted(p.name for p in RECIPES.glob("bard_*.yaml")) + ["toy_pbm.yaml", "toy_swd.yaml"])
def test_packaged_recipes_pass(name):
    check_config(yaml.safe_load((RECIPES / name).read_text()), SWD_SECTIONS)


def test_every_problem_is_reported_in_one_message(tmp_path):
    config = _tiny_yaml()
    config["bard"]["block_size"] = 4.5  # was silently truncated to 4
    config["step_scheduler"]["max_stepz"] = 3
    config["step_scheduler"]["max_steps"] = 1  # below lr_warmup_steps: 2
    config["checkpoint"]["enabled"] = "yes"
    config["optimizer"]["_target_"] = "torch.optim.AdamWW"
    config["distributed"]["tp_sise"] = 1
    config["pbm"]["stages"][1]["block_size"] = 8.0
    del config["dataset"]
    config["model"]["pretrained_model_name_or_path"] = str(tmp_path / "no_model")
    with pytest.raises(ConfigKeyError) as info:
        check_config(config, check_paths=True)
    message = str(info.value)
    for expected in (
        "9 problem(s)",
        "missing section `dataset:`",
        "bard.block_size: expected an integer, got 4.5",
        "unknown key `step_scheduler.max_stepz`",
        "checkpoint.enabled: expected true or false, got 'yes'",
        "optimizer._target_: 'torch.optim' has no 'AdamWW'",
        "tp_sise",
        "pbm.stages[1].block_size: expected an integer, got 8.0",
        "step_scheduler.max_steps (1) is below lr_scheduler.lr_warmup_steps (2)",
        f"model.pretrained_model_name_or_path: folder not found: {tmp_path / 'no_model'}",
    ):
        assert expected in message, (expected, message)


def test_teacher_folder_is_checked_only_when_a_teacher_is_loaded(tmp_path):
    """``teacher.kind: none`` (CE-only SWD) never loads ``teacher_model``: a stale path there is no problem."""
    import yaml

    from nemo_automodel_bard.recipes.launch import packaged_yaml

    config = yaml.safe_load(packaged_yaml("toy_swd.yaml").read_text())
    config["model"]["pretrained_model_name_or_path"] = str(tmp_path)
    config["teacher_model"]["pretrained_model_name_or_path"] = str(tmp_path / "no_teacher")
    with pytest.raises(ConfigKeyError, match=r"teacher_model.pretrained_model_name_or_path: folder not found"):
        check_config(config, {"teacher_model", "teacher", "distill"}, check_paths=True)
    for kind in ("none", None):  # None: how AutoModel's CLI parser reads --teacher.kind=none
        config["teacher"]["kind"] = kind
        check_config(config, {"teacher_model", "teacher", "distill"}, check_paths=True)


def test_stage_max_steps_below_warmup_and_swd_sections():
    config = _tiny_yaml()
    config["pbm"]["stages"][0]["max_steps"] = 1
    config["pbm"]["stages"][1]["max_steps"] = 12.5
    with pytest.raises(ConfigKeyError) as info:
        check_config(config)
    assert "pbm.stages[0].max_steps (1) is below" in str(info.value)
    assert "pbm.stages[1]: step_scheduler.max_steps: expected an integer or null, got 12.5" in str(info.value)
    swd = yaml.safe_load((RECIPES / "bard_swd_tiny.yaml").read_text())
    swd["teacher"]["block_size"] = "four"
    swd["distill"]["top_k"] = 16.5
    del swd["teacher_model"]
    with pytest.raises(ConfigKeyError) as info:
        check_config(swd, SWD_SECTIONS)
    message = str(info.value)
    assert "teacher.block_size: expected an integer or null, got 'four'" in message
    assert "distill.top_k: expected an integer, got 16.5" in message
    assert "needs a `teacher_model:` section" in message


@pytest.mark.parametrize(
    "value, hint, ok",
    [(4, int, True), (4.5, int, False), (True, int, False), (4, float, True), ("1e-5", float, False),
     (None, int | None, True), ("x", int | None, False), ("mask", Literal_mask := __import__("typing").Literal["mask", "mixed"], True),
     ("uniform", Literal_mask, False), ([1, 2], list[int], True), ("a", Path, True)],
)
def test_type_problem(value, hint, ok):
    assert (type_problem(value, hint) is None) == ok

"""AutoModel's own Qwen3-VL fine-tune config trains as BARD PBM and SWD (issue 17).

``data/qwen3_vl_4b_instruct_rdr_bard.yaml`` is AutoModel 0.7.0's
``examples/vlm_finetune/qwen3/qwen3_vl_4b_instruct_rdr.yaml`` with only the recipe, the
model/processor path, the dataset source (AutoModel's offline mock builder, the same
conversation format as ``make_rdr_dataset``) and ``max_steps`` changed (header of the file).
Both runs are in-process at world size 1 (gloo, FSDP2) on a tiny Bard-VL with Qwen3-VL's
16-pixel patches, so the stock ``min_pixels`` gives the real 196 image tokens per image.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from nemo_automodel_bard.data.conversation import CONVERSATION_DATASET_TARGET
from nemo_automodel_bard.data.dataset import BardChatDataset
from nemo_automodel_bard.data.synthetic import write_tiny_model
from nemo_automodel_bard.recipes import block_diffusion, launch
from nemo_automodel_bard.recipes.block_diffusion import COLLATE_TARGET, prepare_config
from nemo_automodel_bard.recipes.config_check import AUTOMODEL_SECTIONS, ConfigKeyError
from nemo_automodel_bard.recipes.pbm import BardPBMRecipe

STOCK = Path(__file__).with_name("data") / "qwen3_vl_4b_instruct_rdr_bard.yaml"
MOCK = "nemo_automodel.components.datasets.vlm.mock.build_mock_vlm_dataset"


def _stock() -> dict:
    return yaml.safe_load(STOCK.read_text())


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("amcfg")
    write_tiny_model(root / "model", seed=0, block_size=4, patch_size=16)
    return root


@pytest.fixture
def run_dir(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("BARD_TINY_DIR", str(tiny_dir))
    monkeypatch.chdir(tmp_path)  # the stock checkpoint_dir is relative: checkpoints/
    return tmp_path


def _dump(config: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _full(tensor: torch.Tensor) -> torch.Tensor:
    return (tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor).detach().float().cpu()


def _check_trained(recipe, tiny_dir: Path, run_dir: Path) -> None:
    """Two optimizer steps logged; vision tower frozen and unchanged (freeze_config), language trained."""
    lines = [json.loads(x) for x in (run_dir / "checkpoints" / "training.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [0, 1]
    assert all(x["loss"] > 0 and x["num_label_tokens"] > 0 for x in lines)
    assert isinstance(recipe.dataloader.dataset, BardChatDataset)
    assert recipe.dataloader.dataset.rows[0].source == "build_mock_vlm_dataset[item 0]"  # AutoModel's mock items
    assert recipe.dataloader.collate_fn.func.__name__ == "bard_collate"
    assert recipe.noise_seed == 42  # rng.seed
    start = load_file(str(tiny_dir / "model" / "model.safetensors"))
    params = dict(recipe.model_parts[0].named_parameters())
    vision = "model.visual.blocks.0.attn.qkv.weight"
    language = "model.language_model.layers.0.mlp.up_proj.weight"
    assert not params[vision].requires_grad and params[language].requires_grad
    assert torch.equal(_full(params[vision]), start[vision].to(params[vision].dtype).float())
    assert not torch.equal(_full(params[language]), start[language].to(params[language].dtype).float())


def test_stock_sections_are_accepted_replaced_or_refused(caplog, monkeypatch):
    monkeypatch.setattr(block_diffusion, "_WARNED", set())  # warnings are once per process
    with caplog.at_level(logging.WARNING):
        config = prepare_config(_stock())
        prepare_config(_stock())  # a second PBM stage: no second warning
    # dataloader options kept, stock collator and loss replaced with one warning line each
    assert config["dataloader"]["pin_memory"] is True and config["dataloader"]["collate_fn"]["_target_"] == COLLATE_TARGET
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [
        "dataloader.collate_fn: nemo_automodel.components.datasets.vlm.collate_fns.qwen2_5_collate_fn is replaced by "
        "nemo_automodel_bard.data.collate.bard_collate (the [prompt | clean | noisy] layout; packing in bard.packing)",
        "loss_fn: nemo_automodel.components.loss.masked_ce.MaskedCrossEntropy is replaced by the 1/t-weighted "
        "block-diffusion cross-entropy of the BARD recipe (bard.loss)",
    ]
    # the conversation builder becomes the source of the BARD dataset, unshifted
    dataset = config["dataset"]
    assert dataset["_target_"] == CONVERSATION_DATASET_TARGET and dataset["source"]["_target_"] == MOCK
    assert dataset["pretokenize"] is False and dataset["block_size"] == 4
    assert config["seed"] == 42 and config["dist_env"]["backend"] in ("gloo", "nccl")
    assert set(_stock()) <= AUTOMODEL_SECTIONS


@pytest.mark.parametrize(
    "change, error, match",
    [
        ({"freeze_config": {"freeze_embeddings": True}}, ValueError, "freeze_embeddings"),
        ({"rng": {"seed": 1, "ranked": False}}, ConfigKeyError, "rng.ranked"),
        ({"rng": {"seed": 1}, "seed": 2}, ConfigKeyError, "disagree"),
        ({"rng": {"seed": 1, "offset": 3}}, ConfigKeyError, "offset"),
        ({"loss_fn": {"_target_": "my_losses.FocalLoss"}}, ConfigKeyError, "loss_fn: my_losses.FocalLoss cannot be used"),
        ({"dataloader": {"collate_fn": {"_target_": "my.collate"}}}, ConfigKeyError, "dataloader.collate_fn"),
        ({"packed_sequence": {"pack_size": 4096}}, ConfigKeyError, "bard.packing.pack_size"),
        ({"peft": {"dim": 8}, "pbm": {"stages": [{"block_size": 4}, {"block_size": 8}]}}, ConfigKeyError, "peft"),
        ({"rnd": {"seed": 1}}, ConfigKeyError, "unknown top-level YAML key.*rnd"),
    ],
)
def test_what_bard_cannot_honour_is_refused_before_the_model_loads(change, error, match):
    config = _stock()
    config.update(change)
    with pytest.raises(error, match=match):
        BardPBMRecipe.validate_config(config)


def test_truncate_false_drops_over_long_samples_as_automodel_replaces_them():
    config = _stock()
    config["dataset"].update(max_length=512, truncate=False)
    dataset = prepare_config(config)["dataset"]
    assert dataset["too_long"] == "drop" and dataset["max_length"] == 512 and dataset["source"]["max_length"] == 512


def test_bard_finetune_reports_an_unknown_freeze_option_without_loading(run_dir, capsys):
    config = _stock()
    config["freeze_config"]["freeze_embeddings"] = True
    assert launch.main(["--config", str(_dump(config, run_dir / "cfg.yaml"))]) == 2
    assert "freeze_embeddings" in capsys.readouterr().err
    assert not (run_dir / "checkpoints").exists()


def test_stock_config_trains_as_pbm(run_dir, tiny_dir):
    recipe = launch.run_in_process(STOCK, [])
    _check_trained(recipe.last_recipe, tiny_dir, run_dir)


def test_stock_config_trains_as_swd(run_dir, tiny_dir):
    config = _stock()
    config["recipe"] = {"_target_": "nemo_automodel_bard.recipes.swd.BardSWDRecipe"}
    config["bard"] = {"block_size": 8}
    config["teacher"] = {"kind": "anchor", "block_size": 4}
    config["teacher_model"] = dict(config["model"])
    recipe = launch.run_in_process(_dump(config, run_dir / "swd.yaml"), [])
    _check_trained(recipe, tiny_dir, run_dir)
    lines = [json.loads(x) for x in (run_dir / "checkpoints" / "training.jsonl").read_text().splitlines()]
    # student B=8 vs anchor B=4 from the same weights: the masks differ, so the KL term is positive
    assert all(x["kl_loss"] > 0 and x["ce_loss"] > 0 for x in lines)


def test_stock_config_with_the_jsonl_reader_peft_and_a_validation_set(run_dir, tiny_dir):
    """The project's jsonl reader in the stock config; `peft` (LoRA) and `validation_dataset` as in AutoModel."""
    from nemo_automodel_bard.data.synthetic import write_color_dataset

    config = _stock()
    config["dataset"] = {
        "_target_": "nemo_automodel_bard.data.dataset.build_chat_dataset",
        "path_or_dataset": str(write_color_dataset(run_dir / "data", num_samples=8)),
    }
    config["validation_dataset"] = {**_stock()["dataset"], "num_samples": 2}
    config["peft"] = {"_target_": "nemo_automodel.components._peft.lora.PeftConfig", "match_all_linear": True, "dim": 4}
    config["step_scheduler"].update(max_steps=1, val_every_steps=1)
    recipe = launch.run_in_process(_dump(config, run_dir / "cfg.yaml"), []).last_recipe
    assert recipe.dataloader.dataset.rows[0].source.endswith("train.jsonl:1")
    [val] = [json.loads(x) for x in (run_dir / "checkpoints" / "validation.jsonl").read_text().splitlines()]
    assert val["val_loss"] > 0
    params = dict(recipe.model_parts[0].named_parameters())
    trainable = [n for n, p in params.items() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    lora_b = [n for n in trainable if ".lora_B." in n and "language_model" in n]
    assert lora_b and all(_full(params[n]).abs().sum() > 0 for n in lora_b)  # zero-initialised, then trained
    start = load_file(str(tiny_dir / "model" / "model.safetensors"))
    base = next(n for n in params if n.endswith("layers.0.mlp.up_proj.weight"))
    assert torch.equal(_full(params[base]), start["model.language_model.layers.0.mlp.up_proj.weight"].to(params[base].dtype).float())

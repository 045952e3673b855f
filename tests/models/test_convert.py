"""bard-convert: AR Qwen3-VL checkpoint -> Bard-VL initial checkpoint, and its refusals."""

from __future__ import annotations

import json

import pytest
import torch

from nemo_automodel_bard.models.bard_vl import BardVLForConditionalGeneration
from nemo_automodel_bard.models.bard_vl.convert import ConversionError, convert, main
from nemo_automodel_bard.testing import TINY_IDS, chat_batch, save_tiny_qwen3vl_checkpoint, tiny_image


@pytest.fixture(scope="module")
def ar_checkpoint(tmp_path_factory):
    return save_tiny_qwen3vl_checkpoint(tmp_path_factory.mktemp("ar"), seed=3)


def test_convert_rewrites_config_registers_mask_and_keeps_weights(ar_checkpoint, tmp_path):
    from transformers import AutoProcessor

    target = tmp_path / "bard"
    assert main(["--from", str(ar_checkpoint), "--to", str(target), "--mask-token-id", "200", "--block-size", "8"]) == 0
    config = json.loads((target / "config.json").read_text())
    assert config["model_type"] == "bard_vl"
    assert config["architectures"] == ["BardVLForConditionalGeneration"]
    assert (config["mask_token_id"], config["block_size"], config["prompt_attention"]) == (200, 8, "block")
    assert (target / "model.safetensors").read_bytes() == (ar_checkpoint / "model.safetensors").read_bytes()

    processor = AutoProcessor.from_pretrained(target)
    assert processor.tokenizer.convert_tokens_to_ids("<|mask|>") == 200
    assert processor.tokenizer.convert_ids_to_tokens(200) == "<|mask|>"
    assert processor.tokenizer("ab")["input_ids"] == AutoProcessor.from_pretrained(ar_checkpoint).tokenizer("ab")["input_ids"]

    model, info = BardVLForConditionalGeneration.from_pretrained(target, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    batch = chat_batch(processor, ["hello"], images=[tiny_image(0)])
    out = model.eval().generate(batch, max_new_tokens=4, block_size=4, denoising_steps=4)
    assert out.shape == (1, 4) and not (out == 200).any()


@pytest.mark.parametrize(
    "mask_id, match",
    [
        (TINY_IDS["mask"], "already the tokenizer's token"),
        (TINY_IDS["eos"], "collides with eos_token_id"),
        (TINY_IDS["image"], "collides with image_token_id"),
        (10_000, "outside the embedding table"),
    ],
)
def test_convert_refuses_mask_collisions(ar_checkpoint, tmp_path, mask_id, match):
    with pytest.raises(ConversionError, match=match):
        convert(ar_checkpoint, tmp_path / "out", mask_token_id=mask_id)


def test_convert_refuses_non_qwen3vl_source(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert main(["--from", str(tmp_path / "src"), "--to", str(tmp_path / "out")]) == 2
    assert "not a Qwen3-VL checkpoint" in capsys.readouterr().err
    with pytest.raises(ConversionError, match="no config.json"):
        convert(tmp_path, tmp_path / "out2")


def test_convert_refuses_existing_target(ar_checkpoint, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(ConversionError, match="not empty"):
        convert(ar_checkpoint, tmp_path / "out", mask_token_id=200)


def test_converted_weights_equal_source(ar_checkpoint, tmp_path):
    from transformers import Qwen3VLForConditionalGeneration

    target = convert(ar_checkpoint, tmp_path / "bard", mask_token_id=200)
    ours = BardVLForConditionalGeneration.from_pretrained(target).state_dict()
    for name, tensor in Qwen3VLForConditionalGeneration.from_pretrained(ar_checkpoint).state_dict().items():
        assert torch.equal(ours[name], tensor), name

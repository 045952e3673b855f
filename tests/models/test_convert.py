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


def _sharded_ar_checkpoint(path, seed):
    """A tiny AR checkpoint saved as several safetensors shards plus an index."""
    from transformers import Qwen3VLForConditionalGeneration

    single = save_tiny_qwen3vl_checkpoint(path / "single", seed=seed)
    model = Qwen3VLForConditionalGeneration.from_pretrained(single)
    sharded = path / "sharded"
    model.save_pretrained(sharded, safe_serialization=True, max_shard_size="100KB")
    for item in single.iterdir():  # processor files
        if not item.name.startswith("model") and not (sharded / item.name).exists():
            (sharded / item.name).write_bytes(item.read_bytes())
    assert (sharded / "model.safetensors.index.json").is_file()
    return sharded, model.state_dict()


def test_overwrite_leaves_exactly_the_new_checkpoint(ar_checkpoint, tmp_path):
    """Issue 11 item 1: a sharded source converted onto an earlier single-file conversion."""
    target = tmp_path / "bard"
    convert(ar_checkpoint, target, mask_token_id=200)
    assert (target / "model.safetensors").is_file()
    sharded, new_weights = _sharded_ar_checkpoint(tmp_path, seed=11)
    (target / "notes.txt").write_text("user file from before")

    assert main(["--from", str(sharded), "--to", str(target), "--mask-token-id", "200", "--overwrite"]) == 0
    expected = sorted(p.name for p in sharded.iterdir())
    assert sorted(p.name for p in target.iterdir()) == expected  # no stale model.safetensors, no notes.txt
    loaded = BardVLForConditionalGeneration.from_pretrained(target).state_dict()
    for name, tensor in new_weights.items():
        assert torch.equal(loaded[name], tensor), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bard", "sharded", "single"]  # no temporary folders


def test_failed_overwrite_keeps_the_old_checkpoint(ar_checkpoint, tmp_path, monkeypatch):
    import nemo_automodel_bard.models.bard_vl.convert as convert_module

    target = convert(ar_checkpoint, tmp_path / "bard", mask_token_id=200)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(convert_module, "_register_mask_token", broken)
    with pytest.raises(OSError, match="disk full"):
        convert(ar_checkpoint, target, mask_token_id=201, overwrite=True)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["bard"]


def test_mask_token_string_is_looked_up_in_the_source_tokenizer(ar_checkpoint, tmp_path, capsys):
    """Issue 13 item 7: --mask-token alone takes the id the source tokenizer gives the string."""
    target = tmp_path / "bard"
    assert main(["--from", str(ar_checkpoint), "--to", str(target), "--mask-token", "<|reserved|>"]) == 0
    assert json.loads((target / "config.json").read_text())["mask_token_id"] == TINY_IDS["mask"]
    assert main(["--from", str(ar_checkpoint), "--to", str(tmp_path / "b2"), "--mask-token", "<|nope|>"]) == 2
    err = capsys.readouterr().err
    assert "'<|nope|>' is not in the source tokenizer" in err and "--mask-token-id" in err
    assert not (tmp_path / "b2").exists()


def test_malformed_config_and_file_target_are_refused(ar_checkpoint, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "qwen3_vl",')
    assert main(["--from", str(broken), "--to", str(tmp_path / "out")]) == 2
    assert "config.json is not valid JSON" in capsys.readouterr().err
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert main(["--from", str(ar_checkpoint), "--to", str(a_file), "--mask-token-id", "200", "--overwrite"]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err
    assert a_file.read_text() == "x"


def test_converted_processor_takes_the_card_snippets_video_kwargs(ar_checkpoint, tmp_path):
    """AutoProcessor on a converted folder gives BardVLProcessor, which takes qwen-vl-utils' {"fps": []}."""
    from transformers import AutoProcessor

    from nemo_automodel_bard.models.bard_vl.processing import BardVLProcessor

    source = json.loads((ar_checkpoint / "processor_config.json").read_text()) if (
        ar_checkpoint / "processor_config.json").is_file() else {}
    target = convert(ar_checkpoint, tmp_path / "bard", mask_token_id=200)
    processor = AutoProcessor.from_pretrained(target)
    assert type(processor) is BardVLProcessor
    if source:
        assert source.get("processor_class") == "Qwen3VLProcessor"  # the stock class was renamed, not kept
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    batch = processor(text=[text], images=[tiny_image()], videos=None, padding=False, return_tensors="pt", fps=[])
    assert int(batch["image_grid_thw"].prod()) > 0


# --processor-only DIR: prepare a released Bard-VL checkpoint in place (processor_files.py).


@pytest.fixture(scope="module")
def released_checkpoint(tmp_path_factory):
    from nemo_automodel_bard.testing import save_tiny_released_checkpoint

    return save_tiny_released_checkpoint(tmp_path_factory.mktemp("released") / "ckpt", legacy_files=True)


def _copy_dir(src, dst):
    dst.mkdir()
    for item in src.iterdir():
        (dst / item.name).write_bytes(item.read_bytes())
    return dst


def test_processor_only_renames_in_place_and_is_idempotent(released_checkpoint, tmp_path, capsys):
    from transformers import AutoProcessor

    from nemo_automodel_bard.models.bard_vl.processing import BardVLProcessor

    model_dir = _copy_dir(released_checkpoint, tmp_path / "ckpt")
    before = {p.name: p.read_bytes() for p in model_dir.iterdir()}
    assert main(["--processor-only", str(model_dir)]) == 0
    out = capsys.readouterr().out
    assert "Qwen3VLProcessor -> BardVLProcessor" in out and "video_preprocessor_config.json" in out
    after = {p.name: p.read_bytes() for p in model_dir.iterdir()}
    assert after == {name: data.replace(b'"Qwen3VLProcessor"', b'"BardVLProcessor"') for name, data in before.items()}
    assert after != before
    assert type(AutoProcessor.from_pretrained(model_dir)) is BardVLProcessor
    assert main(["--processor-only", str(model_dir)]) == 0
    assert "nothing to change" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == after


def test_processor_only_refuses_what_is_not_a_released_bard_vl_checkpoint(
    released_checkpoint, ar_checkpoint, tmp_path, capsys
):
    ar_before = {p.name: p.read_bytes() for p in ar_checkpoint.iterdir()}
    assert main(["--processor-only", str(ar_checkpoint)]) == 2
    err = capsys.readouterr().err
    assert "autoregressive Qwen3-VL checkpoint" in err and f"--from {ar_checkpoint} --to OUT" in err
    assert {p.name: p.read_bytes() for p in ar_checkpoint.iterdir()} == ar_before

    assert main(["--processor-only", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    other = tmp_path / "llama"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert main(["--processor-only", str(other)]) == 2
    assert "not a Bard-VL checkpoint: model_type is 'llama'" in capsys.readouterr().err

    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_bytes((released_checkpoint / "config.json").read_bytes())
    assert main(["--processor-only", str(bare)]) == 2
    assert "has no processor files" in capsys.readouterr().err

    foreign = _copy_dir(released_checkpoint, tmp_path / "foreign")
    (foreign / "tokenizer_config.json").write_text(json.dumps({"processor_class": "LlavaProcessor"}))
    broken = _copy_dir(released_checkpoint, tmp_path / "broken")
    (broken / "video_preprocessor_config.json").write_text('{"processor_class": ')
    for model_dir, message in ((foreign, "names processor_class 'LlavaProcessor'"), (broken, "is not valid JSON")):
        before = {p.name: p.read_bytes() for p in model_dir.iterdir()}
        assert main(["--processor-only", str(model_dir)]) == 2
        assert message in capsys.readouterr().err
        assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == before  # nothing half-renamed


def test_processor_only_takes_no_conversion_options(released_checkpoint, capsys):
    for extra in (["--to", "out"], ["--block-size", "8"], ["--overwrite"]):
        with pytest.raises(SystemExit) as exit_:
            main(["--processor-only", str(released_checkpoint), *extra])
        assert exit_.value.code == 2
        assert f"takes no other option (got {extra[0]})" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--to", "out"])
    assert "--from and --to are required" in capsys.readouterr().err

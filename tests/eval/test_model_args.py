"""``model_args`` of ``--model bard_vl`` are checked by name and value before any weights load."""

from __future__ import annotations

import json

import pytest

from nemo_automodel_bard.eval.model_args import EvalSettings, parse_model_args


@pytest.fixture
def bard_dir(tmp_path):
    (tmp_path / "bard").mkdir()
    (tmp_path / "bard" / "config.json").write_text(json.dumps({"model_type": "bard_vl"}))
    return str(tmp_path / "bard")


@pytest.fixture
def ar_dir(tmp_path):
    (tmp_path / "ar").mkdir()
    (tmp_path / "ar" / "config.json").write_text(json.dumps({"model_type": "qwen3_vl"}))
    return str(tmp_path / "ar")


def test_strings_are_parsed_to_typed_settings(bard_dir):
    settings = parse_model_args({"pretrained": bard_dir, "block_size": "8", "denoising_steps": "4",
                                 "confidence_threshold": "0.7", "max_pixels": "4096", "device": "cpu",
                                 "remasking_strategy": "low_confidence_static"})
    assert settings == EvalSettings(pretrained=bard_dir, block_size=8, denoising_steps=4, confidence_threshold=0.7,
                                    max_pixels=4096, device="cpu", remasking_strategy="low_confidence_static")
    assert settings.system_prompt is None  # the checkpoint's chat template decides


def test_unknown_keys_are_rejected_by_name(bard_dir):
    with pytest.raises(ValueError, match=r"unknown bard_vl model_args \['confidence_treshold', 'edit_threshold'\]"):
        parse_model_args({"pretrained": bard_dir, "confidence_treshold": "0.5", "edit_threshold": "0.9"})


def test_batch_size_in_model_args_points_to_the_cli_option(bard_dir):
    with pytest.raises(ValueError, match=r"\['batch_size'\].*--batch_size"):
        parse_model_args({"pretrained": bard_dir, "batch_size": "4"})


@pytest.mark.parametrize("key, value, message", [
    ("remasking_strategy", "random", "remasking_strategy must be one of"),
    ("block_size", "4.5", "block_size must be an integer >= 1"),
    ("block_size", "0", "block_size must be an integer >= 1"),
    ("max_new_tokens", True, "max_new_tokens must be an integer"),
    ("confidence_threshold", "1.5", r"confidence_threshold must be a number in \[0, 1\]"),
    ("confidence_threshold", "high", r"confidence_threshold must be a number in \[0, 1\]"),
    ("decoding", "beam", "decoding must be one of"),
    ("dtype", "float8", "dtype must be one of"),
    ("device", "gpu", "device must be auto, cpu, cuda or cuda:N"),
    ("attn_implementation", "flash_attention_2", "attn_implementation must be one of"),
])
def test_bad_values_name_the_key(bard_dir, key, value, message):
    with pytest.raises(ValueError, match=message):
        parse_model_args({"pretrained": bard_dir, key: value})


def test_static_strategy_needs_steps_within_the_block(bard_dir):
    with pytest.raises(ValueError, match="denoising_steps=8 must be <= block_size=4"):
        parse_model_args({"pretrained": bard_dir, "block_size": "4", "denoising_steps": "8",
                          "remasking_strategy": "low_confidence_static"})


@pytest.mark.parametrize("args, message", [
    ({"revision_threshold": "1.0"}, r"revision_threshold=1.0 must be in \[0, 1\)"),
    ({"revision_threshold": "0.3", "remasking_strategy": "low_confidence_static"}, "needs remasking_strategy"),
])
def test_revision_threshold_is_checked(bard_dir, args, message):
    assert parse_model_args({"pretrained": bard_dir, "revision_threshold": "0.3"}).revision_threshold == 0.3
    with pytest.raises(ValueError, match=message):
        parse_model_args({"pretrained": bard_dir, **args})


def test_pretrained_must_be_a_checkpoint_folder(tmp_path):
    with pytest.raises(ValueError, match="pretrained=CHECKPOINT_FOLDER is required"):
        parse_model_args({"block_size": "4"})
    with pytest.raises(FileNotFoundError, match="folder not found"):
        parse_model_args({"pretrained": str(tmp_path / "nowhere")})
    with pytest.raises(FileNotFoundError, match="no config.json"):
        parse_model_args({"pretrained": str(tmp_path)})


def test_decoding_must_fit_the_checkpoint(bard_dir, ar_dir):
    with pytest.raises(ValueError, match="'qwen3_vl' checkpoint, not Bard-VL.*decoding=ar"):
        parse_model_args({"pretrained": ar_dir})
    with pytest.raises(ValueError, match="decoding=ar needs the autoregressive source"):
        parse_model_args({"pretrained": bard_dir, "decoding": "ar"})
    assert parse_model_args({"pretrained": ar_dir, "decoding": "ar"}).decoding == "ar"


def test_system_prompt_none_empty_text_or_file(bard_dir, tmp_path):
    assert parse_model_args({"pretrained": bard_dir, "system_prompt": "None"}).system_prompt is None
    assert parse_model_args({"pretrained": bard_dir, "system_prompt": ""}).system_prompt == ""
    assert parse_model_args({"pretrained": bard_dir, "system_prompt": "Be brief."}).system_prompt == "Be brief."
    (tmp_path / "sys.txt").write_text("From a file.")
    assert parse_model_args({"pretrained": bard_dir, "system_prompt": str(tmp_path / "sys.txt")}).system_prompt == "From a file."

"""processor_files: which class AutoProcessor builds for a checkpoint, renaming it in place, and
the warning ``from_pretrained`` gives for a released checkpoint (files naming ``Qwen3VLProcessor``)."""

from __future__ import annotations

import json
import logging
import os

import pytest
from transformers import AutoModelForImageTextToText, AutoProcessor, Qwen3VLProcessor

from nemo_automodel_bard.models.bard_vl import BardVLForConditionalGeneration, BardVLProcessor
from nemo_automodel_bard.models.bard_vl.processor_files import (
    rename_stock_processor,
    stock_processor_file,
    warn_if_stock_processor,
)
from nemo_automodel_bard.testing import save_tiny_released_checkpoint

LOGGER = "nemo_automodel_bard.models.bard_vl.processor_files"


@pytest.fixture(scope="module", params=[False, True], ids=["processor_config", "legacy_files"])
def released(request, tmp_path_factory):
    return save_tiny_released_checkpoint(tmp_path_factory.mktemp("released") / "ckpt", legacy_files=request.param)


def _copy(src, dst):
    dst.mkdir()
    for item in src.iterdir():
        (dst / item.name).write_bytes(item.read_bytes())
        os.chmod(dst / item.name, item.stat().st_mode & 0o7777)
    return dst


def _set_class(path, cls):
    data = json.loads(path.read_text())
    if cls is None:
        data.pop("processor_class", None)
    else:
        data["processor_class"] = cls
    path.write_text(json.dumps(data))


def test_rename_changes_only_the_class_name_and_is_idempotent(released, tmp_path):
    model_dir = _copy(released, tmp_path / "ckpt")
    (model_dir / "tokenizer_config.json").chmod(0o640)
    before = {p.name: p.read_bytes() for p in model_dir.iterdir()}
    changed = rename_stock_processor(model_dir)
    assert changed and all(b"Qwen3VLProcessor" in before[p.name] for p in changed)
    for name, old in before.items():
        new = (model_dir / name).read_bytes()
        assert new == old.replace(b'"Qwen3VLProcessor"', b'"BardVLProcessor"'), name
    assert (model_dir / "tokenizer_config.json").stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(before)  # no temporary file left
    assert rename_stock_processor(model_dir) == []
    assert type(AutoProcessor.from_pretrained(model_dir)) is BardVLProcessor


def test_rename_keeps_nested_objects_when_the_text_cannot_be_edited_in_place(tmp_path):
    path = tmp_path / "processor_config.json"
    path.write_text(json.dumps({"processor_class": "Qwen3VLProcessor", "note": {"processor_class": "Qwen3VLProcessor"}}))
    assert rename_stock_processor(tmp_path) == [path]
    assert json.loads(path.read_text()) == {"processor_class": "BardVLProcessor", "note": {"processor_class": "Qwen3VLProcessor"}}


@pytest.mark.parametrize(
    "legacy_files, classes",
    [
        (False, {}),
        (False, {"processor_config.json": "BardVLProcessor"}),
        (False, {"processor_config.json": None}),
        (False, {"processor_config.json": None, "tokenizer_config.json": "BardVLProcessor"}),
        (False, {"processor_config.json": None, "tokenizer_config.json": None}),
        (False, {"tokenizer_config.json": "BardVLProcessor"}),
        (True, {}),
        (True, {"preprocessor_config.json": "BardVLProcessor"}),
        (True, {"preprocessor_config.json": None}),
        # The video file still names Qwen3VLProcessor but is not read when preprocessor_config.json exists.
        (True, {"preprocessor_config.json": None, "tokenizer_config.json": "BardVLProcessor"}),
    ],
)
def test_stock_processor_file_agrees_with_autoprocessor(tmp_path, legacy_files, classes):
    """Reference: the class AutoProcessor itself builds for the directory."""
    model_dir = save_tiny_released_checkpoint(tmp_path / "ckpt", legacy_files=legacy_files)
    for name, cls in classes.items():
        _set_class(model_dir / name, cls)
    built = type(AutoProcessor.from_pretrained(model_dir))
    assert built in (Qwen3VLProcessor, BardVLProcessor)
    found = stock_processor_file(model_dir)
    assert (found is not None) == (built is Qwen3VLProcessor)
    if found is not None:
        assert json.loads((model_dir / found).read_text())["processor_class"] == "Qwen3VLProcessor"


def test_from_pretrained_warns_once_before_the_fix_and_not_after(released, tmp_path, caplog):
    model_dir = _copy(released, tmp_path / "ckpt")
    deciding = "processor_config.json" if (model_dir / "processor_config.json").exists() else "preprocessor_config.json"
    for load in (BardVLForConditionalGeneration.from_pretrained, AutoModelForImageTextToText.from_pretrained):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            load(model_dir)
        warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER]
        assert len(warnings) == 1
        assert str(model_dir / deciding) in warnings[0]
        assert f"bard convert --processor-only {model_dir}" in warnings[0]
    rename_stock_processor(model_dir)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        BardVLForConditionalGeneration.from_pretrained(model_dir)
    assert not [r for r in caplog.records if r.name == LOGGER]


def test_hub_id_warns_only_from_files_already_in_the_cache(released, tmp_path, monkeypatch, caplog):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert not warn_if_stock_processor("someone/bard-vl-tiny")  # nothing cached: no download, no warning
    repo = tmp_path / "hub" / "models--someone--bard-vl-tiny"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    for item in released.iterdir():
        if item.suffix == ".json":
            (snapshot / item.name).write_bytes(item.read_bytes())
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert warn_if_stock_processor("someone/bard-vl-tiny")
    (message,) = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert "hf download someone/bard-vl-tiny --local-dir DIR" in message and "--processor-only DIR" in message
    rename_stock_processor(snapshot)
    assert not warn_if_stock_processor("someone/bard-vl-tiny")


def test_rename_replaces_a_symlinked_file_and_leaves_its_target_alone(released, tmp_path):
    """HF cache snapshots link to shared blobs: the blob must not change."""
    model_dir = _copy(released, tmp_path / "ckpt")
    name = "tokenizer_config.json"
    blob = tmp_path / "blob"
    blob.write_bytes((model_dir / name).read_bytes())
    (model_dir / name).unlink()
    (model_dir / name).symlink_to(blob)
    assert model_dir / name in rename_stock_processor(model_dir)
    assert not (model_dir / name).is_symlink()
    assert blob.read_bytes() == (released / name).read_bytes()
    assert (model_dir / name).read_bytes() == blob.read_bytes().replace(b'"Qwen3VLProcessor"', b'"BardVLProcessor"')


def test_project_tools_that_serve_themselves_do_not_warn(released, caplog, capsys):
    """``bard generate`` calls the processor itself (no qwen-vl-utils fps list): the stock class
    serves it, so the warning would be noise there."""
    from nemo_automodel_bard.cli import main

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert main(["generate", "--model", str(released), "--prompt", "hi", "--max-new-tokens", "4"]) == 0
    assert not [r for r in caplog.records if r.name == LOGGER]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        BardVLForConditionalGeneration.from_pretrained(released)  # a user's own load still warns
    assert [r for r in caplog.records if r.name == LOGGER]

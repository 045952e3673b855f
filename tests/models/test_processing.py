"""``BardVLProcessor``: qwen-vl-utils' video kwargs, AutoProcessor registration, loading a
directory whose files name ``Qwen3VLProcessor`` (as released checkpoints do)."""

from __future__ import annotations

import json

import pytest
import torch
from qwen_vl_utils import process_vision_info
from transformers import AutoProcessor, Qwen3VLProcessor

from nemo_automodel_bard.models.bard_vl import BardVLProcessor
from nemo_automodel_bard.models.bard_vl.processing import as_bard_processor
from nemo_automodel_bard.testing import tiny_image, tiny_processor


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    paths = []
    for i in range(4):
        tiny_image(seed=i, size=32).save(root / f"{i}.png")
        paths.append(str(root / f"{i}.png"))
    return paths


def _vision(messages, processor, **kw):
    return process_vision_info(
        messages, return_video_kwargs=True, image_patch_size=processor.image_processor.patch_size, **kw
    )


def _assert_same(a, b):
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_autoprocessor_gives_bard_processor_for_its_own_files(tmp_path):
    as_bard_processor(tiny_processor()).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "processor_config.json").read_text())["processor_class"] == "BardVLProcessor"
    assert type(AutoProcessor.from_pretrained(tmp_path)) is BardVLProcessor


def test_loads_a_directory_that_names_qwen3vl_processor(tmp_path, frames):
    tiny_processor().save_pretrained(tmp_path)  # processor_class: Qwen3VLProcessor, as released
    assert json.loads((tmp_path / "processor_config.json").read_text())["processor_class"] == "Qwen3VLProcessor"
    stock = AutoProcessor.from_pretrained(tmp_path)
    ours = BardVLProcessor.from_pretrained(tmp_path)
    assert type(stock) is Qwen3VLProcessor and type(ours) is BardVLProcessor
    text = "<|vision_start|><|image_pad|><|vision_end|>hello"
    _assert_same(ours(text=[text], images=[tiny_image()], return_tensors="pt"),
                 stock(text=[text], images=[tiny_image()], return_tensors="pt"))
    ours.save_pretrained(tmp_path)  # re-serialises every file; bard convert --processor-only renames only
    assert type(AutoProcessor.from_pretrained(tmp_path)) is BardVLProcessor


def test_image_only_video_kwargs_from_qwen_vl_utils(tmp_path):
    image = tmp_path / "im.png"
    tiny_image(size=24).save(image)
    messages = [{"role": "user", "content": [{"type": "image", "image": str(image)}, {"type": "text", "text": "hi"}]}]
    ours = as_bard_processor(tiny_processor())
    text = ours.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    images, videos, video_kwargs = _vision(messages, ours, return_video_metadata=False)
    assert video_kwargs["fps"] == [] and videos is None
    # transformers 5.18's own processor rejects qwen-vl-utils' empty list (the bug this class fixes).
    with pytest.raises(Exception, match="fps"):
        tiny_processor()(text=[text], images=images, videos=videos, return_tensors="pt", **video_kwargs)
    got = ours(text=[text], images=images, videos=videos, padding=False, return_tensors="pt", **video_kwargs)
    _assert_same(got, tiny_processor()(text=[text], images=images, return_tensors="pt"))


def test_per_video_fps_list_gives_the_timestamps_of_the_metadata_path(frames):
    messages = [{"role": "user", "content": [{"type": "video", "video": frames}, {"type": "text", "text": "what?"}]}]
    ours = as_bard_processor(tiny_processor())
    text = ours.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    images, videos, video_kwargs = _vision(messages, ours, return_video_metadata=False)
    assert video_kwargs["fps"] == [2.0]
    got = ours(text=[text], images=images, videos=videos, return_tensors="pt", **video_kwargs)
    # Reference: qwen-vl-utils' metadata path through transformers' own processor.
    images, pairs, video_kwargs = _vision(messages, ours, return_video_metadata=True)
    ref = tiny_processor()(
        text=[text], images=images, videos=[p[0] for p in pairs], video_metadata=[p[1] for p in pairs],
        return_tensors="pt", **video_kwargs,
    )
    _assert_same(got, ref)
    assert "seconds>" in ours.tokenizer.decode(got["input_ids"][0])


def test_per_video_fps_list_errors(frames):
    ours = as_bard_processor(tiny_processor())
    video = torch.rand(4, 3, 32, 32)
    text = ["<|vision_start|><|video_pad|><|vision_end|>"]
    with pytest.raises(ValueError, match="1 videos"):
        ours(text=text, videos=[video], fps=[2.0, 2.0], do_sample_frames=False, return_tensors="pt")
    with pytest.raises(ValueError, match="do_sample_frames"):
        ours(text=text, videos=[video], fps=[2.0], do_sample_frames=True, return_tensors="pt")

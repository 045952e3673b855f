"""The three Hugging Face entry points, run as users write them against a tiny local checkpoint:

1. the Bard-VL model card's snippet (qwen-vl-utils + ``generate(batch, ...)``, response only);
2. the Qwen3-VL card's snippet with the class swapped (``generate(**inputs)`` + prompt trimming);
3. ``pipeline("image-text-to-text", model=dir)``, single and batched, Bard options in
   ``generate_kwargs``.

Each snippet's tokens are compared with the positional call on the same processor output and
options (the decoding itself is checked against uncached decoding in test_block_decode.py).
Snippet bodies are kept as the cards write them; only the paths and sizes are local.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import nemo_automodel_bard  # noqa: F401  (the one line the snippets add)
from nemo_automodel_bard.testing import save_tiny_checkpoint, tiny_image

BARD = dict(block_size=4, denoising_steps=4, confidence_threshold=0.6)


@pytest.fixture(scope="module")
def model_id(tmp_path_factory):
    return str(save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-bard-vl"))


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "picture.png"
    tiny_image(seed=3, size=24).save(path)
    return str(path)


@pytest.fixture(scope="module")
def frame_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    for i in range(4):
        tiny_image(seed=10 + i, size=32).save(root / f"frame{i}.png")
    return [str(root / f"frame{i}.png") for i in range(4)]


def bard_card_snippet(model_id, content, max_new_tokens=16):
    """The Bard-VL card's inference snippet (image or video content), unchanged but for paths."""
    from qwen_vl_utils import process_vision_info
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(model_id, dtype=torch.float32, attn_implementation="sdpa").eval()
    processor = AutoProcessor.from_pretrained(model_id)
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": content},
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    image_inputs, video_inputs, video_kwargs = process_vision_info(
        messages,
        return_video_kwargs=True,
        return_video_metadata=False,
        image_patch_size=processor.image_processor.patch_size,
    )
    inputs = processor(
        text=[text], images=image_inputs, videos=video_inputs, padding=False, return_tensors="pt", **video_kwargs
    ).to(model.device)
    response_ids = model.generate(inputs, max_new_tokens=max_new_tokens, **BARD)
    output = processor.batch_decode(response_ids, skip_special_tokens=True)[0]
    return model, inputs, response_ids, output


def qwen3vl_card_snippet(model_id, image_path, max_new_tokens=16):
    """The Qwen3-VL card's snippet with the model class swapped for Bard-VL's."""
    from transformers import AutoProcessor

    from nemo_automodel_bard import BardVLForConditionalGeneration

    model = BardVLForConditionalGeneration.from_pretrained(model_id, dtype="auto", device_map="auto")
    processor = AutoProcessor.from_pretrained(model_id)
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": image_path},
                {"type": "text", "text": "Describe this image."},
            ],
        }
    ]
    inputs = processor.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    inputs = inputs.to(model.device)
    generated_ids = model.generate(**inputs, max_new_tokens=max_new_tokens, **BARD)
    generated_ids_trimmed = [out_ids[len(in_ids) :] for in_ids, out_ids in zip(inputs.input_ids, generated_ids)]
    output_text = processor.batch_decode(
        generated_ids_trimmed, skip_special_tokens=True, clean_up_tokenization_spaces=False
    )
    return model, inputs, generated_ids, output_text


def test_bard_card_snippet_with_an_image(model_id, image_path):
    content = [{"type": "image", "image": image_path}, {"type": "text", "text": "Please describe this image"}]
    model, inputs, response_ids, output = bard_card_snippet(model_id, content)
    assert response_ids.shape[0] == 1 and 0 < response_ids.shape[1] <= 16
    assert isinstance(output, str)
    hf = model.generate(**inputs, max_new_tokens=16, **BARD)
    assert torch.equal(hf[:, inputs["input_ids"].shape[1] :], response_ids)


def test_bard_card_snippet_on_the_synthetic_checkpoint(tmp_path, image_path):
    from nemo_automodel_bard.data.synthetic import write_tiny_model

    model_dir = str(write_tiny_model(tmp_path / "model"))  # what `python -m ...data.synthetic` writes
    content = [{"type": "image", "image": image_path}, {"type": "text", "text": "What colour is this?"}]
    _, inputs, response_ids, output = bard_card_snippet(model_dir, content, max_new_tokens=8)
    assert inputs["image_grid_thw"].shape[0] == 1 and response_ids.shape[0] == 1 and isinstance(output, str)


def test_bard_card_snippet_with_a_video_given_as_frames(model_id, frame_paths):
    content = [{"type": "video", "video": frame_paths}, {"type": "text", "text": "What happens?"}]
    model, inputs, response_ids, _ = bard_card_snippet(model_id, content)
    assert inputs["video_grid_thw"].shape[0] == 1 and "pixel_values" not in inputs
    hf = model.generate(**inputs, max_new_tokens=16, **BARD)
    assert torch.equal(hf[:, inputs["input_ids"].shape[1] :], response_ids)


def test_bard_card_snippet_with_a_video_file(model_id, tmp_path):
    av = pytest.importorskip("av")  # writes the clip
    pytest.importorskip("decord")  # qwen-vl-utils' decoder here (torchvision 0.29 has no read_video)
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=4)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for seed in range(8):
            frame = av.VideoFrame.from_ndarray(np.asarray(tiny_image(seed=seed, size=32)), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    content = [{"type": "video", "video": str(path)}, {"type": "text", "text": "What happens?"}]
    model, inputs, response_ids, _ = bard_card_snippet(model_id, content)
    assert inputs["video_grid_thw"].shape[0] == 1
    hf = model.generate(**inputs, max_new_tokens=16, **BARD)
    assert torch.equal(hf[:, inputs["input_ids"].shape[1] :], response_ids)


def test_qwen3vl_card_snippet(model_id, image_path):
    model, inputs, generated_ids, output_text = qwen3vl_card_snippet(model_id, image_path)
    P = inputs["input_ids"].shape[1]
    assert torch.equal(generated_ids[:, :P], inputs["input_ids"])
    ref = model.generate(inputs, 16, **BARD)  # the positional call on the same processor output
    assert torch.equal(generated_ids[:, P:], ref)
    assert isinstance(output_text, list) and len(output_text) == 1


def test_pipeline_single_and_batched(model_id, image_path):
    from transformers import AutoProcessor, pipeline

    pipe = pipeline("image-text-to-text", model=model_id)
    chats = [
        [{"role": "user", "content": [{"type": "image", "image": image_path}, {"type": "text", "text": "What is it?"}]}],
        [{"role": "user", "content": [{"type": "image", "image": tiny_image(seed=5)}, {"type": "text", "text": "Colour?"}]}],
    ]
    # Fresh generate_kwargs per call: the pipeline writes max_new_tokens into the dict it is given.
    single = [
        pipe(text=chat, max_new_tokens=12, return_full_text=False, generate_kwargs=dict(BARD))[0]["generated_text"]
        for chat in chats
    ]
    batched = pipe(text=chats, max_new_tokens=12, return_full_text=False, batch_size=2, generate_kwargs=dict(BARD))
    batched = [out[0]["generated_text"] for out in batched]
    assert batched == single
    assert any(single)  # the tiny model's (random) tokens decode to text

    # Reference: the positional call on the processor output the pipeline builds from a chat.
    processor = AutoProcessor.from_pretrained(model_id)
    for chat, text in zip(chats, single):
        inputs = processor.apply_chat_template(
            chat, tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
        response = pipe.model.generate(inputs, 12, **BARD)
        assert text == processor.batch_decode(response, skip_special_tokens=True)[0]
        tokens = pipe(text=chat, max_new_tokens=12, return_tensors=True, generate_kwargs=dict(BARD))[0]
        assert torch.equal(tokens["generated_token_ids"][inputs["input_ids"].shape[1] :], response[0])


@pytest.mark.parametrize("legacy_files", [False, True], ids=["processor_config", "legacy_files"])
def test_bard_card_snippet_on_a_released_checkpoint_after_the_one_time_fix(tmp_path, image_path, legacy_files, caplog):
    """A released checkpoint's processor files name Qwen3VLProcessor: AutoProcessor then builds
    transformers' class and the card's snippet fails on qwen-vl-utils' {"fps": []} (transformers
    5.18 + qwen-vl-utils 0.0.14). Loading the model warns with the fix; after
    ``bard convert --processor-only DIR`` the unchanged snippet runs, with no warning."""
    from huggingface_hub.errors import StrictDataclassFieldValidationError
    from qwen_vl_utils import process_vision_info
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from nemo_automodel_bard.cli import main as bard
    from nemo_automodel_bard.models.bard_vl import BardVLProcessor
    from nemo_automodel_bard.testing import save_tiny_released_checkpoint

    model_id = str(save_tiny_released_checkpoint(tmp_path / "released", legacy_files=legacy_files))
    content = [{"type": "image", "image": image_path}, {"type": "text", "text": "Please describe this image"}]

    def warned():
        return [r.getMessage() for r in caplog.records if "--processor-only" in r.getMessage()]

    with caplog.at_level(logging.WARNING), pytest.raises(StrictDataclassFieldValidationError, match="fps"):
        bard_card_snippet(model_id, content)
    assert len(warned()) == 1 and f"bard convert --processor-only {model_id}" in warned()[0]

    # Reference, from the released files as they are: BardVLProcessor read directly, the
    # images qwen-vl-utils gives, and the positional generate call.
    model = AutoModelForImageTextToText.from_pretrained(model_id, dtype=torch.float32).eval()
    processor = BardVLProcessor.from_pretrained(model_id)
    messages = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": content}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    images, _ = process_vision_info(messages, image_patch_size=processor.image_processor.patch_size)
    ref_inputs = processor(text=[text], images=images, return_tensors="pt")
    ref = model.generate(ref_inputs, max_new_tokens=16, **BARD)

    assert bard(["convert", "--processor-only", model_id]) == 0  # what the user runs once
    assert type(AutoProcessor.from_pretrained(model_id)) is BardVLProcessor
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        model, inputs, response_ids, output = bard_card_snippet(model_id, content)
    assert not warned()
    assert torch.equal(inputs["input_ids"], ref_inputs["input_ids"])
    assert torch.equal(inputs["pixel_values"], ref_inputs["pixel_values"])
    assert torch.equal(response_ids, ref) and isinstance(output, str)
    assert bard(["convert", "--processor-only", model_id]) == 0  # idempotent

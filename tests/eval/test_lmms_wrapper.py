"""The ``bard_vl`` runner answers like a direct ``model.generate`` on the same chat, batched or not."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nemo_automodel_bard.data.chat import load_video
from nemo_automodel_bard.eval.runner import BardVLRunner, ThroughputLog, to_bool, truncate_at_stops
from nemo_automodel_bard.testing import save_tiny_checkpoint, save_tiny_qwen3vl_checkpoint, tiny_image, write_tiny_video

SETTINGS = dict(block_size=4, denoising_steps=4, confidence_threshold=0.5)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("bard_tiny"), seed=0)


@pytest.fixture(scope="module")
def runner(checkpoint):
    return BardVLRunner(str(checkpoint), max_new_tokens=8, device="cpu", dtype="float32", **SETTINGS)


def _reference_answer(runner: BardVLRunner, context: str, image, max_new_tokens: int, system: str | None = None) -> str:
    """Decode the chat directly with ``model.generate``: one user turn (image, question), no system turn."""
    proc = runner.processor
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": context}]})
    text = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    batch = proc(text=[text], images=[image], return_tensors="pt")
    with torch.inference_mode():
        ids = runner.model.generate(batch, max_new_tokens, block_size=4, denoising_steps=4, confidence_threshold=0.5,
                                    eos_token_id=runner.eos_token_id)
    ids = ids[0].tolist()
    ids = ids[: ids.index(runner.eos_token_id) + 1] if runner.eos_token_id in ids else ids
    return proc.tokenizer.decode(ids, skip_special_tokens=True).strip()


def test_truncate_at_stops_cuts_at_earliest_stop():
    assert truncate_at_stops("a b. c\n\nd", ["\n\n", "."]) == "a b"
    assert truncate_at_stops("abc", []) == "abc"
    assert truncate_at_stops("abc", [""]) == "abc"


def test_to_bool_parses_model_args_strings():
    assert to_bool("True") and to_bool("1") and not to_bool("false") and not to_bool("0")


def test_throughput_log_totals():
    log = ThroughputLog()
    log.add(tokens=8, forwards=2, seconds=0.5)
    log.add(tokens=4, forwards=2, seconds=1.5, requests=2, batch_forwards=1)
    summary = log.summary()
    assert summary == {"requests": 3, "tokens": 12, "forwards": 4, "batch_forwards": 3, "tpf": 3.0,
                       "tokens_per_s": 6.0, "seconds": 2.0}


def test_runner_matches_direct_generate_without_system_turn(runner):
    images = [tiny_image(seed=s) for s in range(3)]
    for i, image in enumerate(images):
        got = runner.answer(f"<image>describe {i}", [image], {"max_new_tokens": 8})
        assert got == _reference_answer(runner, f"describe {i}", image, 8)
    assert "<|im_start|>system" not in runner.processor.apply_chat_template(
        runner.messages("q", images[:1]), tokenize=False, add_generation_prompt=True)
    summary = runner.log.summary()
    assert summary["requests"] == 3 and summary["tokens"] > 0 and summary["forwards"] > 0


def test_system_prompt_adds_a_system_turn(checkpoint):
    runner = BardVLRunner(str(checkpoint), max_new_tokens=8, device="cpu", dtype="float32",
                          system_prompt="Be brief.", **SETTINGS)
    text = runner.processor.apply_chat_template(runner.messages("q", []), tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    image = tiny_image(seed=5)
    assert runner.answer("q", [image], {"max_new_tokens": 8}) == _reference_answer(runner, "q", image, 8, "Be brief.")


def test_batched_answers_equal_batch_one(runner):
    """Left-padded batches (prompts of different lengths) give each request its batch-1 answer."""
    contexts = ["a", "describe the picture in many more words", "count", "what is shown here"]
    images = [tiny_image(seed=10 + i, size=16 if i % 2 else 24) for i in range(4)]
    batched = runner.answer_batch(contexts, [[im] for im in images], {"max_new_tokens": 8})
    single = [runner.answer_batch([c], [[im]], {"max_new_tokens": 8})[0] for c, im in zip(contexts, images)]
    assert [a.text for a in batched] == [a.text for a in single]
    assert [(a.output_tokens, a.forwards, a.input_tokens) for a in batched] == \
        [(a.output_tokens, a.forwards, a.input_tokens) for a in single]
    assert len({a.input_tokens for a in single}) > 1  # the batch really was padded


def test_ar_decoding_matches_transformers_generate_and_batches(tmp_path):
    ar = save_tiny_qwen3vl_checkpoint(tmp_path / "ar", seed=1)
    runner = BardVLRunner(str(ar), decoding="ar", max_new_tokens=6, device="cpu", dtype="float32")
    contexts, images = ["q", "a longer question here"], [tiny_image(seed=1), tiny_image(seed=2, size=24)]
    batched = runner.answer_batch(contexts, [[im] for im in images], {"max_new_tokens": 6})
    for context, image, answer in zip(contexts, images, batched):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": context}]}]
        text = runner.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        batch = runner.processor(text=[text], images=[image], return_tensors="pt")
        with torch.inference_mode():
            out = runner.model.generate(**batch, max_new_tokens=6, do_sample=False, eos_token_id=runner.eos_token_id)
        ids = out[0, batch["input_ids"].shape[1]:].tolist()
        ids = ids[: ids.index(runner.eos_token_id) + 1] if runner.eos_token_id in ids else ids
        assert answer.text == runner.processor.tokenizer.decode(ids, skip_special_tokens=True).strip()
        assert answer.output_tokens == answer.forwards == len(ids)


def _video_reference(runner: BardVLRunner, context: str, video: str | list[str], max_new_tokens: int):
    """The processor batch and direct ``model.generate`` answer for one user turn (video, question)."""
    proc = runner.processor
    frames, meta = load_video({"type": "video", "video": video}, Path("."), "ref", proc.video_processor.patch_size)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": context}]}]
    text = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    batch = proc(text=[text], videos=[frames], return_tensors="pt",
                 videos_kwargs={"video_metadata": [meta], "do_sample_frames": False, "do_resize": False})
    with torch.inference_mode():
        ids = runner.model.generate(batch, max_new_tokens, eos_token_id=runner.eos_token_id, **SETTINGS)[0].tolist()
    ids = ids[: ids.index(runner.eos_token_id) + 1] if runner.eos_token_id in ids else ids
    return batch, proc.tokenizer.decode(ids, skip_special_tokens=True).strip()


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_runner_answers_a_video_file_like_direct_generate(runner, tmp_path, suffix):
    video = str(write_tiny_video(tmp_path / f"clip{suffix}"))
    batch, expected = _video_reference(runner, "what happens?", video, 8)
    assert int(batch["video_grid_thw"].prod()) > 0 and "pixel_values" not in batch
    encoded = runner.encode(["what happens?"], [[video]])
    for key in ("input_ids", "pixel_values_videos", "video_grid_thw"):
        assert torch.equal(encoded[key], batch[key]), key
    assert runner.answer("what happens?", [video], {"max_new_tokens": 8}) == expected


def test_runner_reads_a_frame_list_as_one_video(runner, tmp_path):
    paths = []
    for i in range(4):
        paths.append(str(tmp_path / f"frame{i}.png"))
        tiny_image(seed=20 + i, size=32).save(paths[-1])
    batch, expected = _video_reference(runner, "what changes?", paths, 8)
    encoded = runner.encode(["what changes?"], [[paths]])
    assert encoded["video_grid_thw"][0, 0].item() == 2  # 4 frames, temporal patch 2
    assert torch.equal(encoded["input_ids"], batch["input_ids"])
    assert torch.equal(encoded["pixel_values_videos"], batch["pixel_values_videos"])
    assert runner.answer("what changes?", [paths], {"max_new_tokens": 8}) == expected


def test_batched_video_requests_equal_batch_one(runner, tmp_path):
    """Images, videos and both in one left-padded batch: every request gets its batch-1 answer."""
    mp4, webm = str(write_tiny_video(tmp_path / "a.mp4")), str(write_tiny_video(tmp_path / "b.webm", frames=12))
    contexts = ["describe the picture in many more words", "what happens?", "compare them", "a", "text only"]
    visuals = [[tiny_image(seed=30)], [mp4], [tiny_image(seed=31, size=16), webm], [webm], []]
    batched = runner.answer_batch(contexts, visuals, {"max_new_tokens": 8})
    single = [runner.answer_batch([c], [v], {"max_new_tokens": 8})[0] for c, v in zip(contexts, visuals)]
    assert [a.text for a in batched] == [a.text for a in single]
    assert [(a.output_tokens, a.forwards, a.input_tokens) for a in batched] == \
        [(a.output_tokens, a.forwards, a.input_tokens) for a in single]
    assert len({a.input_tokens for a in single}) > 1  # the batch really was padded
    text = runner.processor.apply_chat_template(runner.messages("q", [None], 1), tokenize=False)
    assert text.index("<|image_pad|>") < text.index("<|video_pad|>") < text.index("q<|im_end|>")


def test_ar_decoding_answers_a_video_like_transformers_generate(tmp_path):
    ar = save_tiny_qwen3vl_checkpoint(tmp_path / "ar", seed=1)
    runner = BardVLRunner(str(ar), decoding="ar", max_new_tokens=6, device="cpu", dtype="float32")
    video = str(write_tiny_video(tmp_path / "clip.mp4"))
    proc = runner.processor
    frames, meta = load_video({"type": "video", "video": video}, Path("."), "ref", proc.video_processor.patch_size)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "q"}]}]
    text = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    batch = proc(text=[text], videos=[frames], return_tensors="pt",
                 videos_kwargs={"video_metadata": [meta], "do_sample_frames": False, "do_resize": False})
    with torch.inference_mode():
        out = runner.model.generate(**batch, max_new_tokens=6, do_sample=False, eos_token_id=runner.eos_token_id)
    ids = out[0, batch["input_ids"].shape[1]:].tolist()
    ids = ids[: ids.index(runner.eos_token_id) + 1] if runner.eos_token_id in ids else ids
    answer = runner.answer_batch(["q"], [[video]], {"max_new_tokens": 6})[0]
    assert answer.text == proc.tokenizer.decode(ids, skip_special_tokens=True).strip()
    assert answer.output_tokens == len(ids)


def test_runner_names_bad_visuals(runner, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_text("not a video")
    with pytest.raises(ValueError, match=r"video input .*broken\.mp4.*unreadable video"):
        runner.encode(["q"], [[str(broken)]])
    with pytest.raises(ValueError, match="visual of type int: expected a PIL image"):
        runner.encode(["q"], [[3]])


def test_runner_checks_args_before_loading(checkpoint):
    with pytest.raises(ValueError, match=r"unknown bard_vl model_args \['confidence_treshold'\]"):
        BardVLRunner(str(checkpoint), confidence_treshold=0.5)
    with pytest.raises(ValueError, match="remasking_strategy must be one of"):
        BardVLRunner(str(checkpoint), remasking_strategy="random")

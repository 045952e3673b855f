"""The lmms-eval ``bard_vl`` wrapper answers a tiny request list like ``model.generate`` does."""

from __future__ import annotations

import pytest
import torch

from nemo_automodel_bard.eval.runner import BardVLRunner, ThroughputLog, to_bool, truncate_at_stops
from nemo_automodel_bard.testing import save_tiny_checkpoint, tiny_image

SETTINGS = dict(block_size=4, denoising_steps=4, confidence_threshold=0.5)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("bard_tiny"), seed=0)


@pytest.fixture(scope="module")
def runner(checkpoint):
    return BardVLRunner(str(checkpoint), max_new_tokens=8, device="cpu", dtype="float32", **SETTINGS)


def _reference_answer(runner: BardVLRunner, context: str, image, max_new_tokens: int) -> str:
    """Decode the same chat directly with ``model.generate`` (system prompt, image, question)."""
    proc = runner.processor
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": context}]},
    ]
    text = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    batch = proc(text=[text], images=[image], return_tensors="pt")
    with torch.inference_mode():
        ids = runner.model.generate(batch, max_new_tokens, block_size=4, denoising_steps=4, confidence_threshold=0.5,
                                    eos_token_id=runner.eos_token_id)
    return proc.tokenizer.decode(ids[0].tolist(), skip_special_tokens=True)


def test_truncate_at_stops_cuts_at_earliest_stop():
    assert truncate_at_stops("a b. c\n\nd", ["\n\n", "."]) == "a b"
    assert truncate_at_stops("abc", []) == "abc"
    assert truncate_at_stops("abc", [""]) == "abc"


def test_to_bool_parses_model_args_strings():
    assert to_bool("True") and to_bool("1") and not to_bool("false") and not to_bool("0")


def test_throughput_log_totals():
    log = ThroughputLog()
    log.add(tokens=8, forwards=2, seconds=0.5)
    log.add(tokens=4, forwards=2, seconds=1.5)
    assert log.summary() == {"requests": 2, "tokens": 12, "forwards": 4, "tpf": 3.0, "tokens_per_s": 6.0}


def test_runner_matches_direct_generate(runner):
    images = [tiny_image(seed=s) for s in range(3)]
    for i, image in enumerate(images):
        context = f"<image>describe {i}"
        got = runner.answer(context, [image], {"max_new_tokens": 8})
        assert got == _reference_answer(runner, f"describe {i}", image, 8)
    summary = runner.log.summary()
    assert summary["requests"] == 3 and summary["tokens"] > 0 and summary["forwards"] > 0


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_runner_answers_a_video_file_like_direct_generate(runner, tmp_path, suffix):
    from nemo_automodel_bard.data.chat import load_video
    from nemo_automodel_bard.testing import write_tiny_video

    video = write_tiny_video(tmp_path / f"clip{suffix}")
    got = runner.answer("what happens?", [str(video)], {"max_new_tokens": 8})
    proc = runner.processor
    frames, meta = load_video({"type": "video", "video": str(video)}, tmp_path, str(video), proc.video_processor.patch_size)
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "what happens?"}]},
    ]
    text = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    batch = proc(text=[text], videos=[frames], return_tensors="pt",
                 videos_kwargs={"video_metadata": [meta], "do_sample_frames": False, "do_resize": False})
    assert int(batch["video_grid_thw"].prod()) > 0
    with torch.inference_mode():
        ids = runner.model.generate(batch, 8, eos_token_id=runner.eos_token_id, **SETTINGS)
    assert got == proc.tokenizer.decode(ids[0].tolist(), skip_special_tokens=True)


def test_lmms_model_answers_request_list(checkpoint):
    pytest.importorskip("lmms_eval", reason="lmms-eval not installed (pip install lmms-eval)")
    from lmms_eval.api.instance import Instance

    from nemo_automodel_bard.eval.lmms_model import BardVL

    model = BardVL.create_from_arg_string(
        f"pretrained={checkpoint},block_size=4,denoising_steps=4,confidence_threshold=0.5,max_new_tokens=8,"
        "device=cpu,dtype=float32,edit_threshold=0.9"
    )
    docs = [{"image": tiny_image(seed=s)} for s in range(2)]
    model.task_dict = {"toy": {"test": docs}}
    requests = [
        Instance(request_type="generate_until", idx=0, metadata={"task": "toy", "doc_id": i, "repeats": 1},
                 arguments=(f"<image>question {i}", {"max_new_tokens": 8, "until": ["\n\n"]},
                            lambda doc: [doc["image"]], i, "toy", "test"))
        for i in range(2)
    ]
    answers = model.generate_until(requests)
    assert answers == [_reference_answer(model.runner, f"question {i}", docs[i]["image"], 8) for i in range(2)]
    assert model.ignored_args == ["edit_threshold"]
    with pytest.raises(NotImplementedError):
        model.loglikelihood(requests)


def test_lmms_registry_resolves_bard_vl():
    pytest.importorskip("lmms_eval", reason="lmms-eval not installed (pip install lmms-eval)")
    from lmms_eval import models

    from nemo_automodel_bard.eval.lmms_model import BardVL, register

    register()
    assert models.get_model("bard_vl") is BardVL

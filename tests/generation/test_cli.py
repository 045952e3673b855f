"""``bard generate`` / examples/generate.py on a tiny local checkpoint."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

from nemo_automodel_bard.cli import main as bard_main
from nemo_automodel_bard.testing import save_tiny_checkpoint, tiny_image

ROOT = Path(__file__).resolve().parents[2]


def test_bard_generate_cli(tmp_path, capsys):
    model_dir = save_tiny_checkpoint(tmp_path / "ckpt")
    image = tmp_path / "img.png"
    tiny_image(size=32).save(image)
    args = ["generate", "--model", str(model_dir), "--image", str(image), "--prompt", "hi", "--max-new-tokens", "6",
            "--block-size", "4", "--denoising-steps", "2", "--remasking-strategy", "low_confidence_static", "--stats"]
    assert bard_main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    stats = json.loads(lines[-1])
    assert stats["num_forwards"] == [4] and stats["total_tokens"] <= 6
    assert bard_main(args + ["--block-size", "0"]) == 2
    assert "block_size" in capsys.readouterr().err


def test_example_script_runs(capsys):
    example = runpy.run_path(str(ROOT / "examples" / "generate.py"))
    assert example["main"](["--max-new-tokens", "4", "--block-size", "4", "--denoising-steps", "4"]) == 0
    assert '"total_forwards": 4' in capsys.readouterr().out


def test_bard_generate_takes_block_size_from_the_checkpoint(tmp_path, capsys):
    model_dir = save_tiny_checkpoint(tmp_path / "ckpt", block_size=2)
    args = ["generate", "--model", str(model_dir), "--prompt", "hi", "--max-new-tokens", "6",
            "--remasking-strategy", "low_confidence_static", "--stats"]
    assert bard_main(args) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # block 2 from config.json, denoising steps = block size: every block 2 forwards (EOS may end early)
    assert all(steps == 2 for steps in stats["block_steps"][0][:-1]) and stats["block_steps"][0][-1] <= 2
    assert stats["total_forwards"] == sum(stats["block_steps"][0]) and len(stats["block_steps"][0]) <= 3


def test_dtype_auto():
    import torch

    from nemo_automodel_bard.generation.cli import resolve_dtype

    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda:0") == torch.bfloat16
    assert resolve_dtype("float16", "cpu") == torch.float16

# ---------------------------------------------------------------- refusals before the weights load
import pytest  # noqa: E402
import torch  # noqa: E402

from nemo_automodel_bard.models.bard_vl import BardVLForConditionalGeneration  # noqa: E402
from nemo_automodel_bard.testing import TINY_IDS, save_tiny_qwen3vl_checkpoint, write_tiny_video  # noqa: E402


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    image = root / "img.png"
    tiny_image(size=32).save(image)
    return {"bard": save_tiny_checkpoint(root / "bard"), "ar": save_tiny_qwen3vl_checkpoint(root / "ar"), "image": image}


@pytest.fixture
def no_weight_loading(monkeypatch):
    """Fail the test if the weights are loaded: every refusal below must come before."""

    def refuse(*args, **kwargs):
        raise AssertionError("weights loaded before the argument checks")

    monkeypatch.setattr(BardVLForConditionalGeneration, "from_pretrained", refuse)


def _run(model, *extra, image=None):
    args = ["generate", "--model", str(model), "--prompt", "hi", "--max-new-tokens", "4", "--block-size", "4",
            "--denoising-steps", "2", *extra]
    return bard_main(args + (["--image", str(image)] if image else []))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--temperature", "inf"], "temperature must be a finite number"),
        (["--temperature", "nan"], "temperature must be a finite number"),
        (["--top-p", "0"], "top_p"),
        (["--device", "nonsense"], "is not a device"),
        (["--prompt", "look: <|image_pad|>"], "the prompt contains '<|image_pad|>'"),
        (["--mask-token-id", str(TINY_IDS["image"])], "mask_token_id 5 is config.json's image_token_id"),
        (["--mask-token-id", "60"], "mask_token_id 60 is the tokenizer's token"),
        (["--video", "missing.mp4"], "--video missing.mp4: file not found"),
        (["--revision-threshold", "1"], "revision_threshold must be in [0, 1)"),
        (["--revision-threshold", "0.2", "--remasking-strategy", "low_confidence_static"], "needs remasking_strategy"),
    ],
)
def test_bad_arguments_fail_before_loading(checkpoints, capsys, no_weight_loading, extra, message):
    assert _run(checkpoints["bard"], *extra, image=checkpoints["image"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_device_without_gpu_is_refused(checkpoints, capsys, no_weight_loading):
    assert _run(checkpoints["bard"], "--device", "cuda") == 2
    assert "no CUDA GPU is available" in capsys.readouterr().err


def test_unconverted_ar_checkpoint_and_missing_folder_are_refused(checkpoints, tmp_path, capsys, no_weight_loading):
    """Issue 11 item 4: an AR Qwen3-VL used to decode meaningless text with rc 0."""
    assert _run(checkpoints["ar"], "--mask-token-id", "200", image=checkpoints["image"]) == 2
    err = capsys.readouterr().err
    assert "not a Bard-VL checkpoint (model_type 'qwen3_vl')" in err and "bard convert --from" in err
    assert _run(tmp_path / "no" / "such" / "ckpt") == 2
    assert "model folder not found" in capsys.readouterr().err
    # `org/name` that is not a folder here goes to the Hub (offline here: stubbed), and the error
    # still names the folder
    from transformers import AutoProcessor

    def no_hub(name, *args, **kwargs):
        raise OSError(f"{name} is not on the Hub")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AutoProcessor, "from_pretrained", no_hub)
        assert _run("no_such_org/no_such_model") == 2
    err = capsys.readouterr().err
    assert "model folder not found: no_such_org/no_such_model" in err and "Traceback" not in err


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_video_file_prompt(checkpoints, tmp_path, capsys, suffix):
    video = write_tiny_video(tmp_path / f"clip{suffix}")
    assert _run(checkpoints["bard"], "--video", str(video), "--stats") == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["total_tokens"] <= 4

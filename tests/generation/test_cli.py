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

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

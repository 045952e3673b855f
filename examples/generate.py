"""Block-diffusion inference with a Bard-VL checkpoint (upstream's inference snippet, via ``bard generate``).

    python examples/generate.py --model DIR --image cat.jpg --prompt "Describe the image."

Without ``--model`` the example builds a tiny random checkpoint and image in a temporary
directory (``nemo_automodel_bard.testing``), so it runs anywhere in seconds; its output is
gibberish by construction. Any other ``bard generate`` flag is passed through.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from nemo_automodel_bard.generation.cli import main as generate_main


def main(argv: list[str]) -> int:
    if "--model" in argv:
        return generate_main(argv)
    from nemo_automodel_bard.testing import save_tiny_checkpoint, tiny_image

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_tiny_checkpoint(Path(tmp) / "tiny-bard-vl")
        image = Path(tmp) / "image.png"
        tiny_image(seed=0, size=32).save(image)
        print(f"[example] tiny random checkpoint at {model_dir}", file=sys.stderr)
        defaults = ["--model", str(model_dir), "--image", str(image)]
        if "--prompt" not in argv:
            defaults += ["--prompt", "Describe the image."]
        if "--max-new-tokens" not in argv:
            defaults += ["--max-new-tokens", "24", "--block-size", "8", "--denoising-steps", "8"]
        return generate_main(defaults + ["--stats"] + argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

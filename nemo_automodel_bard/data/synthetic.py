"""Tiny, self-made assets for CPU runs: the tiny Bard-VL model and processor of
``nemo_automodel_bard.testing`` written to disk, and a memorisable multimodal chat dataset
(coloured squares -> their colour names).

``python -m nemo_automodel_bard.data.synthetic --out DIR`` writes ``DIR/model`` (config,
random weights, processor) and ``DIR/data/train.jsonl`` + images; ``recipes/bard_pbm_tiny.yaml``
reads them. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

__all__ = ["write_tiny_model", "write_color_dataset", "write_tiny_assets", "main"]

COLORS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 210, 20),
          "white": (250, 250, 250), "black": (10, 10, 10)}


def write_tiny_model(out: str | Path, seed: int = 0, block_size: int = 4, patch_size: int = 4) -> Path:
    """Save a random tiny Bard-VL model and its processor to ``out`` (HF format).

    ``patch_size=16`` (Qwen3-VL's) makes a stock ``processor.min_pixels`` / ``max_pixels`` give the
    real model's image-token counts (the default 4 gives 16x as many).
    """
    import torch
    from transformers import PreTrainedModel

    from nemo_automodel_bard.models.bard_vl import BardVLForConditionalGeneration
    from nemo_automodel_bard.models.bard_vl.processing import as_bard_processor
    from nemo_automodel_bard.testing import tiny_config, tiny_processor

    out = Path(out)
    processor = as_bard_processor(tiny_processor())  # processor_class BardVLProcessor (AutoProcessor)
    processor.image_processor.patch_size = processor.video_processor.patch_size = patch_size
    torch.manual_seed(seed)
    # HF's default (small) init: the tiny testing model's wide init is meant for decoding tests.
    model = BardVLForConditionalGeneration(tiny_config(block_size=block_size, vision={"patch_size": patch_size}))
    # AutoModel's save_pretrained wants its checkpointer; the plain HF writer is enough here.
    PreTrainedModel.save_pretrained(model, out)
    processor.save_pretrained(out)
    return out


def write_color_dataset(out: str | Path, num_samples: int = 32, seed: int = 0, image_size: int = 16) -> Path:
    """``out/train.jsonl`` + ``out/images/*.png``: "What colour?" -> the square's colour name."""
    from PIL import Image

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    names = sorted(COLORS)
    lines = []
    for i in range(num_samples):
        color = names[i % len(names)] if i < len(names) else rng.choice(names)
        path = out / "images" / f"{color}.png"
        if not path.exists():
            Image.new("RGB", (image_size, image_size), COLORS[color]).save(path)
        messages = [
            {"role": "user", "content": [{"type": "image", "image": f"images/{color}.png"},
                                         {"type": "text", "text": "What colour is this?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": f"It is {color}."}]},
        ]
        lines.append(json.dumps({"messages": messages}))
    (out / "train.jsonl").write_text("\n".join(lines) + "\n")
    return out / "train.jsonl"


def write_tiny_assets(out: str | Path, num_samples: int = 32) -> Path:
    """``out/model`` and ``out/data/train.jsonl`` (what ``recipes/bard_pbm_tiny.yaml`` reads)."""
    out = Path(out)
    write_tiny_model(out / "model")
    write_color_dataset(out / "data", num_samples=num_samples)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--num-samples", type=int, default=32)
    args = parser.parse_args(argv)
    print(write_tiny_assets(args.out, args.num_samples))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

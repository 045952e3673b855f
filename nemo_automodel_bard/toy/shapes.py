"""A second tiny multimodal task, for ``bard demo --data``: coloured shapes on a canvas.

Each 64 x 64 px image holds one to three shapes (circle, square, triangle) in one of four
colours, one shape per 32 px quadrant. Three question types (the ``task`` key):

* ``shape``   ``what shapes are there ?``        -> ``circle and square``   (top-left first, reading order)
* ``colour``  ``what colours are there ?``       -> ``red and blue``
* ``count``   ``how many shapes are there ?``    -> ``two``

It writes ``train.jsonl`` and ``test.jsonl`` only (no val: ``bard demo --data`` then splits
one from train) in the upstream ``messages`` schema, with the answer only in the assistant
turn, and the images under ``images/``. Its words differ from the digit task's, so the
pipeline's word-level vocabulary is built from the data.

``python -m nemo_automodel_bard.toy.shapes --out DIR --train 400 --test 100``
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from PIL import Image, ImageDraw

from nemo_automodel_bard.toy.data_dir import messages_row, write_split

__all__ = ["SHAPES", "COLOURS", "QUESTIONS", "answer_for", "render", "write_dataset", "main"]

SIZE, QUAD = 64, 32
SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 20, 20), "green": (20, 150, 20), "blue": (20, 40, 220), "black": (0, 0, 0)}
QUESTIONS = {"shape": "what shapes are there ?", "colour": "what colours are there ?",
             "count": "how many shapes are there ?"}
NUMBERS = ("zero", "one", "two", "three")
Item = tuple[int, str, str]  # (quadrant 0..3, shape, colour)


def answer_for(items: list[Item], task: str) -> str:
    """The answer words for ``items`` (sorted by quadrant)."""
    items = sorted(items)
    if task == "count":
        return NUMBERS[len(items)]
    return " and ".join(shape if task == "shape" else colour for _, shape, colour in items)


def render(items: list[Item]) -> Image.Image:
    """White 64 x 64 canvas with each shape drawn in its quadrant."""
    image = Image.new("RGB", (SIZE, SIZE), "white")
    draw = ImageDraw.Draw(image)
    for quadrant, shape, colour in items:
        x, y = (quadrant % 2) * QUAD + 6, (quadrant // 2) * QUAD + 6
        box, fill = (x, y, x + 20, y + 20), COLOURS[colour]
        if shape == "circle":
            draw.ellipse(box, fill=fill)
        elif shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(x + 10, y), (x, y + 20), (x + 20, y + 20)], fill=fill)
    return image


def _sample(rng: random.Random) -> list[Item]:
    quadrants = rng.sample(range(4), rng.randint(1, 3))
    return [(q, rng.choice(SHAPES), rng.choice(list(COLOURS))) for q in sorted(quadrants)]


def write_dataset(out_dir: str | Path, *, train: int = 400, test: int = 100, seed: int = 0) -> dict[str, Path]:
    """Write ``{train,test}.jsonl`` + ``images/``; no (image, question) pair is in both splits."""
    out_dir, rng, seen = Path(out_dir), random.Random(seed), set()
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, count in (("test", test), ("train", train)):  # test first: train excludes its pairs
        rows = []
        while len(rows) < count:
            items, task = _sample(rng), rng.choice(list(QUESTIONS))
            key = (tuple(items), task)
            if key in seen:
                continue
            seen.add(key)
            image = f"images/{split}_{len(rows):05d}.png"
            render(items).save(out_dir / image)
            rows.append(messages_row(image, QUESTIONS[task], answer_for(items, task), task))
        paths[split] = write_split(out_dir / f"{split}.jsonl", rows)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for split, path in write_dataset(args.out, train=args.train, test=args.test, seed=args.seed).items():
        print(f"{split}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A dataset this project did not make, for ``bard demo --data``: scanned handwritten digits.

scikit-learn ships the UCI ML hand-written digits test set (1,797 greyscale 8 x 8 scans of
digits written by 43 people; ``sklearn.datasets.load_digits``, no download). This script
writes it in the upstream ``messages`` schema with two question types (the ``task`` key):

* ``digit``   ``which digit is written ?``   -> ``seven``
* ``parity``  ``is the digit odd or even ?`` -> ``odd``

Each scan becomes a 32 x 32 px RGB PNG (nearest-neighbour upscaling, ink dark on white).
The last ``--test`` scans (default 297) are the test split, the rest train; each image is
asked one question, drawn with a fixed seed (the scans come in digit order 0..9, so
alternating by index would only ask odd digits' parity). No ``val.jsonl``: ``bard demo
--data`` splits one from train.

    python examples/digits_dataset.py --out runs/digits_data
    bard demo --data runs/digits_data --out runs/digits [--quick]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from PIL import Image

from nemo_automodel_bard.toy.data_dir import messages_row, write_split

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
QUESTIONS = {"digit": "which digit is written ?", "parity": "is the digit odd or even ?"}
SIZE = 32


def load_digits():
    """``(images, targets)``: 8 x 8 arrays of ink 0..16 and their digits."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as err:  # the eval extra (lmms-eval) brings scikit-learn
        raise SystemExit("examples/digits_dataset.py needs scikit-learn: pip install scikit-learn") from err
    data = sklearn_digits()
    return data.images, data.target


def to_image(scan) -> Image.Image:
    """An 8 x 8 scan (0 = paper, 16 = ink) as a 32 x 32 RGB image, dark ink on white."""
    grey = Image.fromarray((255 - scan * (255 / 16)).round().astype("uint8"), mode="L")
    return grey.resize((SIZE, SIZE), Image.NEAREST).convert("RGB")


def answer_for(digit: int, task: str) -> str:
    return WORDS[digit] if task == "digit" else ("even" if digit % 2 == 0 else "odd")


def write_dataset(out_dir: str | Path, *, test: int = 297, limit: int | None = None,
                  seed: int = 0) -> dict[str, Path]:
    """Write ``{train,test}.jsonl`` + ``images/``; ``limit`` keeps only the first rows of each split."""
    images, targets = load_digits()
    if not 0 < test < len(images):
        raise ValueError(f"--test must be in 1..{len(images) - 1}, got {test}")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    first_test = len(images) - test
    splits = {"train": range(first_test), "test": range(first_test, len(images))}
    tasks = random.Random(seed).choices(list(QUESTIONS), k=len(images))
    paths = {}
    for split, indices in splits.items():
        rows = []
        for i in list(indices)[:limit]:
            task = tasks[i]
            image = f"images/{i:04d}.png"
            to_image(images[i]).save(out_dir / image)
            rows.append(messages_row(image, QUESTIONS[task], answer_for(int(targets[i]), task), task))
        paths[split] = write_split(out_dir / f"{split}.jsonl", rows)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--test", type=int, default=297, help="the last N scans are the test split")
    parser.add_argument("--limit", type=int, default=None, help="keep only the first N rows of each split")
    parser.add_argument("--seed", type=int, default=0, help="draws each image's question")
    args = parser.parse_args(argv)
    for split, path in write_dataset(args.out, test=args.test, limit=args.limit, seed=args.seed).items():
        print(f"{split}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

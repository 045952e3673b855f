"""The toy multimodal task: rows of coloured digits, questions that need the image.

Each image is one row of ``n`` cells of 32 x 32 px (one merged Qwen3-VL vision token per
cell with patch 16 / merge 2, so the answer symbol for a cell is carried by exactly one
vision token: toy_feasibility.md found that binding is the hard part at this scale). A cell
holds one digit drawn as a blocky 5 x 3 glyph in one of five colours on white.

Questions (answers are space-separated words of the toy vocabulary):

* ``read the digits``      -> ``d1 d2 ... dn``                      (n tokens)
* ``list the colours``     -> ``c1 c2 ... cn``                      (n tokens)
* ``describe the cells``   -> ``d1 c1 d2 c2 ... dn cn``             (2n tokens)
* ``sort the digits``      -> the digits in ascending order         (n tokens; depends on all cells)
* ``count the colours``    -> ``red k1 green k2 ... purple k5``     (10 tokens; each count depends on all cells)

The last two have internal dependencies, so a block cannot be filled position by position
from the image alone. ``generate_splits`` writes ``{train,val,test}.jsonl`` in the upstream
``messages`` schema (bard_spec.md section 8) plus ``images/*.png``; the three splits never
share an (image, question) pair.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

__all__ = [
    "CELL",
    "SEPARATOR",
    "STOP",
    "MIN_CELLS",
    "MAX_CELLS",
    "COLOURS",
    "TASKS",
    "ToySample",
    "answer_for",
    "render",
    "sample_rows",
    "split_samples",
    "RESERVED",
    "generate_splits",
    "write_split",
    "held_out_keys",
    "main",
]

CELL = 32  # px; = patch 16 x merge 2, one merged vision token per cell
# Cells per row of the standard splits (4-8 cells: answers of 8-24 tokens + EOS, see answer_for).
MIN_CELLS, MAX_CELLS = 4, 8
# Answers are comma-separated lists closed by a full stop.
SEPARATOR, STOP = ",", "."
COLOURS = {
    "red": (220, 20, 20),
    "green": (20, 150, 20),
    "blue": (20, 40, 220),
    "orange": (240, 140, 0),
    "purple": (140, 20, 180),
}
TASKS = {
    "read": "read the digits",
    "colours": "list the colours",
    "describe": "describe the cells",
    "sort": "sort the digits",
    "count": "count the colours",
}
# 5 rows x 3 columns, "1" = ink
_GLYPHS = {
    0: ("111", "101", "101", "101", "111"),
    1: ("010", "110", "010", "010", "111"),
    2: ("111", "001", "111", "100", "111"),
    3: ("111", "001", "111", "001", "111"),
    4: ("101", "101", "111", "001", "001"),
    5: ("111", "100", "111", "001", "111"),
    6: ("111", "100", "111", "101", "111"),
    7: ("111", "001", "010", "010", "010"),
    8: ("111", "101", "111", "101", "111"),
    9: ("111", "101", "111", "001", "111"),
}
_INK = 6  # px per glyph pixel: 18 x 30 px glyph in a 32 x 32 cell


@dataclass(frozen=True)
class ToySample:
    """One question about one image row."""

    digits: tuple[int, ...]
    colours: tuple[str, ...]
    task: str

    @property
    def question(self) -> str:
        return TASKS[self.task]

    @property
    def answer(self) -> str:
        return answer_for(self.digits, self.colours, self.task)

    @property
    def key(self) -> str:
        """Identity used to keep the splits disjoint."""
        return f"{self.task}:{''.join(map(str, self.digits))}:{','.join(self.colours)}"


def answer_for(digits: tuple[int, ...], colours: tuple[str, ...], task: str) -> str:
    """The reference answer (space-separated words) for a row and a task.

    A comma-separated list of items closed by a full stop, e.g. ``3 , 1 , 4 .``: 2n tokens
    for read / colours / sort, 3n for describe, 15 for count (8-24 tokens for 4-8 cells).
    """
    if task == "read":
        items = [[str(d)] for d in digits]
    elif task == "colours":
        items = [[c] for c in colours]
    elif task == "describe":
        items = [[str(d), c] for d, c in zip(digits, colours)]
    elif task == "sort":
        items = [[str(d)] for d in sorted(digits)]
    elif task == "count":
        items = [[c, str(colours.count(c))] for c in COLOURS]
    else:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
    words = [w for i, item in enumerate(items) for w in ([SEPARATOR] if i else []) + item]
    return " ".join(words + [STOP])


def render(digits: tuple[int, ...], colours: tuple[str, ...]) -> Image.Image:
    """``CELL x (CELL * n)`` RGB image: one coloured glyph per cell on white."""
    image = Image.new("RGB", (CELL * len(digits), CELL), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    x_pad, y_pad = (CELL - 3 * _INK) // 2, (CELL - 5 * _INK) // 2
    for i, (digit, colour) in enumerate(zip(digits, colours)):
        for r, row in enumerate(_GLYPHS[digit]):
            for c, ink in enumerate(row):
                if ink == "1":
                    x0, y0 = i * CELL + x_pad + c * _INK, y_pad + r * _INK
                    draw.rectangle([x0, y0, x0 + _INK - 1, y0 + _INK - 1], fill=COLOURS[colour])
    return image


def sample_rows(
    seed: int | str,
    count: int,
    min_cells: int,
    max_cells: int,
    tasks: tuple[str, ...],
    exclude: set[str] | None = None,
) -> list[ToySample]:
    """``count`` distinct samples from a seeded RNG (same arguments -> same list).

    Samples whose :attr:`ToySample.key` is in ``exclude`` are skipped. A longer list is an
    extension of a shorter one, so a smaller test split is a prefix of a larger one.
    """
    rng = random.Random(seed)
    names = list(COLOURS)
    seen: set[str] = set(exclude or ())
    out: list[ToySample] = []
    while len(out) < count:
        n = rng.randint(min_cells, max_cells)
        sample = ToySample(
            digits=tuple(rng.randrange(10) for _ in range(n)),
            colours=tuple(rng.choice(names) for _ in range(n)),
            task=rng.choice(tasks),
        )
        if sample.key not in seen:
            seen.add(sample.key)
            out.append(sample)
    return out


# Train never uses the first RESERVED samples of the test and val streams, whatever split
# sizes are asked for, so a checkpoint trained with one size setting is never evaluated on
# its own training data with another.
RESERVED = 2000


def split_samples(seed: int, sizes: dict[str, int], min_cells: int, max_cells: int,
                  tasks: tuple[str, ...]) -> dict[str, list[ToySample]]:
    """Samples of each split: test, then val (disjoint from test), then train (disjoint from both)."""
    args = (min_cells, max_cells, tasks)
    for split, size in sizes.items():
        if split in ("test", "val") and size > RESERVED:
            raise ValueError(f"{split} size {size} exceeds the reserved held-out pool ({RESERVED})")
    test_pool = sample_rows(f"{seed}-test", RESERVED, *args)
    val_pool = sample_rows(f"{seed}-val", RESERVED, *args, exclude={s.key for s in test_pool})
    held_out = {s.key for s in test_pool} | {s.key for s in val_pool}
    out = {"test": test_pool[: sizes.get("test", 0)], "val": val_pool[: sizes.get("val", 0)]}
    out["train"] = sample_rows(f"{seed}-train", sizes.get("train", 0), *args, exclude=held_out)
    return {split: out[split] for split in sizes}


def _record(sample: ToySample, image_path: str, index: int) -> dict:
    user = [{"type": "image", "image": image_path}, {"type": "text", "text": sample.question}]
    return {
        "id": index,
        "task": sample.task,
        "answer": sample.answer,
        "messages": [
            {"role": "user", "content": user},
            {"role": "assistant", "content": [{"type": "text", "text": sample.answer}]},
        ],
    }


def generate_splits(
    out_dir: str | Path,
    *,
    seed: int = 0,
    sizes: dict[str, int] | None = None,
    min_cells: int = MIN_CELLS,
    max_cells: int = MAX_CELLS,
    tasks: tuple[str, ...] = tuple(TASKS),
) -> dict[str, Path]:
    """Write ``{split}.jsonl`` + ``images/`` under ``out_dir``; returns the jsonl paths.

    No (image, question) pair is in two splits (see :func:`split_samples`).
    """
    sizes = sizes or {"train": 4000, "val": 100, "test": 200}
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    splits = split_samples(seed, sizes, min_cells, max_cells, tasks)
    return {split: write_split(out_dir, split, samples) for split, samples in splits.items()}


def write_split(out_dir: str | Path, split: str, samples: list[ToySample]) -> Path:
    """Write ``{split}.jsonl`` + its images under ``out_dir``; returns the jsonl path."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{split}.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for i, sample in enumerate(samples):
            rel = f"images/{split}_{i:06d}.png"
            render(sample.digits, sample.colours).save(out_dir / rel)
            handle.write(json.dumps(_record(sample, rel, i)) + "\n")
    return path


def held_out_keys(seed: int, min_cells: int = MIN_CELLS, max_cells: int = MAX_CELLS,
                  tasks: tuple[str, ...] = tuple(TASKS)) -> set[str]:
    """Keys of the reserved test + val pools of :func:`split_samples` for these arguments.

    Extra training data (e.g. a curriculum phase with other cell counts or tasks) excludes
    these so that it never contains an evaluation sample of the standard splits.
    """
    args = (min_cells, max_cells, tasks)
    test_pool = sample_rows(f"{seed}-test", RESERVED, *args)
    val_pool = sample_rows(f"{seed}-val", RESERVED, *args, exclude={s.key for s in test_pool})
    return {s.key for s in test_pool} | {s.key for s in val_pool}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write the toy task's train/val/test jsonl + images")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--test", type=int, default=200)
    args = parser.parse_args(argv)
    paths = generate_splits(args.out, seed=args.seed, sizes={"train": args.train, "val": args.val, "test": args.test})
    for split, path in paths.items():
        print(f"{split}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

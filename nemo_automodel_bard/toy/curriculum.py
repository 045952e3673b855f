"""Stage-0 training schedules: which rows each phase of the AR training sees.

A phase is ``TASKS:LO-HI:STEPS`` (toy tasks joined by ``+`` or ``all``, cells per row) or the
generic ``train:STEPS`` (every row of the data folder's ``train.jsonl``, any dataset). Mixed
training on all five toy tasks stalls at ~0-7% exact match, while the model learns to read
digits within minutes on 1-3 cell rows and then transfers to longer rows and more tasks
(docs/toy.md): the default toy curriculum starts there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from nemo_automodel_bard.toy.task import (
    CELL,
    MAX_CELLS,
    MIN_CELLS,
    TASKS,
    held_out_keys,
    sample_rows,
    write_split,
)

__all__ = ["DEFAULT_CURRICULUM", "DATA_CELLS", "Phase", "parse_curriculum", "phase_records", "cells"]

# Cell range of the rows in a data folder made by toy/task.py (generate_splits' defaults).
DATA_CELLS = (MIN_CELLS, MAX_CELLS)
# Read 1-3 cells, then 4-8 cells, then add colours, then all tasks; colours alone again (they
# do not always click beside reading), then all tasks (docs/toy.md).
DEFAULT_CURRICULUM = ("read:1-3:800,read:4-8:400,read+colours:4-8:1300,all:4-8:2500,"
                      "colours:1-3:500,colours:4-8:500,all:4-8:1200")


@dataclass(frozen=True)
class Phase:
    """``steps`` optimizer steps on the toy ``tasks`` with ``min_cells..max_cells`` cells.

    ``tasks == ()`` is the generic phase: every row of ``train.jsonl``, whatever the dataset.
    """

    tasks: tuple[str, ...]
    min_cells: int
    max_cells: int
    steps: int

    def __str__(self) -> str:
        if not self.tasks:
            return f"train:{self.steps}"
        return f"{'+'.join(self.tasks)}:{self.min_cells}-{self.max_cells}:{self.steps}"


def _parse_phase(text: str) -> Phase:
    parts = text.strip().split(":")
    if len(parts) == 2 and parts[0] == "train":
        steps = int(parts[1]) if parts[1].isdigit() else 0
        if steps < 1:
            raise ValueError(f"bad curriculum phase {text!r} (train:STEPS with STEPS >= 1)")
        return Phase((), 0, 0, steps)
    try:
        tasks_text, cells_text, steps_text = parts
        lo, hi = (int(x) for x in cells_text.split("-"))
        steps = int(steps_text)
    except ValueError as err:
        raise ValueError(f"curriculum phase {text!r} is not TASKS:LO-HI:STEPS or train:STEPS") from err
    tasks = tuple(TASKS) if tasks_text == "all" else tuple(tasks_text.split("+"))
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not 1 <= lo <= hi or steps < 1:
        raise ValueError(f"bad curriculum phase {text!r} (tasks {sorted(TASKS)} or 'all', 1 <= LO <= HI, STEPS >= 1)")
    return Phase(tasks, lo, hi, steps)


def parse_curriculum(spec: str) -> list[Phase]:
    """``"default"`` or comma-separated phases, e.g. ``read:1-3:800,all:4-8:1500`` or ``train:2000``."""
    spec = DEFAULT_CURRICULUM if spec == "default" else spec
    return [_parse_phase(part) for part in spec.split(",") if part.strip()]


def cells(record: dict, root: Path) -> int:
    """Number of cells of a toy record's image (each cell is CELL px wide)."""
    from PIL import Image

    image = next(p["image"] for p in record["messages"][0]["content"] if p["type"] == "image")
    with Image.open(Path(root) / image) as img:
        return img.width // CELL


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def phase_records(phase: Phase, data_dir: Path, work_dir: Path, *, data_seed: int = 0,
                  generated: int = 1000) -> tuple[list[dict], Path]:
    """The jsonl records of one phase and the folder their image paths are relative to.

    Generic phase: every row of ``train.jsonl``. Toy phase inside the data folder's cell
    range: its ``train.jsonl`` rows of the phase's tasks and cell counts. Other cell counts
    (e.g. the 1-3 cell warm-up) are not in the data folder, so ``generated`` fresh rows are
    written under ``work_dir``; they exclude the standard test/val pools of ``data_seed`` so
    that no evaluation sample is trained on.
    """
    data_dir, work_dir = Path(data_dir), Path(work_dir)
    if not phase.tasks:
        return _read_jsonl(data_dir / "train.jsonl"), data_dir
    if DATA_CELLS[0] <= phase.min_cells and phase.max_cells <= DATA_CELLS[1]:
        keep = [r for r in _read_jsonl(data_dir / "train.jsonl") if r.get("task") in phase.tasks
                and phase.min_cells <= cells(r, data_dir) <= phase.max_cells]
        return keep, data_dir
    exclude = held_out_keys(data_seed) | held_out_keys(data_seed, phase.min_cells, phase.max_cells, phase.tasks)
    seed = f"{data_seed}-curriculum-{'+'.join(phase.tasks)}-{phase.min_cells}-{phase.max_cells}"
    samples = sample_rows(seed, generated, phase.min_cells, phase.max_cells, phase.tasks, exclude=exclude)
    return _read_jsonl(write_split(work_dir, "train", samples)), work_dir

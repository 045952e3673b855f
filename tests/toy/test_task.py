"""The toy task generator: deterministic per seed, disjoint splits, answers that need the image."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from nemo_automodel_bard.toy.task import CELL, COLOURS, MAX_CELLS, MIN_CELLS, TASKS, answer_for, generate_splits, render

SIZES = {"train": 40, "val": 10, "test": 15}


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _records(folder: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    generate_splits(out, seed=7, sizes=SIZES)
    return out


def test_same_seed_same_bytes_other_seed_differs(data, tmp_path):
    generate_splits(tmp_path / "again", seed=7, sizes=SIZES)
    generate_splits(tmp_path / "other", seed=8, sizes=SIZES)
    assert _digest(tmp_path / "again") == _digest(data)
    assert _records(tmp_path / "other", "test") != _records(data, "test")


def test_split_sizes_and_no_overlap(data):
    keys = {}
    for split, size in SIZES.items():
        records = _records(data, split)
        assert len(records) == size
        # identity = what the model sees: the rendered image bytes + the question
        keys[split] = {
            (hashlib.sha256((data / r["messages"][0]["content"][0]["image"]).read_bytes()).hexdigest(),
             r["messages"][0]["content"][1]["text"]) for r in records
        }
        assert len(keys[split]) == size
    assert not keys["train"] & keys["test"]
    assert not keys["train"] & keys["val"]
    assert not keys["val"] & keys["test"]


def test_records_follow_the_messages_schema(data):
    for record in _records(data, "train"):
        user, reply = record["messages"]
        assert user["role"] == "user" and reply["role"] == "assistant"
        assert [p["type"] for p in user["content"]] == ["image", "text"]
        assert user["content"][1]["text"] in TASKS.values()
        assert reply["content"] == [{"type": "text", "text": record["answer"]}]
        assert (data / user["content"][0]["image"]).is_file()


def test_answers_against_hand_written_references():
    digits, colours = (3, 1, 2), ("red", "blue", "red")
    assert answer_for(digits, colours, "read") == "3 , 1 , 2 ."
    assert answer_for(digits, colours, "colours") == "red , blue , red ."
    assert answer_for(digits, colours, "describe") == "3 red , 1 blue , 2 red ."
    assert answer_for(digits, colours, "sort") == "1 , 2 , 3 ."
    assert answer_for(digits, colours, "count") == "red 2 , green 0 , blue 1 , orange 0 , purple 0 ."
    with pytest.raises(ValueError, match="unknown task"):
        answer_for(digits, colours, "nope")


def test_render_one_cell_per_symbol_in_its_colour():
    digits, colours = (8, 0, 7), ("green", "purple", "orange")
    image = render(digits, colours)
    assert image.size == (CELL * 3, CELL)
    for i, colour in enumerate(colours):
        cell = image.crop((i * CELL, 0, (i + 1) * CELL, CELL))
        inks = {c for _, c in cell.getcolors() if c != (255, 255, 255)}
        assert inks == {COLOURS[colour]}  # each cell holds only its own symbol's ink


def test_different_digits_render_differently():
    glyphs = {render((d,), ("red",)).tobytes() for d in range(10)}
    assert len(glyphs) == 10


def test_answer_lengths_in_range(data):
    lengths = [len(r["answer"].split()) for split in SIZES for r in _records(data, split)]
    # the 8-64 tokens: read/colours/sort are 2 x cells (>= 2 x 4), describe 3 x cells
    # (<= 3 x 8 = 24), count always 15; EOS adds one token to each
    assert min(lengths) >= 2 * MIN_CELLS == 8 and max(lengths) <= 3 * MAX_CELLS <= 64

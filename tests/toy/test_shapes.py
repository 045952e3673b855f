"""The second toy task (coloured shapes): answers against hand-written references, rendering, disjoint splits."""

from __future__ import annotations

import json

from nemo_automodel_bard.toy.shapes import COLOURS, QUAD, QUESTIONS, answer_for, render, write_dataset


def test_answers_against_hand_written_references():
    items = [(3, "triangle", "blue"), (0, "circle", "red")]  # quadrant order, not list order
    assert answer_for(items, "shape") == "circle and triangle"
    assert answer_for(items, "colour") == "red and blue"
    assert answer_for(items, "count") == "two"


def test_render_draws_each_shape_in_its_quadrant_and_colour():
    image = render([(1, "square", "green")])
    centre = (QUAD + QUAD // 2, QUAD // 2)
    assert image.getpixel(centre) == COLOURS["green"]
    assert image.getpixel((QUAD // 2, QUAD // 2)) == (255, 255, 255)  # quadrant 0 empty
    assert render([(1, "circle", "green")]).getpixel((QUAD + 7, 7)) == (255, 255, 255)  # a circle's corner is white


def test_dataset_is_messages_schema_with_disjoint_splits(tmp_path):
    paths = write_dataset(tmp_path, train=60, test=20, seed=1)
    rows = {split: [json.loads(line) for line in path.read_text().splitlines()] for split, path in paths.items()}
    assert {k: len(v) for k, v in rows.items()} == {"train": 60, "test": 20} and not (tmp_path / "val.jsonl").exists()
    keys = {}
    for split, split_rows in rows.items():
        for row in split_rows:
            user, assistant = row["messages"]
            image = next(p["image"] for p in user["content"] if p["type"] == "image")
            assert (tmp_path / image).is_file() and "answer" not in row
            assert next(p["text"] for p in user["content"] if p["type"] == "text") == QUESTIONS[row["task"]]
            keys.setdefault(split, set()).add(((tmp_path / image).read_bytes(), row["task"]))
    assert not keys["train"] & keys["test"]

"""Stage-0 curriculum: the schedule parser and which examples each phase trains on (no training)."""

from __future__ import annotations

import json

import pytest

from nemo_automodel_bard.toy.curriculum import (
    DEFAULT_CURRICULUM,
    Phase,
    cells,
    parse_curriculum,
    phase_records,
)
from nemo_automodel_bard.toy.task import MAX_CELLS, MIN_CELLS, TASKS, generate_splits


def test_parse_explicit_schedule():
    assert parse_curriculum("read:1-3:800, read+colours:4-8:1300,all:4-8:10,train:7") == [
        Phase(("read",), 1, 3, 800),
        Phase(("read", "colours"), 4, 8, 1300),
        Phase(tuple(TASKS), 4, 8, 10),
        Phase((), 0, 0, 7),
    ]


def test_phases_print_as_they_parse():
    spec = "read:1-3:800,read+colours:4-8:1300,train:7"
    assert ",".join(str(p) for p in parse_curriculum(spec)) == spec


def test_default_schedule_starts_with_short_reads_and_ends_with_all_tasks():
    phases = parse_curriculum("default")
    assert phases == parse_curriculum(DEFAULT_CURRICULUM)
    assert phases[0] == Phase(("read",), 1, 3, 800)
    assert set(phases[-1].tasks) == set(TASKS)
    assert (phases[-1].min_cells, phases[-1].max_cells) == (MIN_CELLS, MAX_CELLS)  # the data folder's rows


@pytest.mark.parametrize("bad", ["read:1-3", "reading:1-3:5", "read:3-1:5", "read:0-2:5", "read:1-3:0", "read:a-b:5",
                                 "train:0", "train:x", "train:-3", "train"])
def test_parse_rejects_bad_phases(bad):
    with pytest.raises(ValueError):
        parse_curriculum(bad)


@pytest.fixture
def data(tmp_path):
    generate_splits(tmp_path / "data", seed=3, sizes={"train": 60, "val": 5, "test": 5})
    return tmp_path


def _train_rows(data):
    return [json.loads(line) for line in (data / "data" / "train.jsonl").read_text().splitlines()]


def test_phase_in_data_range_uses_train_split_of_its_tasks(data):
    phase = Phase(("read", "colours"), 5, 6, 1)
    got, root = phase_records(phase, data / "data", data / "work", data_seed=3)
    assert root == data / "data"
    expected = [r for r in _train_rows(data) if r["task"] in ("read", "colours") and 5 <= cells(r, root) <= 6]
    assert got == expected and got
    assert not (data / "work").exists()


def test_generic_phase_is_every_train_row_of_any_dataset(data):
    got, root = phase_records(Phase((), 0, 0, 3), data / "data", data / "work")
    assert root == data / "data" and got == _train_rows(data) and len(got) == 60


def test_phase_outside_data_range_generates_short_rows(data):
    phase = Phase(("read",), 1, 3, 1)
    got, root = phase_records(phase, data / "data", data / "work", data_seed=3, generated=20)
    assert root == data / "work" and len(got) == 20 and {r["task"] for r in got} == {"read"}
    assert all(1 <= cells(r, root) <= 3 for r in got)

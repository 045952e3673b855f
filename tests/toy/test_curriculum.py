"""Stage-0 curriculum: the schedule parser and which examples each phase trains on (no training)."""

from __future__ import annotations

import pytest

from nemo_automodel_bard.toy import train_ar
from nemo_automodel_bard.toy.task import MAX_CELLS, MIN_CELLS, TASKS, generate_splits
from nemo_automodel_bard.toy.train_ar import DEFAULT_CURRICULUM, Phase, parse_curriculum, phase_examples


def test_parse_explicit_schedule():
    assert parse_curriculum("read:1-3:800, read+colours:4-8:1300,all:4-8:10") == [
        Phase(("read",), 1, 3, 800),
        Phase(("read", "colours"), 4, 8, 1300),
        Phase(tuple(TASKS), 4, 8, 10),
    ]


def test_default_schedule_starts_with_short_reads_and_ends_with_all_tasks():
    phases = parse_curriculum("default")
    assert phases == parse_curriculum(DEFAULT_CURRICULUM)
    assert phases[0] == Phase(("read",), 1, 3, 800)
    assert set(phases[-1].tasks) == set(TASKS)
    assert (phases[-1].min_cells, phases[-1].max_cells) == (MIN_CELLS, MAX_CELLS)  # the data folder's rows


@pytest.mark.parametrize("bad", ["read:1-3", "reading:1-3:5", "read:3-1:5", "read:0-2:5", "read:1-3:0", "read:a-b:5"])
def test_parse_rejects_bad_phases(bad):
    with pytest.raises(ValueError):
        parse_curriculum(bad)


@pytest.fixture
def data(tmp_path, monkeypatch):
    # Keep the records themselves instead of tokenising them: the test is about selection.
    monkeypatch.setattr(train_ar, "encode_example", lambda processor, record, root: record)
    generate_splits(tmp_path / "data", seed=3, sizes={"train": 60, "val": 5, "test": 5})
    return tmp_path


def test_phase_in_data_range_uses_train_split_of_its_tasks(data):
    phase = Phase(("read", "colours"), 5, 6, 1)
    got = phase_examples(None, phase, data / "data", data / "work", data_seed=3)
    assert got and {r["task"] for r in got} <= {"read", "colours"}
    assert all(5 <= train_ar._cells(r, data / "data") <= 6 for r in got)
    train_answers = (data / "data" / "train.jsonl").read_text()
    assert all(r["answer"] in train_answers for r in got)
    assert not (data / "work").exists()


def test_phase_outside_data_range_generates_short_rows(data):
    phase = Phase(("read",), 1, 3, 1)
    got = phase_examples(None, phase, data / "data", data / "work", data_seed=3, generated=20)
    assert len(got) == 20 and {r["task"] for r in got} == {"read"}
    assert all(1 <= train_ar._cells(r, data / "work") <= 3 for r in got)

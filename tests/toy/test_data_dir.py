"""``bard demo --data DIR``'s dataset check: normalised rows, val split, vocabulary, clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from nemo_automodel_bard.toy.data_dir import DataError, messages_row, prepare_data, read_split, write_split


def _row(image="a.png", question="what is it ?", answer="a red circle", task=None, **extra):
    user = [{"type": "text", "text": question}, {"type": "image", "image": image}]  # text first: normalised
    row = {"messages": [{"role": "user", "content": user},
                        {"role": "assistant", "content": [{"type": "text", "text": answer}]}], **extra}
    return {**row, "task": task} if task else row


def _write(folder: Path, split: str, rows: list) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), "white").save(folder / "a.png")
    path = folder / f"{split}.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_rows_are_normalised_with_absolute_images_and_answer(tmp_path):
    rows = read_split(_write(tmp_path, "train", [_row(task="colour"), "", _row(answer="blue")]))
    assert len(rows) == 2 and rows[0]["task"] == "colour" and "task" not in rows[1]
    user, assistant = rows[0]["messages"]
    assert user["content"] == [{"type": "image", "image": str((tmp_path / "a.png").resolve())},
                               {"type": "text", "text": "what is it ?"}]
    assert rows[0]["answer"] == assistant["content"][0]["text"] == "a red circle"
    assert rows[1]["id"] == 3  # the line number


def test_written_rows_read_back(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    path = write_split(tmp_path / "test.jsonl", [messages_row("a.png", "what is it ?", "a red circle", "colour"),
                                                 messages_row("a.png", "what is it ?", "blue")])
    rows = read_split(path)
    assert [r.get("task") for r in rows] == ["colour", None] and [r["answer"] for r in rows] == ["a red circle", "blue"]
    assert rows[0]["messages"][0]["content"][0]["image"] == str((tmp_path / "a.png").resolve())


@pytest.mark.parametrize("row, match", [
    ("{not json", r"train.jsonl:1: not JSON"),
    ({"messages": [{"role": "system", "content": "x"}, *_row()["messages"]]}, "one user turn then one assistant"),
    (_row(image="missing.png"), "image not found"),
    ({"messages": [{"role": "user", "content": [{"type": "video", "video": "v.mp4"}]},
                   {"role": "assistant", "content": "x"}]}, "video parts are not supported"),
    ({"messages": [{"role": "user", "content": "no image"}, {"role": "assistant", "content": "x"}]},
     "exactly one image part"),
    (_row(answer="  "), "empty question or answer"),
    (_row(answer="done <|im_end|>"), "special tokens"),
    (_row(task=3), '"task" must be a string'),
])
def test_bad_rows_are_refused_with_file_and_line(tmp_path, row, match):
    path = _write(tmp_path, "train", [row])
    with pytest.raises(DataError, match=match) as err:
        read_split(path)
    assert f"{path}:1:" in str(err.value)


def test_val_is_split_from_train_when_absent_and_vocabulary_is_train_words(tmp_path):
    src = tmp_path / "src"
    train = [_row(answer=f"word{i} red") for i in range(20)]
    _write(src, "train", train)
    _write(src, "test", [_row(answer="word3 red")])
    info = prepare_data(src, tmp_path / "out", val_rows=3, seed=0)
    assert info.val_from_train and info.rows == {"train": 17, "test": 1, "val": 3}
    out = {s: read_split(tmp_path / "out" / f"{s}.jsonl") for s in ("train", "val", "test")}
    answers = sorted(r["answer"] for s in ("train", "val") for r in out[s])
    assert answers == sorted(r["messages"][1]["content"][0]["text"] for r in train)  # nothing lost or repeated
    # the vocabulary is DIR/train.jsonl's, val rows included (their answers stay decodable)
    train_words = {w for r in out["train"] + out["val"] for w in (r["answer"] + " what is it ?").split()}
    assert set(info.words) == train_words and info.max_answer_tokens == 3 and info.max_question_words == 4
    again = prepare_data(src, tmp_path / "out2", val_rows=3, seed=0)
    assert (tmp_path / "out2" / "val.jsonl").read_text() == (tmp_path / "out" / "val.jsonl").read_text() and again


def test_answers_the_tokenizer_cannot_produce_are_refused(tmp_path):
    _write(tmp_path, "train", [_row(answer="red")] * 5)
    _write(tmp_path, "val", [_row(answer="red")])
    _write(tmp_path, "test", [_row(answer="red"), _row(answer="purple")])
    with pytest.raises(DataError, match=r"test answers use 1 word\(s\) that no train.jsonl row contains, e.g. \['purple'\]"):
        prepare_data(tmp_path, tmp_path / "out")


def test_missing_split_and_tiny_train_are_refused(tmp_path):
    _write(tmp_path, "train", [_row()] * 4)
    with pytest.raises(DataError, match="test.jsonl not found"):
        prepare_data(tmp_path, tmp_path / "out")
    _write(tmp_path, "test", [_row()])
    with pytest.raises(DataError, match="at least 5 are needed"):
        prepare_data(tmp_path, tmp_path / "out")

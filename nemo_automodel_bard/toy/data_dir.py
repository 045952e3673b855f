"""``bard demo --data DIR``: check a dataset folder and normalise it for the demo's stages.

``DIR/{train,test}.jsonl`` (``val.jsonl`` optional: otherwise split from train) in the
upstream ``messages`` schema: one user turn with one image and one text part, then one
assistant turn whose text is the answer; an optional ``"task"`` key groups the scores.
Image paths are relative to the jsonl file (or absolute). The normalised splits go to
``OUT/data`` with absolute image paths and an ``answer`` key (what the stages and the
evaluation read). The word-level vocabulary is the training split's words; a dataset it
cannot serve (answers with words never seen in training, special-token text, videos,
multi-turn or system turns, missing images) is refused with the file and line.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from nemo_automodel_bard.toy.processor import ROLE_WORDS, SPECIALS, words_of

__all__ = ["DataError", "DataInfo", "MAX_WORDS", "messages_row", "read_split", "prepare_data", "write_split"]

MAX_WORDS = 30_000  # a word-level vocabulary beyond this is not a small dataset for the tiny model


class DataError(ValueError):
    """A dataset ``bard demo --data`` cannot serve (the message names the file and, where one, the line)."""


@dataclass
class DataInfo:
    """What :func:`prepare_data` found: split sizes, vocabulary, longest answer, tasks."""

    rows: dict[str, int]
    words: list[str]
    max_answer_tokens: int  # words + the closing <|im_end|>
    max_question_words: int
    tasks: list[str]
    val_from_train: bool
    unknown_question_words: dict[str, int] = field(default_factory=dict)  # split -> words mapped to <unk>


def _fail(path: Path, line: int, problem: str) -> DataError:
    return DataError(f"{path}:{line}: {problem}")


def _texts(content, path: Path, line: int, role: str) -> list[str]:
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise _fail(path, line, f"{role} content must be a string or a list of parts")
    kinds = {part.get("type") for part in content if isinstance(part, dict)}
    if kinds & {"video", "video_url"}:
        raise _fail(path, line, "video parts are not supported by `bard demo --data` (one image per row); "
                                "train on videos with `bard finetune`")
    return [part["text"] for part in content if isinstance(part, dict) and part.get("type") == "text"]


def _image(content, path: Path, line: int) -> Path:
    images = [p.get("image") for p in content if isinstance(p, dict) and p.get("type") == "image"] \
        if isinstance(content, list) else []
    if len(images) != 1 or not isinstance(images[0], str):
        raise _fail(path, line, f"the user turn needs exactly one image part with a path, found {len(images)}")
    image = Path(images[0].removeprefix("file://"))
    image = image if image.is_absolute() else path.parent / image
    if not image.is_file():
        raise _fail(path, line, f"image not found: {image}")
    return image.resolve()


def _record(raw: dict, path: Path, line: int) -> dict:
    messages = raw.get("messages") if isinstance(raw, dict) else None
    if not isinstance(messages, list) or [m.get("role") for m in messages if isinstance(m, dict)] != ["user",
                                                                                                     "assistant"]:
        roles = [m.get("role") for m in messages if isinstance(m, dict)] if isinstance(messages, list) else None
        raise _fail(path, line, f"expected \"messages\": one user turn then one assistant turn, found roles {roles} "
                                "(system and multi-turn rows are not supported by `bard demo --data`)")
    user, assistant = messages
    question = " ".join(_texts(user.get("content"), path, line, "user")).strip()
    answer = " ".join(_texts(assistant.get("content"), path, line, "assistant")).strip()
    image = _image(user.get("content"), path, line)
    if not question or not answer:
        raise _fail(path, line, "empty question or answer text")
    specials = [s for s in SPECIALS if s in question or s in answer]
    if specials:
        raise _fail(path, line, f"text contains special tokens {specials}")
    task = raw.get("task")
    if task is not None and not isinstance(task, str):
        raise _fail(path, line, f"\"task\" must be a string, found {type(task).__name__}")
    user_parts = [{"type": "image", "image": str(image)}, {"type": "text", "text": question}]
    return {"id": line, **({"task": task} if task else {}), "answer": answer,
            "messages": [{"role": "user", "content": user_parts},
                         {"role": "assistant", "content": [{"type": "text", "text": answer}]}]}


def messages_row(image: str, question: str, answer: str, task: str | None = None) -> dict:
    """One row in the upstream ``messages`` schema: a user turn (image, question), the answer turn."""
    row = {"task": task} if task is not None else {}
    row["messages"] = [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]
    return row


def write_split(path: str | Path, rows: list[dict]) -> Path:
    """Write ``rows`` as one jsonl split (the file :func:`read_split` reads)."""
    path = Path(path)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_split(path: str | Path) -> list[dict]:
    """The normalised rows of one jsonl split (:class:`DataError` naming the file and line otherwise)."""
    path = Path(path)
    rows = []
    for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise _fail(path, line, f"not JSON ({err.msg})") from err
        rows.append(_record(raw, path, line))
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def _split_val(train: list[dict], val_rows: int, seed: int) -> tuple[list[dict], list[dict]]:
    n_val = min(val_rows, len(train) // 5)
    if n_val < 1:
        raise DataError(f"no val.jsonl and only {len(train)} train rows: at least 5 are needed to split off a val set")
    order = list(range(len(train)))
    random.Random(f"{seed}-val-split").shuffle(order)
    val_ids = set(order[:n_val])
    return [r for i, r in enumerate(train) if i not in val_ids], [r for i, r in enumerate(train) if i in val_ids]


def _unseen_answer_words(rows: list[dict], vocab: set[str]) -> list[str]:
    return sorted({w for r in rows for w in r["answer"].split() if w not in vocab})


def prepare_data(src: str | Path, dst: str | Path, *, val_rows: int = 300, seed: int = 0) -> DataInfo:
    """Check ``src``, write its normalised ``{train,val,test}.jsonl`` to ``dst``; returns :class:`DataInfo`."""
    src, dst = Path(src), Path(dst)
    for split in ("train", "test"):
        if not (src / f"{split}.jsonl").is_file():
            raise DataError(f"{src}: {split}.jsonl not found (`bard demo --data DIR` needs DIR/train.jsonl and "
                             "DIR/test.jsonl; val.jsonl is optional)")
    splits = {split: read_split(src / f"{split}.jsonl") for split in ("train", "test")}
    # the words of DIR/train.jsonl, also where a val split is taken from it
    words = words_of(text for r in splits["train"] for text in (r["messages"][0]["content"][1]["text"], r["answer"]))
    val_from_train = not (src / "val.jsonl").is_file()
    if val_from_train:
        splits["train"], splits["val"] = _split_val(splits["train"], val_rows, seed)
    else:
        splits["val"] = read_split(src / "val.jsonl")
    words = [w for w in words if w not in ROLE_WORDS]
    if len(words) > MAX_WORDS:
        raise DataError(f"{src}: {len(words)} distinct words in train.jsonl, more than the word-level tokenizer's "
                         f"{MAX_WORDS}: `bard demo --data` is for small datasets")
    vocab = set(words) | set(ROLE_WORDS)
    for split in ("val", "test"):
        unseen = _unseen_answer_words(splits[split], vocab)
        if unseen:
            raise DataError(f"{src}: {split} answers use {len(unseen)} word(s) that no train.jsonl row contains, "
                             f"e.g. {unseen[:5]}: the word-level tokenizer built from train.jsonl cannot produce "
                             "them; add training rows with these words")
    dst.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        (dst / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    unknown = {split: len({w for r in splits[split] for w in r["messages"][0]["content"][1]["text"].split()} - vocab)
               for split in ("val", "test")}
    return DataInfo(rows={k: len(v) for k, v in splits.items()}, words=words,
                    max_answer_tokens=1 + max(len(r["answer"].split()) for rows in splits.values() for r in rows),
                    max_question_words=max(len(r["messages"][0]["content"][1]["text"].split())
                                           for rows in splits.values() for r in rows),
                    tasks=sorted({r["task"] for rows in splits.values() for r in rows if "task" in r}),
                    val_from_train=val_from_train, unknown_question_words=unknown)

"""Reading multimodal chat samples in the upstream ``messages`` schema (bard_spec.md section 8).

A row holds ``messages`` (a list, or a JSON string of one) of
``{"role": "system"|"user"|"assistant", "content": str | [{"type": "text", "text": ...} |
{"type": "image", "image": path | {"bytes": ..., "path": ...} | PIL.Image} | {"type": "video", "video": path}]}``.
Rows come from a jsonl file (one JSON object per line) or from an HF dataset saved with
``save_to_disk``. Image and video paths are relative to ``root_dir`` (default: the jsonl's
folder or the dataset folder). A video is a video file or a list of frame image files, read
with qwen-vl-utils (its item keys such as ``fps``, ``sample_fps``, ``min_pixels``,
``max_pixels``, ``total_pixels`` apply).

Every row is known by its *source* (``file:line`` for jsonl, ``dir[row i]`` for Arrow) so
that errors point at it.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["BadSampleError", "ChatRow", "read_rows", "check_row", "split_last_assistant", "load_image", "load_video",
           "video_processor_kwargs"]

ROLES = ("system", "user", "assistant")


class BadSampleError(ValueError):
    """A row that cannot be trained on; the message starts with its source (file:line)."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


@dataclass
class ChatRow:
    """One raw row: its ``messages`` (maybe still a JSON string), its source and image root."""

    messages: Any
    source: str
    root_dir: Path


def _jsonl_rows(path: Path, root_dir: Path) -> list[ChatRow]:
    rows = []
    with path.open("rb") as handle:  # bytes: one bad line must not abort the whole file
        for lineno, raw in enumerate(handle, start=1):
            source = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                reason = f"not UTF-8 (byte {raw[exc.start]:#04x} at column {exc.start + 1})"
                rows.append(ChatRow(messages=BadSampleError(source, reason), source=source, root_dir=root_dir))
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                rows.append(ChatRow(messages=BadSampleError(source, f"invalid JSON ({exc.msg})"), source=source, root_dir=root_dir))
                continue
            messages = record.get("messages") if isinstance(record, dict) else None
            rows.append(ChatRow(messages=messages, source=source, root_dir=root_dir))
    return rows


def _arrow_rows(path: Path, root_dir: Path, split: str | None) -> list[ChatRow]:
    import datasets

    data = datasets.load_from_disk(str(path))
    if isinstance(data, datasets.DatasetDict):
        if split is None:
            if len(data) != 1:
                raise ValueError(f"{path} holds splits {list(data)}; set dataset.split")
            split = next(iter(data))
        data = data[split]
    if "messages" not in data.column_names:
        raise ValueError(f"{path}: no 'messages' column (columns: {data.column_names})")
    column = data["messages"]
    return [ChatRow(messages=m, source=f"{path}[row {i}]", root_dir=root_dir) for i, m in enumerate(column)]


def read_rows(path_or_paths: str | os.PathLike | list, root_dir: str | None = None, split: str | None = None) -> list[ChatRow]:
    """All rows of one or more jsonl files / ``save_to_disk`` folders, in order."""
    paths = path_or_paths if isinstance(path_or_paths, (list, tuple)) else [path_or_paths]
    rows: list[ChatRow] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"dataset path {path} does not exist")
        root = Path(root_dir).expanduser() if root_dir else (path if path.is_dir() else path.parent)
        if path.is_dir():
            rows += _arrow_rows(path, root, split)
        else:
            rows += _jsonl_rows(path, root)
    return rows


def _parse_messages(row: ChatRow) -> list[dict]:
    messages = row.messages
    if isinstance(messages, BadSampleError):
        raise messages
    if isinstance(messages, str):
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError as exc:
            raise BadSampleError(row.source, f"'messages' is a string but not JSON ({exc.msg})") from None
    if not isinstance(messages, list) or not messages:
        raise BadSampleError(row.source, "missing or empty 'messages' list")
    for turn in messages:
        if not isinstance(turn, dict) or turn.get("role") not in ROLES:
            raise BadSampleError(row.source, f"bad turn {str(turn)[:80]!r}: needs a role in {ROLES}")
    return messages


def _content_items(turn: dict) -> list[dict]:
    content = turn.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if content is None:
        return []
    return [c for c in content if isinstance(c, dict)]


def split_last_assistant(messages: list[dict], source: str) -> tuple[list[dict], dict]:
    """``(prompt turns, last assistant turn)``; turns after the last assistant turn are dropped."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise BadSampleError(source, "no assistant turn (the response is the last assistant turn)")
    if last == 0:
        raise BadSampleError(source, "the assistant turn has no prompt before it")
    return messages[:last], messages[last]


def _is_pil(ref: Any) -> bool:
    """An in-memory ``PIL.Image`` (AutoModel's conversation datasets hold decoded images)."""
    from PIL import Image

    return isinstance(ref, Image.Image)


def _image_path(item: dict, root_dir: Path) -> Path | None:
    ref = item.get("image")
    if isinstance(ref, dict):
        if ref.get("bytes") is not None:
            return None
        ref = ref.get("path")
    if not isinstance(ref, str) or not ref:
        return None
    return _resolve(ref, root_dir)


def _resolve(ref: str, root_dir: Path) -> Path:
    path = Path(ref).expanduser()
    return path if path.is_absolute() else root_dir / path


def _video_paths(item: dict, root_dir: Path) -> list[Path] | None:
    """The video file (one path) or its frame files, resolved; None if the item has neither."""
    ref = item.get("video")
    refs = [ref] if isinstance(ref, str) else ref
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) and r for r in refs):
        return None
    return [_resolve(r, root_dir) for r in refs]


def check_row(row: ChatRow) -> tuple[list[dict], dict]:
    """Cheap structural checks (no decoding): messages, assistant turn, image and video files exist.

    Returns the ``(prompt, response)`` turns; raises :class:`BadSampleError`.
    """
    prompt, response = split_last_assistant(_parse_messages(row), row.source)
    for item in _content_items(response):
        if item.get("type") in ("image", "video"):
            raise BadSampleError(row.source, "images or videos in the response turn are not supported")
    for turn in prompt:
        for item in _content_items(turn):
            kind = item.get("type")
            if kind == "image":
                path = _image_path(item, row.root_dir)
                ref = item.get("image")
                in_memory = _is_pil(ref) or (isinstance(ref, dict) and ref.get("bytes") is not None)
                if path is None and not in_memory:
                    raise BadSampleError(row.source, f"image item without a path, bytes or PIL image: {str(item)[:80]!r}")
                if path is not None and not path.is_file():
                    raise BadSampleError(row.source, f"missing image file {path}")
            elif kind == "video":
                paths = _video_paths(item, row.root_dir)
                if paths is None:
                    raise BadSampleError(row.source, f"video item without a path or frame list: {str(item)[:80]!r}")
                for path in paths:
                    if not path.is_file():
                        raise BadSampleError(row.source, f"missing video file {path}")
    if not any(item.get("type") == "text" and item.get("text") for item in _content_items(response)):
        raise BadSampleError(row.source, "the assistant turn has no text")
    return prompt, response


def load_image(item: dict, root_dir: Path, source: str):
    """Decode one image item to an RGB ``PIL.Image``; raises :class:`BadSampleError`."""
    from PIL import Image

    ref = item.get("image")
    try:
        if _is_pil(ref):
            image = ref
        elif isinstance(ref, dict) and ref.get("bytes") is not None:
            image = Image.open(io.BytesIO(ref["bytes"]))
        else:
            image = Image.open(_image_path(item, root_dir))
        image.load()
        return image.convert("RGB")
    except Exception as exc:  # PIL raises many types for broken files
        raise BadSampleError(source, f"unreadable image ({type(exc).__name__}: {exc})") from None


def load_video(item: dict, root_dir: Path, source: str, patch_size: int) -> tuple[Any, dict]:
    """Decode one video item with qwen-vl-utils: ``(frames [T, C, H, W] float, metadata)``.

    Frames are sampled (``fps``, default 2) and resized to multiples of ``2 * patch_size``
    as qwen-vl-utils does for Qwen3-VL; a frame list is taken whole at ``sample_fps`` (default
    2). ``metadata`` (fps, frame indices) gives the processor the frame timestamps. Raises
    :class:`BadSampleError`.
    """
    from qwen_vl_utils import fetch_video

    paths = [str(p) for p in _video_paths(item, root_dir)]
    ele = {**item, "video": paths if isinstance(item["video"], list) else paths[0]}
    try:
        frames, metadata = fetch_video(ele, image_patch_size=patch_size, return_video_metadata=True)
    except Exception as exc:  # decoders (PIL, torchcodec, decord, torchvision) raise many types
        # qwen-vl-utils falls back to torchvision.io.read_video, which recent torchvision lacks.
        hint = "" if isinstance(item["video"], list) else "; video files need torchcodec or decord installed"
        raise BadSampleError(source, f"unreadable video ({type(exc).__name__}: {exc}{hint})") from None
    return frames, metadata


def video_processor_kwargs(videos: list[tuple[Any, dict]]) -> dict:
    """Processor keyword arguments for :func:`load_video` outputs (empty when there are none).

    qwen-vl-utils already sampled and resized the frames, so the processor must do neither
    again; the metadata gives it the frame timestamps.
    """
    if not videos:
        return {}
    return {
        "videos": [frames for frames, _ in videos],
        "videos_kwargs": {"video_metadata": [meta for _, meta in videos], "do_sample_frames": False, "do_resize": False},
    }

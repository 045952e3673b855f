"""``BardChatDataset``: chat rows -> tokenized ``(prompt, response)`` samples for the layout.

Each item is tokenized through the Qwen3-VL processor and its chat template:

* prompt = every turn before the last assistant turn, rendered with
  ``add_generation_prompt=True`` (so it ends in ``<|im_start|>assistant\\n``), images and
  videos expanded into vision tokens by the processor (videos with their frame timestamps,
  decoded and sized by qwen-vl-utils as Qwen3-VL documents);
* response = the last assistant turn's text through its first ``<|im_end|>`` (newlines after
  ``<|im_start|>assistant`` collapsed, bard_spec.md section 8).

Bad rows (unparseable, no assistant turn, missing or unreadable image or video) raise
:class:`BadSampleError` naming ``file:line`` (``on_bad_sample: error``, the default), or are
skipped and counted (``on_bad_sample: skip``).

``max_length`` bounds a sample as a user counts it: ``P + R``, prompt (vision tokens
included) plus response (through ``<|im_end|>``, before block padding). The noisy copy does
not count against it: a sample within the limit is never cut because training doubles its
response (the recipe checks that ``bard.packing.pack_size`` holds the resulting layout,
``layout.max_layout_length``). A longer sample is truncated in the response
(``too_long: truncate``; vision tokens are in the prompt and never cut) or dropped
(``too_long: drop``, or when the prompt alone reaches ``max_length``), each with a
warning naming the row and the running counts. Skipped and dropped rows are replaced by the
next good row (deterministically), so batch sizes stay fixed. Each row is counted once however
many epochs meet it (a skipped row is not read again); :meth:`summary` gives the totals, which
the recipe logs at the end of the run (per process: with ``num_workers > 0`` each worker
counts, and logs, the rows it read).

The processor and block size are bound by the recipe (:meth:`bind`) after AutoModel built the
dataset: AutoModel hands a dataset factory only a tokenizer.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

import torch

from nemo_automodel_bard.data.chat import (
    BadSampleError,
    ChatRow,
    check_row,
    load_image,
    load_video,
    read_rows,
    video_processor_kwargs,
)

__all__ = ["BardChatDataset", "build_chat_dataset", "BadSampleError"]

logger = logging.getLogger(__name__)

_IM_END = "<|im_end|>"
_ASSISTANT_HEADER = "<|im_start|>assistant"


def _template_content(turn: dict) -> dict:
    """A turn as the chat template wants it: images/videos become bare ``{"type": ...}`` items."""
    content = turn.get("content")
    if isinstance(content, str) or content is None:
        return {"role": turn["role"], "content": [{"type": "text", "text": content or ""}]}
    items = []
    for item in content:
        if item.get("type") in ("image", "video"):
            items.append({"type": item["type"]})
        elif item.get("type") == "text":
            items.append({"type": "text", "text": item.get("text", "")})
    return {"role": turn["role"], "content": items}


def _media_items(prompt: list[dict], kind: str) -> list[dict]:
    """The prompt's ``kind`` items in order (the order the processor fills placeholders in)."""
    return [item for turn in prompt if isinstance(turn.get("content"), list) for item in turn["content"]
            if item.get("type") == kind]


class BardChatDataset(torch.utils.data.Dataset):
    """Map-style dataset of tokenized samples (dicts for :func:`collate_layout`).

    Args:
        path_or_dataset: a jsonl file, a ``save_to_disk`` folder, or a list of them.
        rows: already-read rows instead (AutoModel conversation items, ``data/conversation.py``).
        root_dir: folder image and video paths are relative to (default: each source's folder).
        split: split of a saved ``DatasetDict``.
        max_length: bound on a sample's ``P + R`` (prompt with vision tokens + response).
        on_bad_sample: ``error`` (fail fast with file:line) or ``skip`` (count and move on).
        too_long: ``truncate`` (the response) or ``drop``.
        validate: check every row's structure and image/video files when the dataset is built.
        block_size: the layout's block size (rebound by the recipe per PBM stage).
        processor: a Qwen3-VL processor (or a path for ``AutoProcessor``); bound later if None.
    """

    def __init__(
        self,
        path_or_dataset: str | list[str] | None = None,
        *,
        rows: Sequence[ChatRow] | None = None,
        root_dir: str | None = None,
        split: str | None = None,
        max_length: int = 8192,
        on_bad_sample: Literal["error", "skip"] = "error",
        too_long: Literal["truncate", "drop"] = "truncate",
        validate: bool = True,
        block_size: int = 4,
        processor: Any = None,
    ) -> None:
        if on_bad_sample not in ("error", "skip"):
            raise ValueError(f"dataset.on_bad_sample must be 'error' or 'skip', got {on_bad_sample!r}")
        if too_long not in ("truncate", "drop"):
            raise ValueError(f"dataset.too_long must be 'truncate' or 'drop', got {too_long!r}")
        if int(max_length) < 2:
            raise ValueError(f"dataset.max_length must allow a prompt and a response token (>= 2), got {max_length}")
        self.max_length = int(max_length)
        self.on_bad_sample = on_bad_sample
        self.too_long = too_long
        self.block_size = int(block_size)
        self.stats: Counter[str] = Counter()
        self._counted: set[tuple[int, str]] = set()  # (row, outcome): each row counts once, not once per epoch
        self._unusable: set[int] = set()  # rows skipped or dropped at read time: not read again
        self.processor = None
        if (path_or_dataset is None) == (rows is None):
            raise ValueError("BardChatDataset needs exactly one of path_or_dataset and rows")
        if rows is None:
            rows = read_rows(path_or_dataset, root_dir=root_dir, split=split)
        self.rows = self._validated(rows) if validate else rows
        if not len(self.rows):
            name = path_or_dataset if path_or_dataset is not None else getattr(rows, "name", "rows")
            raise ValueError(f"dataset {name} has no usable rows")
        if processor is not None:
            self.bind(processor=processor)

    def _validated(self, rows: Sequence[ChatRow]) -> list[ChatRow]:
        kept = []
        for row in rows:
            try:
                check_row(row)
            except BadSampleError as exc:
                if self.on_bad_sample == "error":
                    raise
                self.stats[f"skipped: {exc.reason.split(' (')[0]}"] += 1
                continue
            kept.append(row)
        if len(kept) < len(rows):
            logger.warning("BardChatDataset: skipped %d of %d rows at load: %s", len(rows) - len(kept), len(rows), dict(self.stats))
        return kept

    def bind(self, *, processor: Any = None, block_size: int | None = None) -> "BardChatDataset":
        """Attach the processor (instance or path) and/or the block size."""
        if isinstance(processor, str):
            from transformers import AutoProcessor

            processor = AutoProcessor.from_pretrained(processor)
        if processor is not None:
            self.processor = processor
            tokenizer = processor.tokenizer
            self._image_token_id = getattr(processor, "image_token_id", None) or tokenizer.convert_tokens_to_ids("<|image_pad|>")
            self._video_token_id = getattr(processor, "video_token_id", None) or tokenizer.convert_tokens_to_ids("<|video_pad|>")
        if block_size is not None:
            self.block_size = int(block_size)
        return self

    def __len__(self) -> int:
        return len(self.rows)

    # ------------------------------------------------------------------ tokenization
    def _render(self, prompt: list[dict], response: dict, source: str) -> tuple[str, str]:
        """``(prompt text ending in the assistant header, response text through <|im_end|>)``."""
        processor = self.processor
        prompt_msgs = [_template_content(t) for t in prompt]
        prompt_text = processor.apply_chat_template(prompt_msgs, tokenize=False, add_generation_prompt=True)
        full_text = processor.apply_chat_template(
            prompt_msgs + [_template_content(response)], tokenize=False, add_generation_prompt=False
        )
        # Collapse the newline(s) after the assistant header to one (upstream's training format).
        header = prompt_text.rstrip("\n")
        if not (header.endswith(_ASSISTANT_HEADER) and full_text.startswith(header)):
            raise BadSampleError(source, "the chat template does not render the prompt as a prefix of the conversation")
        prompt_text = header + "\n"
        reply = full_text[len(header) :].lstrip("\n")
        end = reply.find(_IM_END)
        reply = reply if end < 0 else reply[: end + len(_IM_END)]
        return prompt_text, reply

    def _tokenize(self, row: ChatRow) -> dict[str, Any]:
        if self.processor is None:
            raise RuntimeError("BardChatDataset needs a processor: call dataset.bind(processor=...) first")
        prompt, response = check_row(row)
        images = [load_image(item, row.root_dir, row.source) for item in _media_items(prompt, "image")]
        videos = [
            load_video(item, row.root_dir, row.source, self.processor.video_processor.patch_size)
            for item in _media_items(prompt, "video")
        ]
        prompt_text, reply = self._render(prompt, response, row.source)
        encoded = self.processor(text=[prompt_text], images=images or None, return_tensors="pt",
                                 **video_processor_kwargs(videos))
        prompt_ids = encoded["input_ids"][0]
        response_ids = torch.tensor(
            self.processor.tokenizer(reply, add_special_tokens=False)["input_ids"], dtype=torch.long
        )
        mm = torch.zeros_like(prompt_ids)
        mm[prompt_ids == self._image_token_id] = 1
        mm[prompt_ids == self._video_token_id] = 2
        sample = {"prompt_ids": prompt_ids, "response_ids": response_ids, "mm_token_type_ids": mm, "source": row.source}
        if images:
            sample["pixel_values"] = encoded["pixel_values"]
            sample["image_grid_thw"] = encoded["image_grid_thw"]
        if videos:
            sample["pixel_values_videos"] = encoded["pixel_values_videos"]
            sample["video_grid_thw"] = encoded["video_grid_thw"]
        return sample

    def _count(self, position: int | None, outcome: str) -> None:
        if position is None or (position, outcome) not in self._counted:
            self.stats[outcome] += 1
            if position is not None:
                self._counted.add((position, outcome))

    def summary(self) -> str:
        """One line: rows skipped, dropped and truncated so far (each row counted once)."""
        counts = ", ".join(f"{key}: {value}" for key, value in sorted(self.stats.items()))
        return f"BardChatDataset: {len(self.rows)} rows; {counts or 'no row skipped, dropped or truncated'}"

    def _fit(self, sample: dict[str, Any], position: int | None = None) -> dict[str, Any] | None:
        """Apply ``max_length`` to ``P + R``: the sample, a response-truncated copy, or None (drop)."""
        prompt_len, response_len = sample["prompt_ids"].numel(), sample["response_ids"].numel()
        if prompt_len + response_len <= self.max_length:
            return sample
        room = self.max_length - prompt_len
        if self.too_long == "drop" or room < 1:
            self._count(position, "dropped: too long")
            action = "dropped"
        else:
            self._count(position, "truncated")
            action = f"truncated the response to {room} tokens:"
        logger.warning(
            "BardChatDataset max_length: %s %s (P %d + R %d > max_length %d); %d truncated, %d dropped so far",
            action, sample["source"], prompt_len, response_len, self.max_length, self.stats["truncated"],
            self.stats["dropped: too long"],
        )
        return None if action == "dropped" else {**sample, "response_ids": sample["response_ids"][:room]}

    def __getitem__(self, index: int) -> dict[str, Any]:
        # A skipped/dropped row is replaced by the next one: fixed batch sizes, deterministic.
        for attempt in range(len(self.rows)):
            position = (index + attempt) % len(self.rows)
            if position in self._unusable:
                continue
            row = self.rows[position]
            try:
                sample = self._fit(self._tokenize(row), position)
            except BadSampleError as exc:
                if self.on_bad_sample == "error":
                    raise
                self._unusable.add(position)
                self._count(position, f"skipped: {exc.reason.split(' (')[0]}")
                logger.warning("BardChatDataset: skipped %s (%d skipped so far)", exc, sum(
                    v for k, v in self.stats.items() if k.startswith("skipped")))
                continue
            if sample is not None:
                return sample
        raise RuntimeError("BardChatDataset: every row was skipped or dropped")


def build_chat_dataset(path_or_dataset: str | list[str], **kwargs: Any) -> BardChatDataset:
    """YAML factory (``dataset._target_``); see :class:`BardChatDataset` for the arguments."""
    return BardChatDataset(path_or_dataset, **kwargs)

"""The packed ``[prompt | clean response | noisy response]`` training layout.

One sample with prompt ``P`` tokens (vision tokens included, encoded once) and a response
padded to ``R`` (a multiple of the block size) occupies ``P + 2R`` consecutive tokens of a
row; several samples may share a row (bin-packed with AutoModel's ``greedy_knapsack``) and
never see each other (block-diagonal mask through ``doc``).

The collated batch carries the layout (``segment, offset, prompt_len, doc``, see
``diffusion/masks.py``) rather than a mask, so the mask for *any* block size (the SWD
anchor's B=4) is rebuilt from it. Steps:

1. :func:`collate_layout` (data loader): samples -> rows, clean ids in both copies.
2. :func:`apply_noise` (train step, step-seeded generator): per-block ``t``, corrupts the
   noisy copy, writes ``labels`` (-100 outside loss positions) and ``loss_weight``.
3. :func:`layout_position_ids` + :func:`layout_attention_mask`: model inputs.

Batch keys (``[B, S]`` unless noted): ``input_ids, labels, segment, offset, prompt_len,
doc, response_len, block_pad, mm_token_type_ids``; ``samples [N, 4]`` (row, start,
prompt_len, response_len); ``sample_num_images [N]``, ``sample_num_videos [N]``;
``num_samples`` (int, real samples); ``num_fake_media`` (int: fake images/videos that only
keep the vision tower running, listed in ``samples`` with response length 0);
``pixel_values``/``image_grid_thw`` (and the ``_videos`` pair) in sample order; after noise
also ``t, loss_mask, loss_weight``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from nemo_automodel.components.datasets.llm import neat_packing

from nemo_automodel_bard.diffusion.loss import diffusion_loss_weights
from nemo_automodel_bard.diffusion.masks import (
    CLEAN,
    NOISY,
    PAD,
    PREFIX,
    block_diffusion_mask,
    layout_block_ids,
    to_additive_mask,
)
from nemo_automodel_bard.diffusion.noise import mask_noise, mixed_noise, sample_block_times

__all__ = [
    "IGNORE_INDEX",
    "NON_MODEL_KEYS",
    "padded_response_length",
    "layout_length",
    "max_layout_length",
    "largest_max_length",
    "sample_layout",
    "pack_samples",
    "collate_layout",
    "apply_noise",
    "layout_position_ids",
    "layout_attention_mask",
]

IGNORE_INDEX = -100
# Collated keys the model forward must never see (bard_spec.md section 10.13).
NON_MODEL_KEYS = (
    "labels",
    "segment",
    "offset",
    "prompt_len",
    "doc",
    "response_len",
    "block_pad",
    "samples",
    "sample_num_images",
    "sample_num_videos",
    "num_samples",
    "num_fake_media",
    "t",
    "loss_mask",
    "loss_weight",
    "mm_token_type_ids",
)
_MEDIA = (("pixel_values", "image_grid_thw", "sample_num_images"), ("pixel_values_videos", "video_grid_thw", "sample_num_videos"))


def padded_response_length(response_len: int, block_size: int) -> int:
    """Response length rounded up to a whole number of blocks (at least one block)."""
    return max(1, math.ceil(response_len / block_size)) * block_size


def layout_length(prompt_len: int, response_len: int, block_size: int) -> int:
    """Tokens one sample occupies in a row: ``P + 2R``."""
    return prompt_len + 2 * padded_response_length(response_len, block_size)


def max_layout_length(max_length: int, block_size: int) -> int:
    """The longest layout ``P + 2R`` (R block-padded) of a sample with ``P + R <= max_length``.

    ``dataset.max_length`` bounds the sample as a user counts it (prompt with its vision
    tokens, plus the response once); the noisy copy and the block padding make its layout
    longer. The worst case is a one-token-past-a-block response: ``R = qB + 1`` pads to
    ``(q + 1) B`` twice, so the bound is ``L - 1 + B (floor((L - 2) / B) + 2)`` (about 2L).
    """
    if max_length < 2:
        raise ValueError(f"max_length must allow a prompt and a response token (>= 2), got {max_length}")
    return max_length - 1 + block_size * ((max_length - 2) // block_size + 2)


def largest_max_length(pack_size: int, block_size: int) -> int:
    """The largest ``max_length`` whose every sample fits a row of ``pack_size`` tokens (0 if none)."""
    low, high = 1, pack_size  # max_layout_length(L) > L, so the answer is below pack_size
    while low < high:
        mid = (low + high + 1) // 2
        if max_layout_length(mid, block_size) <= pack_size:
            low = mid
        else:
            high = mid - 1
    return low if low >= 2 and max_layout_length(low, block_size) <= pack_size else 0


def sample_layout(
    prompt_ids: torch.Tensor, response_ids: torch.Tensor, block_size: int, pad_token_id: int
) -> dict[str, torch.Tensor]:
    """One sample's ``[prompt | clean | noisy]`` tokens (1-D tensors of length ``P + 2R``).

    The response is padded with ``pad_token_id`` (``<|im_end|>``) to a multiple of
    ``block_size``; both copies hold the clean ids (noise comes later). ``labels`` holds the
    clean id on the noisy copy and ``IGNORE_INDEX`` elsewhere.
    """
    prompt_len, response_len = int(prompt_ids.numel()), int(response_ids.numel())
    padded = padded_response_length(response_len, block_size)
    response = torch.full((padded,), pad_token_id, dtype=torch.long)
    response[:response_len] = response_ids
    block_pad = torch.arange(padded) >= response_len
    ignore_prefix = torch.full((prompt_len + padded,), IGNORE_INDEX, dtype=torch.long)
    return {
        "input_ids": torch.cat([prompt_ids.long(), response, response]),
        "labels": torch.cat([ignore_prefix, response]),
        "segment": torch.cat(
            [torch.full((prompt_len,), PREFIX), torch.full((padded,), CLEAN), torch.full((padded,), NOISY)]
        ),
        "offset": torch.cat([torch.arange(prompt_len), torch.arange(padded), torch.arange(padded)]),
        "block_pad": torch.cat([torch.zeros(prompt_len + padded, dtype=torch.bool), block_pad]),
    }


def pack_samples(lengths: Sequence[int], pack_size: int | None) -> list[list[int]]:
    """Group sample indices into rows of at most ``pack_size`` tokens (None: one per row).

    Uses AutoModel's ``greedy_knapsack``; samples keep their input order inside a row and
    rows are ordered by their first sample, so the packing is deterministic.
    """
    if not pack_size:
        return [[i] for i in range(len(lengths))]
    too_long = [i for i, n in enumerate(lengths) if n > pack_size]
    if too_long:
        raise ValueError(
            f"samples {too_long} have layout length P + 2R {[lengths[i] for i in too_long]} > bard.packing.pack_size="
            f"{pack_size}; dataset.max_length bounds P + R, so pack_size must be >= max_layout_length(max_length, "
            f"block_size) (the recipe checks this for BardChatDataset)"
        )
    # greedy_knapsack logs progress at INFO; per micro-batch that floods the training log.
    knapsack_logger = logging.getLogger(neat_packing.__name__)
    level = knapsack_logger.level
    knapsack_logger.setLevel(logging.WARNING)
    try:
        bins = [sorted(b) for b in neat_packing.greedy_knapsack(list(lengths), pack_size)]
    finally:
        knapsack_logger.setLevel(level)
    return sorted(bins, key=lambda b: b[0])


def _cat_media(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    present = [p for p in parts if p is not None and p.numel() > 0]
    return torch.cat(present) if present else None


def _fake_layout(sample: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A fake media item's tokens as a prompt-only layout (no response, no loss)."""
    ids = sample["prompt_ids"].long()
    n = int(ids.numel())
    return {
        "input_ids": ids,
        "labels": torch.full((n,), IGNORE_INDEX, dtype=torch.long),
        "segment": torch.full((n,), PREFIX),
        "offset": torch.arange(n),
        "block_pad": torch.zeros(n, dtype=torch.bool),
    }


def _place_fake_media(used: list[int], width: int, sizes: Sequence[int]) -> tuple[list[int], int]:
    """Row of each fake item: the row with the most room left; the rows widen only if none has room."""
    rows = []
    for n in sizes:
        row = min(range(len(used)), key=lambda r: (used[r], r))
        rows.append(row)
        used[row] += n
        width = max(width, used[row])
    return rows, width


def collate_layout(
    samples: Sequence[dict[str, Any]],
    *,
    block_size: int,
    pad_token_id: int,
    pack_size: int | None = None,
    pad_to_multiple_of: int = 1,
    fake_media: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """Pack tokenized samples into ``[prompt | clean | noisy]`` rows (see module docstring).

    Args:
        samples: dicts with ``prompt_ids [P]``, ``response_ids [R0]``, optional
            ``mm_token_type_ids [P]``, ``pixel_values``, ``image_grid_thw [n, 3]``,
            ``pixel_values_videos``, ``video_grid_thw``.
        pack_size: row capacity in tokens; None puts each sample on its own row.
        pad_to_multiple_of: rows are right-padded to a multiple of this.
        fake_media: prompt-only items (``prompt_ids``, ``mm_token_type_ids`` and media, no
            response) that only make the vision tower run (``data/collate.fake_media_sample``).
            Each becomes its own packed sample (own ``doc``, so no real token attends it nor
            it a real token) at the end of the row with the most room, with no loss
            position; ``num_samples`` does not count it. The row widens only if no row has room.
    """
    layouts = [sample_layout(s["prompt_ids"], s["response_ids"], block_size, pad_token_id) for s in samples]
    rows = pack_samples([int(l["input_ids"].numel()) for l in layouts], pack_size)
    used = [sum(int(layouts[i]["input_ids"].numel()) for i in row) for row in rows]
    width = max(used)
    fake_rows, width = _place_fake_media(used, width, [int(f["prompt_ids"].numel()) for f in fake_media])
    for k, (fake, row) in enumerate(zip(fake_media, fake_rows)):
        layouts.append(_fake_layout(fake))
        rows[row].append(len(samples) + k)
    items = list(samples) + list(fake_media)
    width = math.ceil(width / pad_to_multiple_of) * pad_to_multiple_of

    shape = (len(rows), width)
    batch: dict[str, Any] = {
        "input_ids": torch.full(shape, pad_token_id, dtype=torch.long),
        "labels": torch.full(shape, IGNORE_INDEX, dtype=torch.long),
        "segment": torch.full(shape, PAD, dtype=torch.long),
        "offset": torch.zeros(shape, dtype=torch.long),
        "prompt_len": torch.zeros(shape, dtype=torch.long),
        "doc": torch.full(shape, -1, dtype=torch.long),
        "response_len": torch.zeros(shape, dtype=torch.long),
        "block_pad": torch.zeros(shape, dtype=torch.bool),
        "mm_token_type_ids": torch.zeros(shape, dtype=torch.long),
    }
    table, order = [], []
    for r, row in enumerate(rows):
        start = 0
        for doc, i in enumerate(row):
            layout, sample = layouts[i], items[i]
            n = int(layout["input_ids"].numel())
            prompt_len = int(sample["prompt_ids"].numel())
            span = slice(start, start + n)
            for key in ("input_ids", "labels", "segment", "offset", "block_pad"):
                batch[key][r, span] = layout[key]
            batch["prompt_len"][r, span] = prompt_len
            batch["doc"][r, span] = doc
            batch["response_len"][r, span] = (n - prompt_len) // 2
            mm = sample.get("mm_token_type_ids")
            if mm is not None:
                batch["mm_token_type_ids"][r, start : start + prompt_len] = mm
            table.append([r, start, prompt_len, (n - prompt_len) // 2])
            order.append(i)
            start += n
    batch["samples"] = torch.tensor(table, dtype=torch.long).reshape(-1, 4)
    batch["num_samples"] = len(samples)
    batch["num_fake_media"] = len(fake_media)
    for pixels, grid, count in _MEDIA:
        grids = [items[i].get(grid) for i in order]
        batch[count] = torch.tensor([0 if g is None else int(g.shape[0]) for g in grids], dtype=torch.long)
        batch[grid] = _cat_media(grids)
        batch[pixels] = _cat_media([items[i].get(pixels) for i in order])
    return batch


def apply_noise(
    batch: dict[str, Any],
    *,
    block_size: int,
    mask_token_id: int,
    schedule: str = "mask",
    eps: float = 1e-3,
    substitute_ids: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    normalization: str = "sample_mean",
    block_pad_weight: float = 0.5,
) -> dict[str, Any]:
    """Corrupt the noisy copy of a collated batch (returns a new dict; CPU tensors).

    Adds ``t`` (per-token timestep of its block, 0 outside the noisy copy), ``loss_mask``
    (corrupted positions), ``loss_weight`` (:func:`diffusion_loss_weights`) and rewrites
    ``input_ids`` and ``labels`` (clean id on loss positions, ``IGNORE_INDEX`` elsewhere).
    """
    segment = batch["segment"]
    t = torch.zeros(segment.shape, dtype=torch.float32)
    for row, start, prompt_len, response_len in batch["samples"].tolist():
        if response_len == 0:  # a fake media item: nothing to corrupt
            continue
        times = sample_block_times(response_len // block_size, eps, generator)
        noisy = slice(start + prompt_len + response_len, start + prompt_len + 2 * response_len)
        t[row, noisy] = times.repeat_interleave(block_size)
    eligible = segment == NOISY
    clean_ids = batch["input_ids"]
    if schedule == "mask":
        noisy_ids, loss_mask = mask_noise(clean_ids, t, eligible, mask_token_id, generator)
    elif schedule == "mixed":
        if substitute_ids is None:
            raise ValueError("mixed noise needs substitute_ids (the allowed uniform-substitute vocabulary)")
        noisy_ids, masked, substituted = mixed_noise(clean_ids, t, eligible, mask_token_id, substitute_ids, generator)
        loss_mask = masked | substituted
    else:
        raise ValueError(f"unknown noise schedule {schedule!r}; choose 'mask' or 'mixed'")
    out = dict(batch)
    out["input_ids"] = noisy_ids
    out["labels"] = torch.where(loss_mask, clean_ids, torch.full_like(clean_ids, IGNORE_INDEX))
    out["t"] = t
    out["loss_mask"] = loss_mask
    out["loss_weight"] = diffusion_loss_weights(
        t,
        loss_mask,
        batch["response_len"],
        batch["block_pad"],
        normalization=normalization,
        block_pad_weight=block_pad_weight,
    )
    return out


RopeFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def layout_position_ids(batch: dict[str, Any], rope_fn: RopeFn) -> torch.Tensor:
    """mRoPE ids ``[3, B, S]``: ``rope_fn`` over each sample's ``[prompt | clean]``, reused for noisy.

    Args:
        rope_fn: ``(input_ids [1, L], mm_token_type_ids [1, L], image_grid_thw, video_grid_thw)
            -> (position_ids [3, 1, L], deltas)``, e.g. the model's ``rope_positions`` or
            ``model.model.get_rope_index``.

    Padding gets position 0; positions restart for every packed sample.
    """
    input_ids, mm = batch["input_ids"], batch["mm_token_type_ids"]
    positions = torch.zeros((3, *input_ids.shape), dtype=torch.long, device=input_ids.device)
    cursors = {"image_grid_thw": 0, "video_grid_thw": 0}
    for s, (row, start, prompt_len, response_len) in enumerate(batch["samples"].tolist()):
        grids = {}
        for _, grid, count in _MEDIA:
            n = int(batch[count][s])
            grids[grid] = batch[grid][cursors[grid] : cursors[grid] + n] if n else None
            cursors[grid] += n
        known = slice(start, start + prompt_len + response_len)
        ids = input_ids[row : row + 1, known].clone()
        # The clean copy holds the clean ids; rope only reads the modality layout anyway.
        pos, _ = rope_fn(ids, mm[row : row + 1, known], grids["image_grid_thw"], grids["video_grid_thw"])
        pos = pos[:, 0].to(positions.device)
        positions[:, row, known] = pos
        noisy = slice(start + prompt_len + response_len, start + prompt_len + 2 * response_len)
        positions[:, row, noisy] = pos[:, prompt_len:]
    return positions


def layout_attention_mask(
    batch: dict[str, Any], block_size: int, *, causal_prompt: bool = False, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Additive block-diffusion mask ``[B, 1, S, S]`` of a collated layout for ``block_size``."""
    block = layout_block_ids(batch["segment"], batch["offset"], batch["prompt_len"], block_size)
    mask = block_diffusion_mask(batch["segment"], block, batch["doc"], causal_prompt=causal_prompt)
    return to_additive_mask(mask, dtype)

"""Block-diffusion attention for training: a FlexAttention ``BlockMask`` or a dense bool mask.

Both come from the same per-token ids as ``masks.block_diffusion_mask`` (``segment``,
``block``, ``doc``) and the same rule (``masks.token_attends``):

* :func:`block_diffusion_mask_mod` is that rule as a FlexAttention ``mask_mod``;
* :func:`block_diffusion_block_mask` turns it into one ``BlockMask`` per micro-batch
  (``[B, 1]``: shared by every layer, broadcast over heads). Only tiles (128 x 128 tokens
  by default) are stored: which are empty (skipped by the kernel), full (no mask_mod call)
  or partial. On CUDA it is ``torch.compile(create_block_mask)``, which never materialises
  the ``[S, S]`` mask; elsewhere the tiles are counted from chunks of query rows
  (:func:`_tile_counts`), because eager ``create_block_mask`` builds the dense mask first;
* :func:`layout_mask` picks the form the recipes hand to the model: ``flex`` a BlockMask,
  ``sdpa`` a ``[B, 1, S, S]`` bool mask built directly (no float intermediate);
* :func:`uncompiled_flex_attention` runs transformers' flex path without ``torch.compile``
  (CPU tests and benchmarks: compiling costs about a minute per shape on a small CPU).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator, Literal

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask

from nemo_automodel_bard.diffusion.masks import block_diffusion_mask, layout_block_ids, token_attends

__all__ = [
    "ATTENTION_BACKENDS",
    "TILE",
    "block_diffusion_mask_mod",
    "block_diffusion_block_mask",
    "layout_mask",
    "block_mask_bytes",
    "empty_tile_fraction",
    "uncompiled_flex_attention",
]

ATTENTION_BACKENDS = ("flex", "sdpa")
TILE = 128  # FlexAttention's default sparse block size (query and key tiles)
# Query rows evaluated at once by the chunked tile counter: bounds its transient memory to
# about this many bools, whatever S.
_CHUNK_ELEMENTS = 1 << 22

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _check_ids(segment: torch.Tensor, block: torch.Tensor, doc: torch.Tensor | None) -> torch.Tensor:
    if segment.shape != block.shape or segment.dim() != 2:
        raise ValueError(f"segment and block must both be [B, S]; got {tuple(segment.shape)} and {tuple(block.shape)}")
    if doc is not None and doc.shape != segment.shape:
        raise ValueError(f"doc must be [B, S] like segment; got {tuple(doc.shape)}")
    # One doc id per row when there is no packing: the rule is then the same as doc=None.
    return torch.zeros_like(segment) if doc is None else doc


def block_diffusion_mask_mod(
    segment: torch.Tensor, block: torch.Tensor, doc: torch.Tensor | None = None, *, causal_prompt: bool = False
) -> MaskMod:
    """FlexAttention ``mask_mod(b, h, q, k)`` of a ``[B, S]`` layout (True = attend); ignores the head."""
    doc = _check_ids(segment, block, doc)

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return token_attends(
            segment[b, q_idx], block[b, q_idx], q_idx,
            segment[b, kv_idx], block[b, kv_idx], kv_idx,
            doc[b, q_idx], doc[b, kv_idx],
            causal_prompt=causal_prompt,
        )

    return mask_mod


def block_diffusion_block_mask(
    segment: torch.Tensor,
    block: torch.Tensor,
    doc: torch.Tensor | None = None,
    *,
    causal_prompt: bool = False,
    tile: int = TILE,
    compiled: bool | None = None,
) -> BlockMask:
    """``BlockMask`` ``[B, 1, S, S]`` of a layout, for ``attn_implementation='flex_attention'``.

    Args:
        segment, block, doc: ``[B, S]`` per-token ids (``diffusion/masks.py``).
        tile: query and key tile size of the sparsity pattern.
        compiled: build with ``torch.compile(create_block_mask)`` (default: on CUDA only;
            compiling costs about a minute on a small CPU and eager ``create_block_mask``
            materialises the dense mask, so other devices count tiles in row chunks).
    """
    doc = _check_ids(segment, block, doc)
    mask_mod = block_diffusion_mask_mod(segment, block, doc, causal_prompt=causal_prompt)
    batch, seq = segment.shape
    if compiled is None:
        compiled = segment.device.type == "cuda"
    if compiled:
        return _compiled_create_block_mask()(mask_mod, batch, None, seq, seq, device=segment.device, BLOCK_SIZE=tile)
    partial, full = _tile_counts(segment, block, doc, causal_prompt=causal_prompt, tile=tile)
    kv_num, kv_idx = _ordered(partial)
    full_num, full_idx = _ordered(full)
    return BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=tile, mask_mod=mask_mod, seq_lengths=(seq, seq)
    )


@functools.cache
def _compiled_create_block_mask() -> Callable[..., BlockMask]:
    return torch.compile(create_block_mask)


def _tile_counts(
    segment: torch.Tensor, block: torch.Tensor, doc: torch.Tensor, *, causal_prompt: bool, tile: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(partial, full)`` ``[B, 1, nq, nk]`` bool tiles, evaluating the mask a chunk of query rows at a time.

    Tokens past ``S`` (the last tile's padding) count as masked, as in ``create_block_mask``.
    """
    batch, seq = segment.shape
    tiles = -(-seq // tile)
    padded = tiles * tile
    idx = torch.arange(seq, device=segment.device)
    keys = (segment[:, None, :], block[:, None, :], idx[None, None, :])
    rows_per_chunk = max(tile, _CHUNK_ELEMENTS // max(1, batch * padded) // tile * tile)
    partial, full = [], []
    for start in range(0, seq, rows_per_chunk):
        rows = slice(start, min(seq, start + rows_per_chunk))
        visible = token_attends(
            segment[:, rows, None], block[:, rows, None], idx[None, rows, None], *keys,
            doc[:, rows, None], doc[:, None, :], causal_prompt=causal_prompt,
        )
        n_rows = visible.shape[1]
        n_tiles = -(-n_rows // tile)
        # Pad to whole tiles with False, then count the visible pairs per tile.
        visible = torch.nn.functional.pad(visible, (0, padded - seq, 0, n_tiles * tile - n_rows))
        counts = visible.view(batch, n_tiles, tile, tiles, tile).sum(dim=(2, 4))
        partial.append((counts > 0) & (counts < tile * tile))
        full.append(counts == tile * tile)
    return torch.cat(partial, 1)[:, None], torch.cat(full, 1)[:, None]


def _ordered(tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense ``[B, H, nq, nk]`` bool tiles -> (count per query tile, key-tile indices, set tiles first)."""
    as_int = tiles.to(torch.int32)
    indices = torch.argsort(as_int, dim=-1, descending=True, stable=True)
    return as_int.sum(-1).to(torch.int32), indices.to(torch.int32)


def layout_mask(
    layout: dict[str, Any], block_size: int, *, causal_prompt: bool = False, backend: Literal["flex", "sdpa"] = "sdpa"
) -> torch.Tensor | BlockMask:
    """The model's ``attention_mask`` for a collated layout at ``block_size``.

    Args:
        layout: ``segment, offset, prompt_len, doc`` (``[B, S]`` each, on the compute device).
        backend: ``flex``: a ``BlockMask`` (no ``[S, S]`` tensor); ``sdpa``: a ``[B, 1, S, S]``
            bool mask (sdpa takes bool directly; the model turns it into an additive mask
            in the compute dtype for eager attention).
    """
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention backend must be one of {ATTENTION_BACKENDS}, got {backend!r}")
    segment, doc = layout["segment"], layout["doc"]
    block = layout_block_ids(segment, layout["offset"], layout["prompt_len"], block_size)
    if backend == "flex":
        return block_diffusion_block_mask(segment, block, doc, causal_prompt=causal_prompt)
    return block_diffusion_mask(segment, block, doc, causal_prompt=causal_prompt)[:, None]


def block_mask_bytes(block_mask: BlockMask) -> int:
    """Bytes held by a BlockMask's tensors (tile counts and indices; the mask_mod's ids not included)."""
    return sum(t.numel() * t.element_size() for t in block_mask.as_tuple() if isinstance(t, torch.Tensor))


def empty_tile_fraction(block_mask: BlockMask) -> float:
    """Fraction of query x key tiles with no visible pair (skipped by the kernel), over the batch."""
    counts = block_mask.kv_num_blocks.sum()
    if block_mask.full_kv_num_blocks is not None:
        counts = counts + block_mask.full_kv_num_blocks.sum()
    total = block_mask.kv_num_blocks.numel() * block_mask.kv_indices.shape[-1]
    return 1.0 - float(counts) / total


@contextlib.contextmanager
def uncompiled_flex_attention() -> Iterator[None]:
    """Inside: transformers' ``flex_attention`` backend calls torch's flex_attention eagerly.

    transformers always wraps flex_attention in ``torch.compile`` unless it is already being
    compiled; this says "already compiling" to that one module. Eager flex is exact but
    evaluates every tile (no skipping) and has no CPU backward: for inference on CPU only.
    """
    from unittest import mock

    import transformers.integrations.flex_attention as hf_flex

    with mock.patch.object(hf_flex, "is_torchdynamo_compiling", lambda: True):
        yield

"""Block-diffusion attention masks as pure tensor functions (layout in, mask out).

Every token of a (possibly packed) row is described by three integers:

* ``segment``: ``PREFIX`` (prompt, vision tokens included), ``CLEAN`` (a response block
  that is already known: the clean copy in training, committed blocks at inference),
  ``NOISY`` (a response block being denoised) or ``PAD``.
* ``block``: the block id. Prompt token ``i`` is in block ``i // block_size`` (decision D3:
  the released checkpoints were trained with a block-causal prompt aligned to its first
  token); response block ``b`` is ``ceil(P / block_size) + b``, so every response block
  id is larger than every prompt block id.
* ``doc``: which packed sample the token belongs to (attention never crosses samples).

Visibility (bard_spec.md section 2, with the upstream clean-sees-noisy bug fixed, D4):

* prefix / clean query in block j: prefix and clean keys of blocks <= j; never noisy keys.
* noisy query in block j: all prefix keys, clean keys of blocks < j, noisy keys of block j.
* padding is never attended; a padding query attends only itself so that no softmax
  row is empty (an all-masked row gives NaN with ``-inf`` masks).

The same rules give the inference mask: the cache holds prefix + committed (clean)
blocks, and the block being denoised is the noisy block.
"""

from __future__ import annotations

import math

import torch

PAD, PREFIX, CLEAN, NOISY = -1, 0, 1, 2

__all__ = [
    "PAD",
    "PREFIX",
    "CLEAN",
    "NOISY",
    "sample_block_ids",
    "layout_block_ids",
    "block_diffusion_mask",
    "token_attends",
    "to_additive_mask",
]


def sample_block_ids(prompt_len: int, response_len: int, block_size: int) -> torch.Tensor:
    """Block ids ``[prompt_len + response_len]`` of one sample laid out as ``[prompt | response]``.

    The noisy copy of a response reuses the clean copy's ids.
    """
    if block_size <= 0:
        raise ValueError(f"block_size must be a positive integer, got {block_size}")
    prompt = torch.arange(prompt_len) // block_size
    first_response_block = math.ceil(prompt_len / block_size)
    response = first_response_block + torch.arange(response_len) // block_size
    return torch.cat([prompt, response])


def layout_block_ids(
    segment: torch.Tensor, offset: torch.Tensor, prompt_len: torch.Tensor, block_size: int
) -> torch.Tensor:
    """Block ids ``[B, S]`` of a packed layout for any ``block_size``.

    Recomputing ids from the layout (rather than storing them) lets the SWD anchor see the
    student's row under its own, smaller block size.

    Args:
        segment: ``[B, S]`` (``PAD, PREFIX, CLEAN, NOISY``).
        offset: ``[B, S]`` index of the token inside its prompt (prefix) or inside its
            response (clean and noisy copies share offsets).
        prompt_len: ``[B, S]`` prompt length of the sample each token belongs to.
    """
    if block_size <= 0:
        raise ValueError(f"block_size must be a positive integer, got {block_size}")
    first_response_block = torch.div(prompt_len + block_size - 1, block_size, rounding_mode="floor")
    response = first_response_block + offset // block_size
    return torch.where(segment == PREFIX, offset // block_size, torch.where(segment == PAD, -1, response))


def block_diffusion_mask(
    segment: torch.Tensor,
    block: torch.Tensor,
    doc: torch.Tensor | None = None,
    *,
    causal_prompt: bool = False,
    query_start: int = 0,
) -> torch.Tensor:
    """Boolean attention mask (True = attend) for a block-diffusion layout.

    Args:
        segment: ``[B, S]`` int, one of ``PAD, PREFIX, CLEAN, NOISY``.
        block: ``[B, S]`` int block ids (see module docstring).
        doc: ``[B, S]`` int packed-sample ids, or None for one sample per row.
        causal_prompt: token-causal instead of block-causal attention inside the prompt.
        query_start: only the rows of queries ``query_start..S-1`` (decoding with a KV cache:
            the current queries are the last tokens, the keys are cache + queries).

    Returns:
        ``[B, S - query_start, S]`` bool, ``mask[b, q - query_start, k]``.
    """
    if segment.shape != block.shape or segment.dim() != 2:
        raise ValueError(f"segment and block must both be [B, S]; got {tuple(segment.shape)} and {tuple(block.shape)}")
    if not 0 <= query_start < segment.shape[1]:
        raise ValueError(f"query_start must be in [0, {segment.shape[1]}), got {query_start}")
    idx = torch.arange(segment.shape[1], device=segment.device)
    return token_attends(
        segment[:, query_start:, None], block[:, query_start:, None], idx[None, query_start:, None],
        segment[:, None, :], block[:, None, :], idx[None, None, :],
        None if doc is None else doc[:, query_start:, None], None if doc is None else doc[:, None, :],
        causal_prompt=causal_prompt,
    )


def token_attends(
    seg_q: torch.Tensor,
    blk_q: torch.Tensor,
    idx_q: torch.Tensor,
    seg_k: torch.Tensor,
    blk_k: torch.Tensor,
    idx_k: torch.Tensor,
    doc_q: torch.Tensor | None = None,
    doc_k: torch.Tensor | None = None,
    *,
    causal_prompt: bool = False,
) -> torch.Tensor:
    """Whether query token ``q`` attends key token ``k``: the visibility rules of the module docstring.

    Elementwise over broadcastable per-token ids (segment, block id, position in the row,
    packed-sample id), so the one rule serves the dense mask (``[B, Q, 1]`` against
    ``[B, 1, K]``), the FlexAttention ``mask_mod`` (scalars) and the tile counts of
    ``diffusion/flex_masks.py`` (row chunks).
    """
    known_k = (seg_k == PREFIX) | (seg_k == CLEAN)
    # prefix / clean queries: block-causal over known keys, never noisy keys (D4).
    known_q_rule = known_k & (blk_k <= blk_q)
    if causal_prompt:
        prompt_pair = (seg_q == PREFIX) & (seg_k == PREFIX)
        known_q_rule = torch.where(prompt_pair, idx_k <= idx_q, known_q_rule)
    # noisy queries: all of the prompt, clean blocks before their own, their own noisy block.
    noisy_q_rule = (
        (seg_k == PREFIX)
        | ((seg_k == CLEAN) & (blk_k < blk_q))
        | ((seg_k == NOISY) & (blk_k == blk_q))
    )
    mask = torch.where(seg_q == NOISY, noisy_q_rule, known_q_rule)
    mask = mask & (seg_q != PAD) & (seg_k != PAD)
    if doc_q is not None:
        mask = mask & (doc_q == doc_k)
    # A padding query sees only itself: no empty softmax rows, no effect on real tokens.
    return mask | ((idx_q == idx_k) & (seg_q == PAD))


def to_additive_mask(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[B, Q, K]`` bool -> ``[B, 1, Q, K]`` additive float mask (0 attend, dtype min block).

    Additive masks mean the same thing to sdpa and eager attention (decision D5); the
    finite minimum (not ``-inf``) keeps fully masked rows NaN-free.
    """
    additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    additive.masked_fill_(~mask, torch.finfo(dtype).min)
    return additive[:, None]

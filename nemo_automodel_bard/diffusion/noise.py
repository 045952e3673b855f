"""Forward noise of block diffusion: per-block timesteps, ``mask`` and ``mixed`` corruption.

Pure tensor functions (bard_spec.md section 3, decision D11). Conventions:

* ``t`` in ``[eps, 1]`` is the corruption level of a block: at ``t = 1`` every token is
  corrupted, at ``t -> 0`` none is (the ``mask`` schedule's masking probability is ``t``).
* Timesteps are stratified across the blocks of one response: block ``i`` of ``n`` gets
  ``t = (i + u_i) / n`` with ``u_i ~ U(0, 1)``, the strata then randomly permuted over the
  blocks, so every response sees the whole range of noise levels.
* ``t`` is clamped to ``[eps, 1]`` *after* stratification (upstream clamps ``u``, which lets
  the lowest stratum reach ``eps / n``); this bounds the loss weight ``1 / t`` by ``1 / eps``
  (bard_spec.md section 10.9).
* ``mixed`` (the paper's mask + uniform noise): with ``phi = pi t / 2`` a token becomes
  ``[MASK]`` / a uniform substitute / stays, with weights ``1 - cos phi``,
  ``sin phi + cos phi - 1``, ``1 - sin phi`` (each clamped to ``[0.001, 1]``, then
  renormalised). Substitutes are drawn from ``substitute_ids`` (no added, special, vision or
  mask ids, D11: :func:`tokenizer_substitute_ids`) and always differ from the clean token, so "corrupted" == "input != label".

Every random draw takes an explicit ``torch.Generator``: a step-seeded generator makes the
noise a function of the training step, which is what makes resume bit-exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

__all__ = [
    "NOISE_SCHEDULES",
    "sample_block_times",
    "mixed_probabilities",
    "substitute_vocabulary",
    "tokenizer_substitute_ids",
    "mask_noise",
    "mixed_noise",
]

NOISE_SCHEDULES = ("mask", "mixed")
# Floor of each mixed-noise channel weight (upstream's clamp).
MIXED_CHANNEL_FLOOR = 1e-3


def sample_block_times(
    num_blocks: int, eps: float = 1e-3, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Stratified timesteps ``[num_blocks]`` for the blocks of one response.

    Each of the ``num_blocks`` strata ``[i/n, (i+1)/n)`` holds exactly one block's ``t``;
    which block gets which stratum is a random permutation. Values are clamped to
    ``[eps, 1]``.
    """
    if num_blocks <= 0:
        raise ValueError(f"num_blocks must be positive, got {num_blocks}")
    if not 0.0 < eps <= 1.0:
        raise ValueError(f"eps must be in (0, 1], got {eps}")
    u = torch.rand(num_blocks, generator=generator, dtype=torch.float64)
    strata = torch.randperm(num_blocks, generator=generator).to(torch.float64)
    t = (strata + u) / num_blocks
    return t.clamp(min=eps, max=1.0).to(torch.float32)


def mixed_probabilities(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token channel probabilities ``(p_mask, p_uniform, p_keep)`` of the mixed schedule.

    Args:
        t: any shape, values in ``[0, 1]``.

    Returns:
        Three tensors shaped like ``t`` that sum to 1.
    """
    phi = t.to(torch.float32) * (math.pi / 2)
    weights = torch.stack([1 - torch.cos(phi), torch.sin(phi) + torch.cos(phi) - 1, 1 - torch.sin(phi)])
    weights = weights.clamp(min=MIXED_CHANNEL_FLOOR, max=1.0)
    weights = weights / weights.sum(0, keepdim=True)
    return weights[0], weights[1], weights[2]


def substitute_vocabulary(vocab_size: int, exclude: Iterable[int]) -> torch.Tensor:
    """Sorted ids ``[A]`` a uniform substitute may take: ``[0, vocab_size)`` minus ``exclude``.

    ``exclude`` should hold the special, vision (image / video / vision start-end) and mask
    ids (decision D11).
    """
    allowed = torch.ones(vocab_size, dtype=torch.bool)
    excluded = [i for i in set(exclude) if 0 <= i < vocab_size]
    if excluded:
        allowed[torch.tensor(excluded)] = False
    ids = allowed.nonzero().flatten()
    if ids.numel() < 2:
        raise ValueError("substitute vocabulary needs at least two ids")
    return ids


def tokenizer_substitute_ids(tokenizer, config, mask_token_id: int) -> torch.Tensor:
    """Substitutes for ``mixed`` noise: the tokenizer's ordinary vocabulary (D11).

    Excluded: every token added to the tokenizer (special or not: chat markers, ``<think>``-style
    added tokens, reserved placeholders), the tokenizer's special ids, the config's vision ids
    and the mask id. Ids beyond the tokenizer (spare embedding rows) are never drawn.
    """
    exclude = set(getattr(tokenizer, "all_special_ids", None) or [])
    exclude |= set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    for name in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        if getattr(config, name, None) is not None:
            exclude.add(int(getattr(config, name)))
    exclude.add(int(mask_token_id))
    text_config = getattr(config, "text_config", config)
    vocab = int(text_config.vocab_size) if tokenizer is None else min(len(tokenizer), int(text_config.vocab_size))
    return substitute_vocabulary(vocab, exclude)


def mask_noise(
    input_ids: torch.Tensor,
    t: torch.Tensor,
    eligible: torch.Tensor,
    mask_token_id: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Absorbing noise: each eligible token becomes ``mask_token_id`` with probability ``t``.

    Args:
        input_ids: ``[B, S]`` clean ids.
        t: ``[B, S]`` per-token timestep (its block's).
        eligible: ``[B, S]`` bool, positions that may be corrupted (the noisy copy).

    Returns:
        ``(noisy_ids [B, S], corrupted [B, S] bool)``.
    """
    draw = torch.rand(input_ids.shape, generator=generator)
    corrupted = eligible & (draw < t.to(draw.dtype))
    return torch.where(corrupted, torch.full_like(input_ids, mask_token_id), input_ids), corrupted


def mixed_noise(
    input_ids: torch.Tensor,
    t: torch.Tensor,
    eligible: torch.Tensor,
    mask_token_id: int,
    substitute_ids: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mask + uniform noise (see the module docstring for the channel weights).

    Args:
        input_ids: ``[B, S]`` clean ids.
        t: ``[B, S]`` per-token timestep.
        eligible: ``[B, S]`` bool.
        substitute_ids: ``[A]`` sorted allowed substitute ids (:func:`substitute_vocabulary`).

    Returns:
        ``(noisy_ids [B, S], masked [B, S] bool, substituted [B, S] bool)``; a substitute
        never equals the clean token.
    """
    p_mask, p_uniform, _ = mixed_probabilities(t)
    channel = torch.rand(input_ids.shape, generator=generator)
    masked = eligible & (channel < p_mask)
    substituted = eligible & ~masked & (channel < p_mask + p_uniform)

    substitute_ids = substitute_ids.to(input_ids.device)
    num_allowed = substitute_ids.numel()
    # Uniform over allowed ids other than the clean one: draw an index in a set one smaller
    # when the clean id is allowed, and map a hit on the clean id to the last allowed id.
    pos = torch.searchsorted(substitute_ids, input_ids.clamp(max=int(substitute_ids[-1])))
    clean_allowed = substitute_ids[pos.clamp(max=num_allowed - 1)] == input_ids
    span = num_allowed - clean_allowed.long()
    index = (torch.rand(input_ids.shape, generator=generator) * span).long().clamp(max=num_allowed - 1)
    drawn = substitute_ids[index]
    drawn = torch.where(clean_allowed & (drawn == input_ids), substitute_ids[-1], drawn)

    noisy = torch.where(masked, torch.full_like(input_ids, mask_token_id), input_ids)
    noisy = torch.where(substituted, drawn, noisy)
    return noisy, masked, substituted

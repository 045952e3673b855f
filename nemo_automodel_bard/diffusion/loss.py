"""The block-diffusion SFT loss: unshifted cross-entropy on corrupted tokens, weighted by 1/t.

``loss = sum_i w_i * CE(logits_i, label_i) / D``, where ``i`` runs over corrupted positions
of the noisy copy (masked, and for ``mixed`` noise also substituted), logit ``i`` predicts
token ``i`` (no shift) and:

* ``sample_mean`` (default, as upstream, bard_spec.md section 4): ``w_i = 1 / (t_i R_s)``
  with ``R_s`` the padded response length of token ``i``'s sample, and ``D`` the number of
  samples in the optimizer step over all data-parallel ranks and micro-batches. That is the
  mean over samples of a length-normalised, 1/t-weighted CE, and it is exactly the same
  number however the samples are split over ranks or accumulation steps.
* ``token_mean``: ``w_i = 1 / t_i`` and ``D`` the number of corrupted positions in the step
  (again global).

Block-padding positions (the ``<|im_end|>`` filler that rounds a response up to a multiple
of the block size) carry ``block_pad_weight`` (upstream: 0.5, it doubles their ``t``).

The 1/t variance guard lives in :func:`nemo_automodel_bard.diffusion.noise.sample_block_times`:
``t >= eps`` so ``w <= 1/eps`` (see docs/training.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["NORMALIZATIONS", "diffusion_loss_weights", "weighted_cross_entropy"]

NORMALIZATIONS = ("sample_mean", "token_mean")


def diffusion_loss_weights(
    t: torch.Tensor,
    loss_mask: torch.Tensor,
    response_len: torch.Tensor,
    block_pad: torch.Tensor,
    *,
    normalization: str = "sample_mean",
    block_pad_weight: float = 0.5,
) -> torch.Tensor:
    """Per-token loss weights ``[B, S]`` (zero outside ``loss_mask``).

    Args:
        t: ``[B, S]`` per-token timestep (> 0 on loss positions).
        loss_mask: ``[B, S]`` bool, corrupted positions of the noisy copy.
        response_len: ``[B, S]`` padded response length of each token's sample.
        block_pad: ``[B, S]`` bool, block-padding positions.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    safe_t = torch.where(loss_mask, t.to(torch.float32), torch.ones_like(t, dtype=torch.float32))
    weight = loss_mask.to(torch.float32) / safe_t
    weight = torch.where(block_pad, weight * block_pad_weight, weight)
    if normalization == "sample_mean":
        weight = weight / response_len.clamp(min=1).to(torch.float32)
    return weight


def weighted_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    denominator: float | torch.Tensor,
) -> torch.Tensor:
    """``sum_i weights_i * CE(logits_i, labels_i) / denominator``, computed in fp32.

    Args:
        logits: ``[..., V]`` unshifted logits (``[B, S, V]``, or ``[N, V]`` for the selected
            positions only).
        labels: ``[...]`` target ids (any value where the weight is 0).
        weights: ``[...]`` float weights (:func:`diffusion_loss_weights`).
        denominator: the global normaliser ``D`` (samples or loss tokens); ``0`` gives a
            zero loss that still has a graph (every rank must run backward under FSDP).
    """
    flat_logits = logits.reshape(-1, logits.shape[-1]).float()
    flat_labels = labels.reshape(-1).clamp(min=0)
    ce = F.cross_entropy(flat_logits, flat_labels, reduction="none")
    total = (ce * weights.reshape(-1).to(ce.dtype)).sum()
    denominator = float(denominator)
    return total / denominator if denominator > 0 else total * 0.0

"""The LM head and its loss over the scored positions, ``chunk_tokens`` rows at a time.

With Qwen3-VL's vocabulary (151,936) the logits of 8k loss positions and the loss's fp32
intermediates are 7-12 GiB (docs/benchmarks.md, "Training memory"). Here each chunk's
logits are computed, reduced to a few loss terms and freed; backward recomputes them one
chunk at a time (``torch.utils.checkpoint``), so the head holds ``O(chunk_tokens x V)``
instead of ``O(N x V)``. The loss is a sum over rows, so the chunks' terms add up to the
unchunked loss; the weight gradient is accumulated chunk by chunk in the weight's dtype
(exact in fp32; bf16 adds one rounding per chunk).

Both functions take the head's weight rather than the module: the model calls them inside
its forward, where FSDP2 has that weight unsharded (``BardVLForConditionalGeneration``,
``lm_head_fn``).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from nemo_automodel_bard.diffusion.distill import teacher_topk

__all__ = ["ChunkLoss", "chunked_head_loss", "chunked_teacher_topk"]

# (logits [n, V] of rows start:start+n, start) -> loss terms [T] summed over those rows.
ChunkLoss = Callable[[torch.Tensor, int], torch.Tensor]


def _check(hidden: torch.Tensor, weight: torch.Tensor, chunk_tokens: int) -> None:
    if chunk_tokens <= 0:
        raise ValueError(f"chunk_tokens must be a positive number of rows, got {chunk_tokens}")
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[-1] != weight.shape[-1]:
        raise ValueError(
            f"hidden must be [N, H] and the head weight [V, H]; got {tuple(hidden.shape)} and {tuple(weight.shape)}"
        )


def chunked_head_loss(
    hidden: torch.Tensor, weight: torch.Tensor, chunk_loss: ChunkLoss, chunk_tokens: int
) -> torch.Tensor:
    """``sum over chunks of chunk_loss(hidden[chunk] @ weight.T, start)``, logits recomputed in backward.

    Args:
        hidden: ``[N, H]`` final hidden states of the scored positions.
        weight: ``[V, H]`` LM-head weight (no bias).
        chunk_loss: maps one chunk's logits (in the weight's dtype, as ``lm_head`` returns
            them) and its first row to loss terms ``[T]`` summed over its rows (e.g. SWD's
            CE and KL); every call must return the same ``T``.
        chunk_tokens: rows per chunk (> 0).

    Returns:
        ``[T]`` fp32, the terms summed over all rows (zeros with a graph when ``N == 0``).
    """
    _check(hidden, weight, chunk_tokens)

    def run(rows: torch.Tensor, w: torch.Tensor, start: int) -> torch.Tensor:
        return chunk_loss(F.linear(rows, w), start).float()

    if hidden.shape[0] == 0:  # every rank runs backward under FSDP: keep a graph to the weight
        return run(hidden, weight, 0) * 0.0
    recompute = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    total = None
    for start in range(0, hidden.shape[0], chunk_tokens):
        rows = hidden[start : start + chunk_tokens]
        terms = checkpoint(run, rows, weight, start, use_reentrant=False) if recompute else run(rows, weight, start)
        total = terms if total is None else total + terms
    return total


@torch.no_grad()
def chunked_teacher_topk(
    hidden: torch.Tensor, weight: torch.Tensor, chunk_tokens: int, *, top_k: int, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's :func:`~nemo_automodel_bard.diffusion.distill.teacher_topk` of ``hidden @ weight.T``, by chunks.

    Returns:
        ``(log_probs, index)``, both ``[N, k]``, without ever holding ``[N, V]`` logits.
    """
    _check(hidden, weight, chunk_tokens)
    parts = [
        teacher_topk(F.linear(hidden[start : start + chunk_tokens], weight), top_k=top_k, temperature=temperature)
        for start in range(0, max(hidden.shape[0], 1), chunk_tokens)
    ]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

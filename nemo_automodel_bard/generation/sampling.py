"""Token proposals and remasking decisions for one denoising step (pure tensor functions).

"Remasking" follows upstream's naming: decoded tokens are never revised; each step *commits*
some of the still-masked positions and leaves the rest masked (bard_spec.md section 7, D6).
"""

from __future__ import annotations

import torch

__all__ = ["REMASKING_STRATEGIES", "num_transfer_tokens", "propose_tokens", "select_commits"]

REMASKING_STRATEGIES = ("low_confidence_static", "low_confidence_dynamic")


def num_transfer_tokens(block_size: int, denoising_steps: int) -> list[int]:
    """Static per-step commit counts: ``block_size // steps`` each, one more for the first
    ``block_size % steps`` steps, so the block finishes in exactly ``denoising_steps`` steps."""
    base, extra = divmod(block_size, denoising_steps)
    return [base + (1 if step < extra else 0) for step in range(denoising_steps)]


def propose_tokens(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_k: int,
    top_p: float,
    banned: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Proposed token and its confidence for every position.

    Args:
        logits: ``[N, L, V]`` (any dtype; upcast to fp32 here, D6).
        banned: ``[K]`` token ids that may never be proposed (the mask token, ...).

    Returns:
        ``tokens [N, L]`` (argmax when ``temperature == 0``, else a draw from the tempered,
        top-k / top-p filtered distribution) and ``confidence [N, L]`` fp32, the probability of
        the proposed token under the distribution it was chosen from.
    """
    logits = logits.float()
    if banned is not None and banned.numel():
        logits = logits.index_fill(-1, banned.to(logits.device), float("-inf"))
    if temperature == 0:  # argmax of the softmax = argmax of the logits
        probs = logits.softmax(-1)
        confidence, tokens = probs.max(-1)
        return tokens, confidence
    logits = logits / temperature
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token once the mass before it already reaches top_p (the first token over
        # the threshold is kept).
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(-1)
    flat = probs.reshape(-1, probs.shape[-1])
    tokens = torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])
    confidence = probs.gather(-1, tokens[..., None])[..., 0]
    return tokens, confidence


def select_commits(
    confidence: torch.Tensor,
    masked: torch.Tensor,
    k_step: torch.Tensor | int,
    *,
    strategy: str,
    threshold: float,
) -> torch.Tensor:
    """Which masked positions to commit this step.

    Args:
        confidence: ``[N, L]`` fp32 confidence of the proposals.
        masked: ``[N, L]`` bool, positions still masked (only these can be committed).
        k_step: ``[N]`` int (or one int for all), this step's static count for each sample.
        strategy: ``low_confidence_static``: the ``min(k_step, #masked)`` most confident masked
            positions. ``low_confidence_dynamic`` (D6, as upstream): the masked positions with
            confidence strictly above ``threshold`` if there are at least ``k_step`` of them,
            otherwise fall back to the static choice. Either way at least ``k_step`` tokens are
            committed per step, so a block still finishes within its step budget.

    Returns:
        ``[N, L]`` bool commit mask (a subset of ``masked``).
    """
    scores = confidence.masked_fill(~masked, float("-inf"))
    # Rank in descending confidence (ties: lower index first), by sorting twice. Masked
    # positions (confidence >= 0) rank before the others (-inf): the top min(k_step, #masked)
    # are the masked positions ranked below k_step.
    rank = scores.argsort(dim=-1, descending=True, stable=True).argsort(dim=-1)
    if isinstance(k_step, int):
        static = (rank < k_step) & masked
    else:
        static = rank < torch.minimum(k_step, masked.sum(-1))[:, None]
    if strategy == "low_confidence_static":
        return static
    if strategy != "low_confidence_dynamic":
        raise ValueError(f"remasking_strategy must be one of {REMASKING_STRATEGIES}, got {strategy!r}")
    confident = scores > threshold  # only masked positions (the rest are -inf)
    enough = confident.sum(-1) >= k_step
    return torch.where(enough[:, None], confident, static)

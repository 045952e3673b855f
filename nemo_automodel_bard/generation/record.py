"""Device-side record of a ``generate``: kept tokens and per-sample step statistics.

Every block's results are written into preallocated tensors indexed by sample (rows may be
dropped as they finish), so nothing leaves the device until :meth:`DecodeRecord.finish`.
"""

from __future__ import annotations

import torch

from nemo_automodel_bard.generation.stats import StepStats

__all__ = ["DecodeRecord", "block_kept_length"]


def block_kept_length(block_tokens: torch.Tensor, eos: torch.Tensor, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kept [N], has_eos [N])``: tokens of a finished block that reach the output (up to and
    including the first EOS, at most ``limit``), and whether that EOS is there."""
    index = torch.arange(block_tokens.shape[1], device=block_tokens.device)
    is_eos = torch.isin(block_tokens, eos) & (index < limit)
    has_eos = is_eos.any(-1)
    first = is_eos.int().argmax(-1)  # first maximum: the first EOS when there is one
    return torch.where(has_eos, first + 1, limit), has_eos


class DecodeRecord:
    """Output tokens and step statistics of ``n`` samples over ``n_blocks`` blocks.

    Args:
        max_steps: upper bound on a block's denoising steps (columns of the per-forward counts).
        pad_id: id written after a sample's end (its first EOS id).
    """

    def __init__(self, n: int, n_blocks: int, block_size: int, max_steps: int, pad_id: int, device) -> None:
        self.block_size, self.pad_id = block_size, pad_id
        self.tokens = torch.full((n, n_blocks * block_size), pad_id, dtype=torch.long, device=device)
        self.length = torch.zeros(n, dtype=torch.long, device=device)
        self.decoded = torch.zeros(n, n_blocks, dtype=torch.bool, device=device)
        self.block_steps = torch.zeros(n, n_blocks, dtype=torch.long, device=device)
        self.per_forward = torch.zeros(n, n_blocks, max_steps, dtype=torch.long, device=device)

    def add_block(
        self,
        b: int,
        sample: torch.Tensor,
        alive: torch.Tensor,
        block_tokens: torch.Tensor,
        kept: torch.Tensor,
        steps: torch.Tensor,
        commit_step: torch.Tensor,
    ) -> None:
        """Record block ``b`` of the rows (``sample [N]`` their batch index; rows with ``alive``
        False had finished before this block and record nothing)."""
        B = self.block_size
        index = torch.arange(B, device=block_tokens.device)
        keep = alive[:, None] & (index < kept[:, None])
        self.tokens[sample, b * B : (b + 1) * B] = torch.where(keep, block_tokens, self.pad_id)
        self.length.index_add_(0, sample, torch.where(alive, kept, 0))
        self.decoded[sample, b] = alive
        self.block_steps[sample, b] = torch.where(alive, steps, 0)
        step_ids = torch.arange(self.per_forward.shape[-1], device=block_tokens.device)
        # Tokens each step committed among the kept positions (a commit step of -1 matches none).
        counts = ((commit_step[:, :, None] == step_ids) & keep[:, :, None]).sum(1)
        self.per_forward[sample, b] = counts

    def finish(self, batch_forwards: int) -> tuple[torch.Tensor, StepStats]:
        """``(ids [n, max length], StepStats)``; the only device-to-host copies of the record."""
        lengths = self.length.tolist()
        decoded, block_steps, per_forward = self.decoded.tolist(), self.block_steps.tolist(), self.per_forward.tolist()
        stats = StepStats(batch_forwards=batch_forwards)
        for s in range(len(lengths)):
            blocks = [b for b, done in enumerate(decoded[s]) if done]
            stats.block_steps.append([block_steps[s][b] for b in blocks])
            stats.tokens_per_forward.append(
                [count for b in blocks for count in per_forward[s][b][: block_steps[s][b]]]
            )
        return self.tokens[:, : max(lengths)], stats

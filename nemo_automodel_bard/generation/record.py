"""Device-side record of a ``generate``: committed tokens and commit steps, per sample.

Each block costs the decoder three in-place writes (tokens, the step each position was
committed at, whether the sample decoded the block); output lengths, EOS truncation and the
per-sample step statistics are derived once, in :meth:`DecodeRecord.finish`, so nothing
leaves the device until then and the per-block work stays a few small ops.
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
        max_new_tokens: the response budget (the last block may be decoded past it).
        eos: ``[K]`` EOS ids; the output ends after the first one. The first is also the pad
            id written after a sample's end.
    """

    def __init__(
        self,
        n: int,
        n_blocks: int,
        block_size: int,
        max_steps: int,
        max_new_tokens: int,
        eos: torch.Tensor,
        with_stats: bool = True,
    ) -> None:
        device = eos.device
        self.block_size, self.max_steps, self.max_new_tokens, self.eos = block_size, max_steps, max_new_tokens, eos
        self.tokens = torch.zeros(n, n_blocks * block_size, dtype=torch.long, device=device)
        self.decoded = torch.zeros(n, n_blocks, dtype=torch.bool, device=device)
        self.commit_step = (
            torch.full((n, n_blocks, block_size), -1, dtype=torch.long, device=device) if with_stats else None
        )

    def add_block(
        self,
        b: int,
        sample: torch.Tensor | None,
        alive: torch.Tensor,
        block_tokens: torch.Tensor,
        commit_step: torch.Tensor | None,
    ) -> None:
        """Record block ``b`` of the rows: ``sample [N]`` their batch index (None: row i is
        sample i); rows with ``alive`` False had finished before this block and record nothing;
        ``commit_step [N, B]`` is needed only when the record keeps statistics."""
        columns = slice(b * self.block_size, (b + 1) * self.block_size)
        if sample is None:
            self.tokens[:, columns].copy_(block_tokens)
            self.decoded[:, b].copy_(alive)
            if self.commit_step is not None:
                self.commit_step[:, b].copy_(commit_step)
            return
        self.tokens[sample, columns] = block_tokens
        self.decoded[sample, b] = alive
        if self.commit_step is not None:
            self.commit_step[sample, b] = commit_step

    def finish(self, batch_forwards: int) -> tuple[torch.Tensor, StepStats | None]:
        """``(ids [n, max length], StepStats or None)``; the only device-to-host copies of the record."""
        n, n_blocks = self.decoded.shape
        B = self.block_size
        index = torch.arange(n_blocks * B, device=self.tokens.device)
        # Decoded blocks are a prefix of each row; the output ends at the budget or the first EOS.
        valid = self.decoded.repeat_interleave(B, dim=1) & (index < self.max_new_tokens)
        is_eos = torch.isin(self.tokens, self.eos) & valid
        has_eos = is_eos.any(-1)
        length = torch.where(has_eos, is_eos.int().argmax(-1) + 1, valid.sum(-1))
        keep = index < length[:, None]
        tokens = torch.where(keep, self.tokens, self.eos[0])
        if self.commit_step is None:
            return tokens[:, : int(length.max())], None
        # A block's steps: until its last kept position was committed (commits are final).
        kept_step = self.commit_step.masked_fill(~keep.view(n, n_blocks, B), -1)
        block_steps = kept_step.amax(-1) + 1
        step_ids = torch.arange(self.max_steps, device=self.tokens.device)
        per_forward = (kept_step[..., None] == step_ids).sum(2)  # [n, n_blocks, max_steps]
        lengths = length.tolist()
        decoded, steps, counts = self.decoded.tolist(), block_steps.tolist(), per_forward.tolist()
        stats = StepStats(batch_forwards=batch_forwards)
        for s in range(n):
            blocks = [b for b, done in enumerate(decoded[s]) if done]
            stats.block_steps.append([steps[s][b] for b in blocks])
            stats.tokens_per_forward.append([c for b in blocks for c in counts[s][b][: steps[s][b]]])
        return tokens[:, : max(lengths, default=0)], stats

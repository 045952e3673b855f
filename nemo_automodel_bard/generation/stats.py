"""Per-sample decoding statistics (``generate(..., return_step_stats=True)``).

Every model forward counts (decision D7): the prefill is fused with block 0's first denoising
step and each block's commit with the next block's first step, so a sample's forwards equal
its denoising steps. Tokens count only up to (and including) the sample's EOS and
``max_new_tokens``; upstream counted mask-free tokens after EOS and skipped the prefill and
commit forwards, overstating tokens per forward (bard_spec.md section 10, item 7).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["StepStats"]


@dataclass
class StepStats:
    """Decoding statistics of a batch, one entry per sample (in batch order).

    Attributes:
        block_steps: ``[sample][block]`` denoising steps (= forwards) the sample spent on each
            block it decoded; identical to what it would spend decoding alone.
        tokens_per_forward: ``[sample][forward]`` tokens each of the sample's forwards
            committed, counted up to EOS / ``max_new_tokens``; sums to the output length.
        batch_forwards: model forwards actually run for the whole batch (samples that wait
            for a slower neighbour's block, or are finished, take no steps of their own).
    """

    block_steps: list[list[int]] = field(default_factory=list)
    tokens_per_forward: list[list[int]] = field(default_factory=list)
    batch_forwards: int = 0

    @property
    def num_tokens(self) -> list[int]:
        """Response tokens per sample (up to and including EOS)."""
        return [sum(per_forward) for per_forward in self.tokens_per_forward]

    @property
    def num_forwards(self) -> list[int]:
        """Forwards each sample needed (its own denoising steps)."""
        return [sum(steps) for steps in self.block_steps]

    @property
    def tpf(self) -> list[float]:
        """Tokens per forward per sample."""
        return [t / f if f else 0.0 for t, f in zip(self.num_tokens, self.num_forwards)]

    @property
    def total_tokens(self) -> int:
        return sum(self.num_tokens)

    @property
    def total_forwards(self) -> int:
        return sum(self.num_forwards)

    @property
    def mean_tpf(self) -> float:
        """Total tokens / total per-sample forwards (for batch 1: tokens / forwards)."""
        return self.total_tokens / self.total_forwards if self.total_forwards else 0.0

    def to_dict(self) -> dict:
        """JSON-ready dict with the per-sample lists and the totals."""
        out = asdict(self)
        out.update(
            num_tokens=self.num_tokens,
            num_forwards=self.num_forwards,
            tpf=self.tpf,
            total_tokens=self.total_tokens,
            total_forwards=self.total_forwards,
            mean_tpf=self.mean_tpf,
        )
        return out

"""DecodeRecord: output lengths, EOS padding and step statistics against a plain-Python reference."""

from __future__ import annotations

import pytest
import torch

from nemo_automodel_bard.generation.record import DecodeRecord

EOS = 7


def _reference(blocks, max_new_tokens):
    """Per sample: blocks = list of (tokens, commit_steps) actually decoded, in order."""
    out, block_steps, per_forward = [], [], []
    for sample_blocks in blocks:
        tokens, steps, counts = [], [], []
        for block_tokens, commit in sample_blocks:
            kept = []
            for token, step in zip(block_tokens, commit):
                if len(tokens) + len(kept) >= max_new_tokens or (kept and kept[-1][0] == EOS):
                    break
                kept.append((token, step))
            n_steps = max(step for _, step in kept) + 1
            steps.append(n_steps)
            counts += [sum(step == s for _, step in kept) for s in range(n_steps)]
            tokens += [token for token, _ in kept]
            if tokens[-1] == EOS:
                break
        out.append(tokens)
        block_steps.append(steps)
        per_forward.append(counts)
    return out, block_steps, per_forward


@pytest.mark.parametrize("with_stats", [True, False])
@pytest.mark.parametrize("dropped", [False, True])
def test_finish_matches_a_plain_reference(with_stats, dropped):
    gen = torch.Generator().manual_seed(0)
    n, n_blocks, B, max_steps, max_new = 4, 3, 4, 5, 10
    record = DecodeRecord(n, n_blocks, B, max_steps, max_new, torch.tensor([EOS]), with_stats)
    decoded = [[] for _ in range(n)]
    alive = torch.ones(n, dtype=torch.bool)
    for b in range(n_blocks):
        tokens = torch.randint(0, 9, (n, B), generator=gen)  # EOS (7) appears now and then
        commit = torch.randint(0, max_steps, (n, B), generator=gen)
        sample = torch.arange(n).flip(0) if dropped else None  # physical row i holds sample n-1-i
        rows = sample if dropped else torch.arange(n)
        record.add_block(b, sample, alive[rows], tokens, commit if with_stats else None)
        for i, s in enumerate(rows.tolist()):
            if alive[s]:
                decoded[s].append((tokens[i].tolist(), commit[i].tolist()))
                if EOS in tokens[i, : max_new - b * B].tolist():
                    alive[s] = False
    ids, stats = record.finish(batch_forwards=11)
    expected, block_steps, per_forward = _reference(decoded, max_new)
    assert ids.shape[1] == max(len(t) for t in expected)
    for s in range(n):
        row = ids[s].tolist()
        assert row[: len(expected[s])] == expected[s]
        assert all(t == EOS for t in row[len(expected[s]) :])  # padded with the EOS id
    if with_stats:
        assert stats.block_steps == block_steps
        assert stats.tokens_per_forward == per_forward
        assert stats.batch_forwards == 11
    else:
        assert stats is None

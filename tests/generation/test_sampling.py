"""Remasking decisions and token proposals on hand-made confidences / logits."""

from __future__ import annotations

import torch

from nemo_automodel_bard.generation.sampling import num_transfer_tokens, propose_tokens, select_commits


def test_static_schedule_sums_to_block_size():
    for block_size in (1, 4, 7, 32):
        for steps in range(1, block_size + 1):
            schedule = num_transfer_tokens(block_size, steps)
            assert sum(schedule) == block_size and len(schedule) == steps
            assert max(schedule) - min(schedule) <= 1 and schedule == sorted(schedule, reverse=True)


def test_dynamic_threshold_and_fallback():
    confidence = torch.tensor([[0.9, 0.8, 0.3, 0.95], [0.9, 0.2, 0.3, 0.1]])
    masked = torch.tensor([[True, True, True, False], [True, True, True, True]])
    k = torch.tensor([2, 2])
    commit = select_commits(confidence, masked, k, strategy="low_confidence_dynamic", threshold=0.5)
    # row 0: two masked tokens above 0.5 (>= k): exactly those; the unmasked 0.95 is never committed.
    assert commit[0].tolist() == [True, True, False, False]
    # row 1: only one above the threshold (< k): fall back to the top-2 masked.
    assert commit[1].tolist() == [True, False, True, False]
    # strictly greater than the threshold (D6): 0.9 == threshold does not count.
    commit = select_commits(confidence, masked, torch.tensor([1, 1]), strategy="low_confidence_dynamic", threshold=0.9)
    assert commit[0].tolist() == [True, False, False, False]  # fallback top-1


def test_static_commits_top_k_masked_only():
    confidence = torch.tensor([[0.1, 0.7, 0.5, 0.99]])
    masked = torch.tensor([[True, True, True, False]])
    commit = select_commits(confidence, masked, torch.tensor([2]), strategy="low_confidence_static", threshold=0.0)
    assert commit.tolist() == [[False, True, True, False]]
    commit = select_commits(confidence, masked, torch.tensor([9]), strategy="low_confidence_static", threshold=0.0)
    assert commit.tolist() == [[True, True, True, False]]


def test_propose_greedy_bans_and_reports_fp32_confidence():
    logits = torch.tensor([[[0.0, 5.0, 1.0], [3.0, 0.0, 0.0]]], dtype=torch.bfloat16)
    tokens, confidence = propose_tokens(logits, temperature=0.0, top_k=0, top_p=1.0, banned=torch.tensor([1]))
    assert tokens.tolist() == [[2, 0]]
    assert confidence.dtype == torch.float32
    expected = torch.tensor([0.0, 1.0]).softmax(0)[1]  # banned token removed from the distribution
    torch.testing.assert_close(confidence[0, 0], expected)


def test_top_p_keeps_first_token_over_threshold_and_top_k():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()[None, None].expand(1, 2000, 4)
    gen = torch.Generator().manual_seed(0)
    tokens, _ = propose_tokens(logits, temperature=1.0, top_k=0, top_p=0.6, generator=gen)
    assert set(tokens.unique().tolist()) == {0, 1}  # 0.5 < 0.6 so the second token is kept too
    tokens, confidence = propose_tokens(logits, temperature=1.0, top_k=1, top_p=1.0, generator=gen)
    assert set(tokens.unique().tolist()) == {0} and torch.allclose(confidence, torch.ones(()))

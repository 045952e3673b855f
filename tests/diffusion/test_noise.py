"""Noise schedules against the formulas of bard_spec.md section 3 (statistics, not snapshots)."""

from __future__ import annotations

import math

import pytest
import torch

from nemo_automodel_bard.diffusion.noise import (
    mask_noise,
    mixed_noise,
    mixed_probabilities,
    sample_block_times,
    substitute_vocabulary,
)


def test_block_times_are_stratified_and_in_range():
    gen = torch.Generator().manual_seed(0)
    for n in (1, 3, 8):
        t = sample_block_times(n, eps=1e-3, generator=gen)
        assert t.shape == (n,)
        assert float(t.min()) >= 1e-3 and float(t.max()) <= 1.0
        # exactly one block per stratum [i/n, (i+1)/n)
        strata = torch.clamp((t * n).floor().long(), max=n - 1)
        assert sorted(strata.tolist()) == list(range(n))


def test_block_times_clamp_the_lowest_stratum_to_eps():
    gen = torch.Generator().manual_seed(1)
    draws = torch.stack([sample_block_times(64, eps=0.01, generator=gen) for _ in range(200)])
    assert float(draws.min()) == pytest.approx(0.01)  # the lowest stratum is [0, 1/64): often clamped


def test_block_times_permute_strata_over_blocks():
    gen = torch.Generator().manual_seed(2)
    firsts = torch.stack([sample_block_times(4, generator=gen)[0] for _ in range(400)])
    # block 0 lands in every stratum about a quarter of the time
    counts = torch.bincount((firsts * 4).floor().long().clamp(max=3), minlength=4).float() / 400
    assert torch.all((counts - 0.25).abs() < 0.08), counts


def test_mask_noise_rate_matches_t_and_respects_eligibility():
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(10, 100, (4, 20000))
    t = torch.tensor([0.1, 0.4, 0.7, 1.0])[:, None].expand(4, 20000)
    eligible = torch.ones_like(ids, dtype=torch.bool)
    eligible[:, :1000] = False
    noisy, corrupted = mask_noise(ids, t, eligible, mask_token_id=3, generator=gen)
    assert not corrupted[:, :1000].any()
    assert torch.equal(noisy[corrupted], torch.full_like(noisy[corrupted], 3))
    assert torch.equal(noisy[~corrupted], ids[~corrupted])
    rate = corrupted[:, 1000:].float().mean(1)
    assert torch.allclose(rate, torch.tensor([0.1, 0.4, 0.7, 1.0]), atol=0.015)


@pytest.mark.parametrize("t", [0.05, 0.3, 0.5, 0.8, 1.0])
def test_mixed_probabilities_follow_the_cosine_formulas(t):
    phi = math.pi * t / 2
    raw = [1 - math.cos(phi), math.sin(phi) + math.cos(phi) - 1, 1 - math.sin(phi)]
    clamped = [min(max(w, 1e-3), 1.0) for w in raw]
    expected = [w / sum(clamped) for w in clamped]
    got = [float(p) for p in mixed_probabilities(torch.tensor(t))]
    assert got == pytest.approx(expected, abs=1e-6)


def test_mixed_noise_channel_frequencies_and_substitutes():
    gen = torch.Generator().manual_seed(4)
    excluded = {0, 1, 2, 3, 50}
    allowed = substitute_vocabulary(64, excluded)
    assert set(allowed.tolist()) == set(range(64)) - excluded
    n = 40000
    ids = allowed[torch.randint(0, allowed.numel(), (1, n))]
    ids[0, :100] = 2  # a special clean token (not itself a substitute)
    t = torch.full((1, n), 0.5)
    eligible = torch.ones_like(ids, dtype=torch.bool)
    noisy, masked, substituted = mixed_noise(ids, t, eligible, 3, allowed, generator=gen)
    p_mask, p_uniform, _ = (float(p) for p in mixed_probabilities(torch.tensor(0.5)))
    assert masked.float().mean() == pytest.approx(p_mask, abs=0.01)
    assert substituted.float().mean() == pytest.approx(p_uniform, abs=0.01)
    assert not (masked & substituted).any()
    subs = noisy[substituted]
    assert not torch.isin(subs, torch.tensor(sorted(excluded))).any()  # D11
    assert not (subs == ids[substituted]).any()  # a substitute always differs from the clean token
    assert torch.equal(noisy[~(masked | substituted)], ids[~(masked | substituted)])
    # substitutes are uniform over the allowed ids
    counts = torch.bincount(subs, minlength=64)[allowed].float()
    assert counts.std() / counts.mean() < 0.2


def test_mixed_noise_never_touches_ineligible_tokens():
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(10, 60, (2, 500))
    eligible = torch.zeros_like(ids, dtype=torch.bool)
    noisy, masked, substituted = mixed_noise(ids, torch.ones(2, 500), eligible, 3, substitute_vocabulary(64, [3]), gen)
    assert torch.equal(noisy, ids) and not masked.any() and not substituted.any()

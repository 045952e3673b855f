"""The diffusion loss against an independent per-token, per-sample reference computation."""

from __future__ import annotations

import math

import pytest
import torch

from nemo_automodel_bard.diffusion.loss import diffusion_loss_weights, weighted_cross_entropy


def _reference(logits, labels, t, loss_mask, sample_of, response_len, block_pad, normalization, pad_weight):
    """Loops over samples and tokens with plain Python math."""
    per_sample: dict[int, float] = {}
    total, tokens = 0.0, 0
    for b in range(logits.shape[0]):
        for i in range(logits.shape[1]):
            if not loss_mask[b, i]:
                continue
            row = logits[b, i].double().tolist()
            log_z = math.log(sum(math.exp(v) for v in row))
            ce = log_z - row[int(labels[b, i])]
            w = 1.0 / float(t[b, i]) * (pad_weight if block_pad[b, i] else 1.0)
            s = int(sample_of[b, i])
            per_sample[s] = per_sample.get(s, 0.0) + w * ce / int(response_len[b, i])
            total += w * ce
            tokens += 1
    if normalization == "sample_mean":
        n_samples = int(sample_of.max()) + 1  # samples without loss tokens still count
        return sum(per_sample.values()) / n_samples
    return total / tokens


def _toy(seed=0):
    gen = torch.Generator().manual_seed(seed)
    B, S, V = 2, 12, 7
    logits = torch.randn(B, S, V, generator=gen)
    labels = torch.randint(0, V, (B, S), generator=gen)
    t = torch.rand(B, S, generator=gen).clamp(min=0.05)
    loss_mask = torch.rand(B, S, generator=gen) < 0.5
    # row 0 holds samples 0 (R=4) and 1 (R=8); row 1 holds sample 2 (R=8)
    sample_of = torch.tensor([[0] * 4 + [1] * 8, [2] * 12])
    response_len = torch.tensor([[4] * 4 + [8] * 8, [8] * 12])
    block_pad = torch.zeros(B, S, dtype=torch.bool)
    block_pad[0, 10:] = True
    return logits, labels, t, loss_mask, sample_of, response_len, block_pad


@pytest.mark.parametrize("normalization", ["sample_mean", "token_mean"])
@pytest.mark.parametrize("pad_weight", [0.5, 1.0])
def test_loss_matches_reference(normalization, pad_weight):
    logits, labels, t, loss_mask, sample_of, response_len, block_pad = _toy()
    weights = diffusion_loss_weights(
        t, loss_mask, response_len, block_pad, normalization=normalization, block_pad_weight=pad_weight
    )
    denominator = 3 if normalization == "sample_mean" else int(loss_mask.sum())
    got = weighted_cross_entropy(logits, labels, weights, denominator)
    expected = _reference(logits, labels, t, loss_mask, sample_of, response_len, block_pad, normalization, pad_weight)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_selected_logits_give_the_same_loss():
    """The recipe feeds only the loss positions' logits ([N, V]); the value must not change."""
    logits, labels, t, loss_mask, _, response_len, block_pad = _toy(1)
    weights = diffusion_loss_weights(t, loss_mask, response_len, block_pad)
    full = weighted_cross_entropy(logits, labels, weights, 3)
    kept = weighted_cross_entropy(logits[loss_mask], labels[loss_mask], weights[loss_mask], 3)
    assert torch.allclose(full, kept)


def test_split_over_micro_batches_sums_to_the_whole():
    """Global denominator: any split of the samples over micro-batches/ranks sums to the same loss."""
    logits, labels, t, loss_mask, _, response_len, block_pad = _toy(2)
    weights = diffusion_loss_weights(t, loss_mask, response_len, block_pad)
    whole = weighted_cross_entropy(logits, labels, weights, 3)
    parts = sum(weighted_cross_entropy(logits[i : i + 1], labels[i : i + 1], weights[i : i + 1], 3) for i in range(2))
    assert torch.allclose(whole, parts)


def test_zero_denominator_keeps_a_graph():
    logits = torch.randn(0, 5, requires_grad=True)
    loss = weighted_cross_entropy(logits, torch.zeros(0, dtype=torch.long), torch.zeros(0), 0)
    loss.backward()
    assert float(loss) == 0.0


def test_rejects_unknown_normalization():
    with pytest.raises(ValueError, match="normalization"):
        diffusion_loss_weights(torch.ones(1, 1), torch.ones(1, 1, dtype=torch.bool), torch.ones(1, 1),
                               torch.zeros(1, 1, dtype=torch.bool), normalization="mean")

"""The packed [prompt | clean | noisy] layout: mask vs a brute-force reference, positions, model checks."""

from __future__ import annotations

import math

import pytest
import torch

from nemo_automodel_bard.diffusion.layout import (
    IGNORE_INDEX,
    apply_noise,
    collate_layout,
    layout_attention_mask,
    layout_position_ids,
    pack_samples,
)
from nemo_automodel_bard.testing import TINY_IDS, tiny_model, tiny_processor, vision_sample

PAD_ID = TINY_IDS["eos"]


def _reference_mask(samples_per_row, width, block_size, causal_prompt):
    """Rules of the issue, written per token pair from (doc, region, index) descriptions."""
    masks = []
    for row in samples_per_row:
        tokens = []  # (doc, region, index, block) with region in P/C/N, or None for padding
        for doc, (prompt_len, response_len) in enumerate(row):
            padded = max(1, math.ceil(response_len / block_size)) * block_size
            first = math.ceil(prompt_len / block_size)
            tokens += [(doc, "P", i, i // block_size) for i in range(prompt_len)]
            tokens += [(doc, "C", r, first + r // block_size) for r in range(padded)]
            tokens += [(doc, "N", r, first + r // block_size) for r in range(padded)]
        tokens += [None] * (width - len(tokens))
        mask = torch.zeros(width, width, dtype=torch.bool)
        for q, tq in enumerate(tokens):
            for k, tk in enumerate(tokens):
                if tq is None:
                    mask[q, k] = q == k
                    continue
                if tk is None or tq[0] != tk[0]:
                    continue
                (_, rq, iq, bq), (_, rk, ik, bk) = tq, tk
                if rq in "PC":
                    if rk == "N":
                        allowed = False  # clean never attends noisy (D4)
                    elif causal_prompt and rq == "P" and rk == "P":
                        allowed = ik <= iq
                    else:
                        allowed = bk <= bq
                else:  # noisy query of block bq
                    allowed = rk == "P" or (rk == "C" and bk < bq) or (rk == "N" and bk == bq)
                mask[q, k] = allowed
        masks.append(mask)
    return torch.stack(masks)


def _plain_sample(prompt_len, response_len, seed):
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(20, 90, (prompt_len,), generator=gen)
    prompt[2:6] = TINY_IDS["image"]  # a vision span inside the prompt
    mm = (prompt == TINY_IDS["image"]).long()
    return {"prompt_ids": prompt, "response_ids": torch.randint(20, 90, (response_len,), generator=gen),
            "mm_token_type_ids": mm}


@pytest.mark.parametrize("block_size", [2, 4])
@pytest.mark.parametrize("causal_prompt", [False, True])
def test_mask_matches_brute_force(block_size, causal_prompt):
    shapes = [(9, 5), (7, 3), (6, 8)]  # partial prompt blocks, block padding
    samples = [_plain_sample(p, r, i) for i, (p, r) in enumerate(shapes)]
    batch = collate_layout(samples, block_size=block_size, pad_token_id=PAD_ID, pack_size=64, pad_to_multiple_of=8)
    rows = pack_samples([int(s["prompt_ids"].numel()) + 2 * max(1, math.ceil(int(s["response_ids"].numel()) / block_size)) * block_size for s in samples], 64)
    assert len(rows) < len(samples)  # something was really packed
    width = batch["input_ids"].shape[1]
    assert (batch["segment"] == -1).any()  # and there is padding
    expected = _reference_mask([[shapes[i] for i in row] for row in rows], width, block_size, causal_prompt)
    got = layout_attention_mask(batch, block_size, causal_prompt=causal_prompt) == 0
    assert got.shape == (len(rows), 1, width, width)
    assert torch.equal(got[:, 0], expected)


def test_layout_rows_hold_prompt_clean_noisy_and_labels():
    sample = _plain_sample(5, 6, 0)
    batch = collate_layout([sample], block_size=4, pad_token_id=PAD_ID)
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    response = torch.cat([sample["response_ids"], torch.full((2,), PAD_ID)])
    assert torch.equal(ids, torch.cat([sample["prompt_ids"], response, response]))
    assert torch.equal(labels[:13], torch.full((13,), IGNORE_INDEX)) and torch.equal(labels[13:], response)
    assert batch["block_pad"][0].nonzero().flatten().tolist() == [19, 20]
    assert batch["samples"].tolist() == [[0, 0, 5, 8]] and batch["num_samples"] == 1


def test_noise_touches_only_the_noisy_copy_and_sets_labels():
    samples = [_plain_sample(9, 5, 1), _plain_sample(7, 11, 2)]
    batch = collate_layout(samples, block_size=4, pad_token_id=PAD_ID, pack_size=128)
    noised = apply_noise(batch, block_size=4, mask_token_id=TINY_IDS["mask"], generator=torch.Generator().manual_seed(0))
    changed = noised["input_ids"] != batch["input_ids"]
    assert torch.all(batch["segment"][changed] == 2)
    assert torch.equal(changed, noised["loss_mask"])
    assert torch.equal(noised["labels"] != IGNORE_INDEX, noised["loss_mask"])
    # one t per block, constant inside a block, zero off the noisy copy
    t, seg = noised["t"], batch["segment"]
    assert torch.all(t[seg != 2] == 0) and torch.all(t[seg == 2] > 0)
    for row, start, p, r in batch["samples"].tolist():
        blocks = t[row, start + p + r : start + p + 2 * r].reshape(-1, 4)
        assert torch.all(blocks == blocks[:, :1])


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()




def _inputs(model, batch, block_size=4):
    return dict(
        input_ids=batch["input_ids"],
        position_ids=layout_position_ids(batch, model.rope_positions),
        attention_mask=layout_attention_mask(batch, block_size),
        pixel_values=batch["pixel_values"],
        image_grid_thw=batch["image_grid_thw"],
    )


def test_noisy_positions_reuse_clean_positions_and_restart_per_sample(processor):
    model = tiny_model()
    samples = [vision_sample(processor, "hi there", "an answer", 0), vision_sample(processor, "what?", "ok", 1)]
    packed = collate_layout(samples, block_size=4, pad_token_id=PAD_ID, pack_size=256)
    pos = layout_position_ids(packed, model.rope_positions)
    for s, (row, start, p, r) in enumerate(packed["samples"].tolist()):
        clean, noisy = pos[:, row, start + p : start + p + r], pos[:, row, start + p + r : start + p + 2 * r]
        assert torch.equal(clean, noisy)
        alone, _ = model.rope_positions(samples[s]["prompt_ids"][None], samples[s]["mm_token_type_ids"][None],
                                        samples[s]["image_grid_thw"])
        assert torch.equal(pos[:, row, start : start + p], alone[:, 0])  # restart, vision grid ids included


@torch.no_grad()
def test_perturbing_noisy_tokens_leaves_clean_logits_unchanged(processor):
    model = tiny_model()
    samples = [vision_sample(processor, "describe", "a small red box", 0), vision_sample(processor, "q", "yes", 1)]
    batch = collate_layout(samples, block_size=4, pad_token_id=PAD_ID, pack_size=256)
    base = model(**_inputs(model, batch)).logits
    perturbed = dict(batch)
    noisy = batch["segment"] == 2
    perturbed["input_ids"] = torch.where(noisy, torch.randint(20, 90, noisy.shape), batch["input_ids"])
    out = model(**_inputs(model, perturbed)).logits
    known = (batch["segment"] == 0) | (batch["segment"] == 1)
    assert torch.allclose(base[known], out[known], atol=1e-5)
    assert not torch.allclose(base[noisy], out[noisy], atol=1e-3)  # the test can fail


@torch.no_grad()
def test_packed_sample_logits_equal_the_sample_alone(processor):
    model = tiny_model()
    samples = [vision_sample(processor, "first question", "answer one", 2), vision_sample(processor, "b", "two!", 3)]
    packed = collate_layout(samples, block_size=4, pad_token_id=PAD_ID, pack_size=512)
    alone = collate_layout(samples, block_size=4, pad_token_id=PAD_ID)  # one per row, right-padded
    assert packed["input_ids"].shape[0] == 1 and alone["input_ids"].shape[0] == 2
    packed_logits = model(**_inputs(model, packed)).logits
    alone_logits = model(**_inputs(model, alone)).logits
    for s, (row, start, p, r) in enumerate(packed["samples"].tolist()):
        n = p + 2 * r
        assert torch.allclose(packed_logits[row, start : start + n], alone_logits[s, :n], atol=1e-4)


@pytest.mark.parametrize("block_size", [1, 2, 4, 32])
def test_max_layout_length_is_the_brute_force_worst_case(block_size):
    from nemo_automodel_bard.diffusion.layout import largest_max_length, layout_length, max_layout_length

    for max_length in (2, 3, 7, 64, 257, 1000):
        worst = max(layout_length(max_length - r, r, block_size) for r in range(1, max_length))
        assert max_layout_length(max_length, block_size) == worst
    for pack_size in (16, 100, 8192):
        best = largest_max_length(pack_size, block_size)
        if best == 0:  # not even a 1-token prompt and a 1-token response fit
            assert max_layout_length(2, block_size) > pack_size
        else:
            assert max_layout_length(best, block_size) <= pack_size < max_layout_length(best + 1, block_size)

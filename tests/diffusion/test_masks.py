"""diffusion/masks.py against a brute-force reference written from the rules in prose.

The reference loops over (query, key) pairs of explicitly described samples
([prompt | clean | noisy] or an inference row) and never uses the tensor code.
"""

from __future__ import annotations

import math

import pytest
import torch

from nemo_automodel_bard.diffusion.masks import (
    CLEAN,
    NOISY,
    PAD,
    PREFIX,
    block_diffusion_mask,
    layout_block_ids,
    sample_block_ids,
    to_additive_mask,
)


def _training_row(samples, block_size, pad_to):
    """Per-token dicts for packed samples laid out as [prompt | clean | noisy] each."""
    row = []
    for doc, (prompt_len, response_len) in enumerate(samples):
        for i in range(prompt_len):
            row.append(dict(doc=doc, kind="prompt", idx=i, P=prompt_len))
        for kind in ("clean", "noisy"):
            for r in range(response_len):
                row.append(dict(doc=doc, kind=kind, idx=r, P=prompt_len))
    row += [dict(doc=-1, kind="pad", idx=0, P=0)] * (pad_to - len(row))
    return row


def _reference_allowed(q, k, qi, ki, block_size, causal_prompt):
    """The visibility rules, pair by pair."""
    if q["kind"] == "pad":
        return qi == ki
    if k["kind"] == "pad" or q["doc"] != k["doc"]:
        return False
    B = block_size
    q_resp_block = q["idx"] // B  # block index inside the response
    k_resp_block = k["idx"] // B
    if q["kind"] == "prompt":
        if k["kind"] != "prompt":
            return False
        return k["idx"] <= q["idx"] if causal_prompt else k["idx"] // B <= q["idx"] // B
    if q["kind"] == "clean":
        if k["kind"] == "prompt":
            return True
        if k["kind"] == "clean":
            return k_resp_block <= q_resp_block
        return False  # clean never sees noisy (D4)
    # noisy query
    if k["kind"] == "prompt":
        return True
    if k["kind"] == "clean":
        return k_resp_block < q_resp_block
    return k_resp_block == q_resp_block


def _layout_tensors(row, block_size):
    kinds = {"prompt": PREFIX, "clean": CLEAN, "noisy": NOISY, "pad": PAD}
    segment = torch.tensor([[kinds[t["kind"]] for t in row]])
    offset = torch.tensor([[t["idx"] for t in row]])
    prompt_len = torch.tensor([[t["P"] for t in row]])
    doc = torch.tensor([[t["doc"] for t in row]])
    block = layout_block_ids(segment, offset, prompt_len, block_size)
    return segment, block, doc


@pytest.mark.parametrize("block_size", [1, 2, 4])
@pytest.mark.parametrize("causal_prompt", [False, True])
def test_packed_training_mask_matches_brute_force(block_size, causal_prompt):
    # Two packed samples (prompt not a multiple of the block size) and trailing padding.
    samples = [(5, 4), (3, 8)]
    row = _training_row(samples, block_size, pad_to=40)
    segment, block, doc = _layout_tensors(row, block_size)
    mask = block_diffusion_mask(segment, block, doc, causal_prompt=causal_prompt)[0]
    expected = torch.tensor(
        [[_reference_allowed(q, k, qi, ki, block_size, causal_prompt) for ki, k in enumerate(row)] for qi, q in enumerate(row)]
    )
    assert torch.equal(mask, expected)


def test_inference_row_matches_training_rules():
    """Left padding + prompt + committed blocks + the block being denoised."""
    B, P = 4, 6
    row = [dict(doc=0, kind="pad", idx=0, P=0)] * 3
    row += [dict(doc=0, kind="prompt", idx=i, P=P) for i in range(P)]
    row += [dict(doc=0, kind="clean", idx=r, P=P) for r in range(2 * B)]  # two committed blocks
    row += [dict(doc=0, kind="noisy", idx=2 * B + r, P=P) for r in range(B)]
    segment, block, _ = _layout_tensors(row, B)
    mask = block_diffusion_mask(segment, block)[0]
    for qi, q in enumerate(row):
        for ki, k in enumerate(row):
            want = qi == ki if q["kind"] == "pad" else (k["kind"] != "pad" and _reference_allowed(q, k, qi, ki, B, False))
            assert bool(mask[qi, ki]) == want, (qi, ki, q, k)


def test_sample_block_ids_layout():
    ids = sample_block_ids(prompt_len=5, response_len=6, block_size=4)
    first = math.ceil(5 / 4)
    assert ids.tolist() == [0, 0, 0, 0, 1] + [first, first, first, first, first + 1, first + 1]


def test_layout_block_ids_rebuilds_for_another_block_size():
    # The SWD anchor re-blocks the student's row: ids must equal a fresh layout at B=2.
    row = _training_row([(5, 8)], block_size=8, pad_to=24)
    segment, _, _ = _layout_tensors(row, 8)
    offset = torch.tensor([[t["idx"] for t in row]])
    prompt_len = torch.tensor([[t["P"] for t in row]])
    ids = layout_block_ids(segment, offset, prompt_len, 2)[0]
    fresh = sample_block_ids(5, 8, 2)
    assert ids[:13].tolist() == fresh.tolist()  # prompt + clean
    assert ids[13:21].tolist() == fresh[5:].tolist()  # noisy copy reuses clean ids
    assert (ids[21:] == -1).all()


def test_padding_rows_are_never_empty_and_never_attended():
    row = _training_row([(2, 2)], 2, pad_to=8)
    segment, block, doc = _layout_tensors(row, 2)
    mask = block_diffusion_mask(segment, block, doc)[0]
    assert mask.any(dim=-1).all()
    real = segment[0] != PAD
    assert not mask[real][:, ~real].any()


def test_additive_mask_softmax_agrees_with_boolean():
    row = _training_row([(3, 4)], 2, pad_to=14)
    segment, block, doc = _layout_tensors(row, 2)
    mask = block_diffusion_mask(segment, block, doc)
    scores = torch.randn(1, 1, 14, 14)
    additive = torch.softmax(scores + to_additive_mask(mask), dim=-1)
    boolean = torch.softmax(scores.masked_fill(~mask[:, None], float("-inf")), dim=-1)
    torch.testing.assert_close(additive, boolean)
    assert to_additive_mask(mask).shape == (1, 1, 14, 14)


def test_bad_shapes_and_block_size_are_refused():
    with pytest.raises(ValueError, match="segment and block"):
        block_diffusion_mask(torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="block_size"):
        sample_block_ids(3, 3, 0)


@pytest.mark.parametrize("causal_prompt", [False, True])
def test_query_start_rows_equal_the_full_mask_slice(causal_prompt):
    row = _training_row([(5, 4), (3, 8)], 4, pad_to=40)
    segment, block, doc = _layout_tensors(row, 4)
    full = block_diffusion_mask(segment, block, doc, causal_prompt=causal_prompt)
    for start in (0, 7, 39):
        part = block_diffusion_mask(segment, block, doc, causal_prompt=causal_prompt, query_start=start)
        assert torch.equal(part, full[:, start:])
    with pytest.raises(ValueError, match="query_start"):
        block_diffusion_mask(segment, block, doc, query_start=40)

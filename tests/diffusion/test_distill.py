"""diffusion/distill.py against independent references.

The KL reference works row by row in float64 from the definitions (softmax, sort, restrict,
renormalise, sum p log p/q); the AR alignment is checked on hand-written rows and on a fake
AR model whose logit at stream position p is a one-hot of the stream token p + 1.
"""

from __future__ import annotations

import math

import pytest
import torch

from nemo_automodel_bard.diffusion.distill import (
    anchor_block_ids,
    ar_block_ids,
    ar_source_index,
    gather_teacher_logits,
    topk_forward_kl,
)
from nemo_automodel_bard.diffusion.masks import CLEAN, NOISY, PAD, PREFIX, block_diffusion_mask


def _reference_kl(student_row, teacher_row, k, temperature, student_support):
    """Dense softmax of both rows, restricted to the teacher's k most likely tokens."""
    s = [x / temperature for x in student_row.double().tolist()]
    t = [x / temperature for x in teacher_row.double().tolist()]
    t_norm = math.log(sum(math.exp(x) for x in t))
    s_norm = math.log(sum(math.exp(x) for x in s))
    p_t = [math.exp(x - t_norm) for x in t]
    p_s = [math.exp(x - s_norm) for x in s]
    top = sorted(range(len(t)), key=lambda i: -p_t[i])[:k]
    z_t = sum(p_t[i] for i in top)
    z_s = sum(p_s[i] for i in top) if student_support == "topk" else 1.0
    return sum((p_t[i] / z_t) * math.log((p_t[i] / z_t) / (p_s[i] / z_s)) for i in top)


@pytest.mark.parametrize("student_support", ["topk", "full"])
@pytest.mark.parametrize("k,temperature", [(1, 1.0), (4, 1.0), (16, 1.0), (5, 2.0), (7, 0.5)])
def test_topk_kl_matches_dense_reference(k, temperature, student_support):
    gen = torch.Generator().manual_seed(k * 10 + int(temperature * 4))
    student = torch.randn(6, 23, generator=gen) * 3
    teacher = torch.randn(6, 23, generator=gen) * 3
    got = topk_forward_kl(student, teacher, top_k=k, temperature=temperature, student_support=student_support)
    want = torch.tensor(
        [_reference_kl(s, t, k, temperature, student_support) for s, t in zip(student, teacher)], dtype=torch.float64
    )
    assert got.dtype == torch.float32 and got.shape == (6,)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_topk_kl_is_zero_when_teacher_equals_student():
    logits = torch.randn(9, 40, generator=torch.Generator().manual_seed(0)) * 4
    kl = topk_forward_kl(logits, logits.clone(), top_k=16)
    torch.testing.assert_close(kl, torch.zeros(9), atol=1e-6, rtol=0)


def test_full_support_at_equality_is_minus_log_of_teacher_topk_mass():
    # Independent of the reference above: the identity KL = -log Z_T when student == teacher.
    logits = torch.randn(5, 30, generator=torch.Generator().manual_seed(1)) * 2
    probs = logits.double().softmax(-1)
    mass = probs.sort(-1, descending=True).values[:, :8].sum(-1)
    kl = topk_forward_kl(logits, logits, top_k=8, student_support="full")
    torch.testing.assert_close(kl.double(), -mass.log(), rtol=1e-5, atol=1e-6)
    # ... and 0 once the "top-k" is the whole vocabulary.
    full = topk_forward_kl(logits, logits, top_k=30, student_support="full")
    torch.testing.assert_close(full, torch.zeros(5), atol=1e-6, rtol=0)


def test_topk_kl_is_positive_and_gradient_moves_student_towards_teacher():
    gen = torch.Generator().manual_seed(3)
    teacher = torch.randn(4, 12, generator=gen) * 3
    student = torch.randn(4, 12, generator=gen, requires_grad=True)
    kl = topk_forward_kl(student, teacher, top_k=4)
    assert (kl > 0).all()
    kl.sum().backward()
    assert student.grad is not None
    moved = topk_forward_kl(student.detach() - 0.5 * student.grad, teacher, top_k=4)
    assert moved.sum() < kl.sum()


def test_topk_kl_bf16_inputs_and_bad_arguments():
    logits = torch.randn(3, 10).bfloat16()
    assert topk_forward_kl(logits, logits, top_k=3).dtype == torch.float32
    assert topk_forward_kl(logits, logits, top_k=100).shape == (3,)  # k clamped to V
    with pytest.raises(ValueError, match="temperature"):
        topk_forward_kl(logits, logits, temperature=0.0)
    with pytest.raises(ValueError, match="top_k"):
        topk_forward_kl(logits, logits, top_k=0)
    with pytest.raises(ValueError, match=r"\[N, V\]"):
        topk_forward_kl(logits, logits[:, :5])
    with pytest.raises(ValueError, match="student_support"):
        topk_forward_kl(logits, logits, student_support="dense")


# ---------------------------------------------------------------------------- alignment


def _layout(samples, pad_to=0):
    """segment/offset/prompt_len/doc rows for samples laid out as [prompt | clean | noisy]."""
    seg, off, plen, doc = [], [], [], []
    for d, (p, r) in enumerate(samples):
        for kind, n in ((PREFIX, p), (CLEAN, r), (NOISY, r)):
            seg += [kind] * n
            off += list(range(n))
            plen += [p] * n
            doc += [d] * n
    pad = pad_to - len(seg)
    seg, off, plen, doc = seg + [PAD] * pad, off + [0] * pad, plen + [0] * pad, doc + [-1] * pad
    return tuple(torch.tensor([x]) for x in (seg, off, plen, doc))


def test_ar_source_index_hand_built():
    # Sample 0: prompt 3, response 2 -> positions p0 p1 p2 | c0 c1 | n0 n1   (0..6)
    # Sample 1: prompt 2, response 3 -> positions p0 p1 | c0 c1 c2 | n0 n1 n2 (7..14), then pad (15)
    segment, offset, prompt_len, doc = _layout([(3, 2), (2, 3)], pad_to=16)
    got = ar_source_index(segment, offset, prompt_len, doc)
    want = torch.full((1, 16), -1)
    want[0, 5], want[0, 6] = 2, 3  # n0 <- last prompt token p2, n1 <- c0
    want[0, 12], want[0, 13], want[0, 14] = 8, 9, 10  # n0 <- p1 (pos 8), n1 <- c0 (9), n2 <- c1 (10)
    assert torch.equal(got, want)
    # The spec's closed form for one sample: teacher position = student position - R - 1.
    noisy = (segment == NOISY) & (doc == 0)
    assert torch.equal(got[noisy], noisy.nonzero()[:, 1] - 2 - 1)


def test_ar_source_index_does_not_depend_on_physical_order():
    segment, offset, prompt_len, doc = _layout([(2, 2), (3, 2)])
    perm = torch.randperm(segment.shape[1], generator=torch.Generator().manual_seed(0))
    shuffled = [x[:, perm] for x in (segment, offset, prompt_len, doc)]
    got = ar_source_index(*shuffled)
    base = ar_source_index(segment, offset, prompt_len, doc)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel())
    # Position q of the shuffled row is base position perm[q]; sources map the same way.
    expect = torch.where(base[:, perm] >= 0, inverse[base[:, perm].clamp(min=0)], -1)
    assert torch.equal(got, expect)


def test_ar_alignment_recovers_clean_tokens_from_a_fake_ar_model():
    """A perfect AR model (logit p = one-hot of the next stream token) must score every noisy token."""
    vocab = 50
    segment, offset, prompt_len, doc = _layout([(4, 3), (2, 5)], pad_to=24)
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 40, segment.shape, generator=gen)
    clean_of = {}
    for q in range(segment.shape[1]):
        if segment[0, q] == CLEAN:
            clean_of[(int(doc[0, q]), int(offset[0, q]))] = int(tokens[0, q])
    tokens[segment == NOISY] = 45  # the noisy copy is all mask tokens
    labels = torch.full_like(tokens, -100)
    for q in range(segment.shape[1]):
        if segment[0, q] == NOISY:
            labels[0, q] = clean_of[(int(doc[0, q]), int(offset[0, q]))]

    # The fake AR model walks each sample's [prompt | clean] stream in order.
    logits = torch.zeros(1, segment.shape[1], vocab)
    for d in range(2):
        stream = [q for q in range(segment.shape[1]) if doc[0, q] == d and segment[0, q] in (PREFIX, CLEAN)]
        for here, nxt in zip(stream, stream[1:]):
            logits[0, here, tokens[0, nxt]] = 10.0

    select = segment == NOISY
    aligned = gather_teacher_logits(logits, select, ar_source_index(segment, offset, prompt_len, doc))
    assert torch.equal(aligned.argmax(-1), labels[select])
    # Without the shift (anchor-style gather) the same logits are wrong.
    assert not torch.equal(gather_teacher_logits(logits, select).argmax(-1), labels[select])


def test_ar_mask_is_token_causal_over_prefix_and_clean():
    segment, offset, prompt_len, doc = _layout([(3, 4)])
    mask = block_diffusion_mask(segment, ar_block_ids(segment, offset, prompt_len), doc)[0]
    known = [q for q in range(segment.shape[1]) if segment[0, q] != NOISY]  # 0..6, physical = stream order
    for q in known:
        for k in range(segment.shape[1]):
            assert bool(mask[q, k]) == (k in known and k <= q), (q, k)


def test_anchor_block_ids_rebuild_the_small_block_mask():
    # Student B=4, anchor B=2, prompt 3, response 4: the anchor's noisy token 3 sees clean 0,1.
    segment, offset, prompt_len, doc = _layout([(3, 4)])
    student = block_diffusion_mask(segment, anchor_block_ids(segment, offset, prompt_len, 4), doc)[0]
    anchor = block_diffusion_mask(segment, anchor_block_ids(segment, offset, prompt_len, 2), doc)[0]
    noisy3, clean0, clean1, noisy0 = 3 + 4 + 3, 3, 4, 3 + 4
    assert anchor[noisy3, clean0] and anchor[noisy3, clean1] and not anchor[noisy3, noisy0]
    assert not student[noisy3, clean0] and student[noisy3, noisy0]


def test_gather_refuses_missing_predecessor():
    segment, offset, prompt_len, doc = _layout([(0, 2)])  # no prompt: n0 has no AR predecessor
    source = ar_source_index(segment, offset, prompt_len, doc)
    assert source[0, 2] == -1 and source[0, 3] == 0
    with pytest.raises(ValueError, match="predecessor"):
        gather_teacher_logits(torch.zeros(1, 4, 3), segment == NOISY, source)


def test_full_support_has_the_gradient_of_upstreams_cross_entropy_surrogate():
    """Upstream's KD term is -sum_k p_T,k log_softmax(student / T)[idx_k]; 'full' differs by a constant."""
    gen = torch.Generator().manual_seed(7)
    teacher = torch.randn(5, 20, generator=gen) * 2
    student = torch.randn(5, 20, generator=gen, requires_grad=True)
    k, temperature = 6, 1.5
    topk_forward_kl(student, teacher, top_k=k, temperature=temperature, student_support="full").sum().backward()
    ours = student.grad.clone()

    student.grad = None
    top, idx = teacher.topk(k, dim=-1)
    p = (top / temperature).softmax(-1)
    surrogate = -(p * (student / temperature).log_softmax(-1).gather(-1, idx)).sum()
    surrogate.backward()
    torch.testing.assert_close(ours, student.grad, rtol=1e-5, atol=1e-6)

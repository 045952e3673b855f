"""Chunked LM head + loss == the same loss on all logits at once (values and gradients, fp32).

The reference computes ``hidden @ weight.T`` for every row and applies the loss functions of
diffusion/loss.py and diffusion/distill.py to the whole ``[N, V]`` matrix (those are tested
against dense float64 references in test_loss.py / test_distill.py).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from nemo_automodel_bard.diffusion.chunked_head import chunked_head_loss, chunked_teacher_topk
from nemo_automodel_bard.diffusion.distill import teacher_topk, topk_kl_to_student
from nemo_automodel_bard.diffusion.loss import weighted_cross_entropy

N, H, V, K = 23, 6, 50, 5


def _inputs(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=gen, dtype=torch.float32).requires_grad_()
    weight = torch.randn(V, H, generator=gen, dtype=torch.float32).requires_grad_()
    labels = torch.randint(0, V, (N,), generator=gen)
    weights = torch.rand(N, generator=gen)
    weights[::4] = 0.0  # rows that do not count (any label)
    teacher = teacher_topk(torch.randn(N, V, generator=gen) * 3, top_k=K, temperature=1.5)
    return hidden, weight, labels, weights, teacher


def _pbm(logits, labels, weights, denominator):
    return weighted_cross_entropy(logits, labels, weights, denominator).reshape(1)


def _swd(logits, labels, weights, teacher, denominator, support):
    ce = weighted_cross_entropy(logits, labels, weights, denominator)
    kl = (topk_kl_to_student(logits, *teacher, temperature=1.5, student_support=support) * weights).sum() / denominator
    return torch.stack([ce, kl])


def _grads(terms, hidden, weight, mix):
    loss = (terms * mix).sum()
    return torch.autograd.grad(loss, (hidden, weight))


@pytest.mark.parametrize("chunk", [1, 4, 7, N, 2 * N])
@pytest.mark.parametrize("kind", ["pbm", "swd_topk", "swd_full"])
def test_chunked_loss_and_gradients_equal_the_unchunked_ones(chunk, kind):
    hidden, weight, labels, weights, teacher = _inputs()
    denominator = 3.0

    def loss_of(logits, rows):
        if kind == "pbm":
            return _pbm(logits, labels[rows], weights[rows], denominator)
        return _swd(logits, labels[rows], weights[rows], tuple(t[rows] for t in teacher), denominator, kind[4:])

    want = loss_of(hidden @ weight.T, slice(None))
    got = chunked_head_loss(hidden, weight, lambda logits, start: loss_of(logits, slice(start, start + len(logits))), chunk)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    mix = torch.tensor([1.0, 0.5])[: want.numel()]
    for g, w in zip(_grads(got, hidden, weight, mix), _grads(want, hidden, weight, mix)):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-6)


def test_no_tensor_holds_more_than_a_chunk_of_logits():
    """Forward and backward never create a tensor of more than ``chunk x V`` elements (the reference does)."""

    class Largest(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    Largest.largest = max(Largest.largest, t.numel())
            return out

    hidden, weight, labels, weights, _ = _inputs()
    chunk = 8  # > H: the [V, H] weight gradient is within chunk x V too

    def run(chunk_tokens):
        Largest.largest = 0
        with Largest():
            loss = chunked_head_loss(
                hidden, weight, lambda logits, s: _pbm(logits, labels[s : s + len(logits)], weights[s : s + len(logits)], 1.0),
                chunk_tokens,
            )
            loss.sum().backward()
        return Largest.largest

    assert run(chunk) <= chunk * V < N * V
    assert run(N) >= N * V  # the measurement sees the full matrix when there is one


def test_no_grad_runs_plain_chunks_and_empty_input_keeps_a_graph():
    hidden, weight, labels, weights, _ = _inputs()
    with torch.no_grad():
        got = chunked_head_loss(hidden, weight, lambda logits, s: _pbm(logits, labels[s : s + len(logits)],
                                                                       weights[s : s + len(logits)], 2.0), 5)
    torch.testing.assert_close(got, _pbm(hidden @ weight.T, labels, weights, 2.0).detach(), atol=1e-6, rtol=1e-6)

    empty = chunked_head_loss(hidden[:0], weight, lambda logits, s: _pbm(logits, labels[:0], weights[:0], 0.0), 5)
    assert empty.item() == 0.0 and empty.requires_grad  # every FSDP rank must still run backward
    empty.sum().backward()
    assert torch.count_nonzero(weight.grad) == 0


@pytest.mark.parametrize("chunk", [1, 6, 100])
def test_chunked_teacher_topk_equals_teacher_topk(chunk):
    hidden, weight, *_ = _inputs(1)
    want = teacher_topk(hidden.detach() @ weight.detach().T, top_k=K, temperature=0.7)
    got = chunked_teacher_topk(hidden, weight, chunk, top_k=K, temperature=0.7)
    torch.testing.assert_close(got[0], want[0], atol=1e-6, rtol=1e-6)
    assert torch.equal(got[1], want[1]) and not got[0].requires_grad
    log_probs, index = chunked_teacher_topk(hidden[:0], weight, chunk, top_k=K, temperature=1.0)
    assert log_probs.shape == index.shape == (0, K)


def test_bad_shapes_and_chunk_sizes_are_refused():
    hidden, weight, *_ = _inputs()
    with pytest.raises(ValueError, match="chunk_tokens must be a positive"):
        chunked_head_loss(hidden, weight, lambda logits, s: logits.sum().reshape(1), 0)
    with pytest.raises(ValueError, match=r"hidden must be \[N, H\]"):
        chunked_teacher_topk(hidden[None], weight, 4, top_k=2, temperature=1.0)

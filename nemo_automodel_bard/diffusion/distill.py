"""Stage-wise distillation (SWD) as pure tensor functions: top-k forward KL and teacher alignment.

BARD's second stage trains a large-block student against a frozen teacher that reads the
student's own packed row (bard_spec.md section 6):

* **anchor** (the paper's method): a small-block Bard-VL. It sees the same tokens,
  positions and pixels, only under the attention mask of its own block size, so its logit
  at position ``p`` predicts the clean token of ``p`` exactly like the student's (no shift).
  :func:`anchor_block_ids` gives the block ids of that mask.
* **ar** (the paper's negative ablation): the original autoregressive Qwen3-VL. It must only
  see ``[prefix | clean]`` token-causally, and its logit at stream position ``p - 1``
  predicts token ``p``. Running it on the student's row with the block-size-1 mask
  (:func:`ar_block_ids`) keeps the batch unchanged; :func:`ar_source_index` then says
  which AR position predicts each noisy token (the clean twin's predecessor).

The divergence is :func:`topk_forward_kl`: ``KL(teacher_topk || student)`` where the teacher
is truncated to its ``top_k`` tokens and renormalised, temperature ``T`` on both sides and
no ``T**2`` factor (as upstream).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from nemo_automodel_bard.diffusion.masks import CLEAN, NOISY, PREFIX, layout_block_ids

StudentSupport = Literal["topk", "full"]

__all__ = [
    "StudentSupport",
    "teacher_topk",
    "topk_kl_to_student",
    "topk_forward_kl",
    "anchor_block_ids",
    "ar_block_ids",
    "ar_source_index",
    "gather_teacher_logits",
]


def teacher_topk(
    teacher_logits: torch.Tensor, *, top_k: int = 16, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's ``top_k`` tokens and their renormalised log-probabilities.

    Keeping only these ``[N, k]`` tensors lets the recipe drop the ``[N, V]`` teacher
    logits right after the teacher forward.

    Args:
        teacher_logits: ``[N, V]`` (treated as constant).
        top_k: tokens kept per position (clamped to ``V``).
        temperature: softmax temperature ``T > 0``.

    Returns:
        ``(log_probs, index)``, both ``[N, k]``: fp32 ``log softmax(top-k logits / T)`` and
        the vocabulary ids of those tokens.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k <= 0:
        raise ValueError(f"top_k must be a positive integer, got {top_k}")
    k = min(top_k, teacher_logits.shape[-1])
    # top-k before the fp32 upcast (exact and order-preserving): no [N, V] fp32 copy.
    top, index = teacher_logits.detach().topk(k, dim=-1)  # T > 0 keeps the order
    return F.log_softmax(top.float() / temperature, dim=-1), index


def topk_kl_to_student(
    student_logits: torch.Tensor,
    teacher_log_probs: torch.Tensor,
    teacher_index: torch.Tensor,
    *,
    temperature: float = 1.0,
    student_support: StudentSupport = "topk",
) -> torch.Tensor:
    """Per-token ``KL(teacher_topk || student)`` from :func:`teacher_topk`'s output.

    Args:
        student_logits: ``[N, V]`` (any float dtype; gradients flow through it).
        teacher_log_probs: ``[N, k]`` renormalised teacher log-probabilities.
        teacher_index: ``[N, k]`` their vocabulary ids.
        temperature: the same ``T`` the teacher used.
        student_support: ``"topk"`` or ``"full"`` (see :func:`topk_forward_kl`).

    Returns:
        ``[N]`` fp32.
    """
    if student_support not in ("topk", "full"):
        raise ValueError(f"student_support must be 'topk' or 'full', got {student_support!r}")
    if student_logits.dim() != 2 or teacher_index.shape != (student_logits.shape[0], teacher_index.shape[-1]):
        raise ValueError(
            f"student logits must be [N, V] and the teacher's top-k [N, k]; got {tuple(student_logits.shape)} "
            f"and {tuple(teacher_index.shape)}"
        )
    student = student_logits.float() / temperature
    student_top = student.gather(-1, teacher_index)  # [N, k]
    if student_support == "topk":
        student_log_probs = F.log_softmax(student_top, dim=-1)
    else:
        student_log_probs = student_top - torch.logsumexp(student, dim=-1, keepdim=True)
    return (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(-1)


def topk_forward_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    top_k: int = 16,
    temperature: float = 1.0,
    student_support: StudentSupport = "topk",
) -> torch.Tensor:
    """Per-token forward KL from a top-k-truncated teacher to the student.

    The teacher distribution is ``softmax(teacher / T)`` restricted to its ``top_k`` most
    likely tokens and renormalised. The student distribution is ``softmax(student / T)``:

    * ``student_support="topk"``: restricted to the same ``top_k`` tokens and renormalised,
      so the term is a true divergence on that support and is exactly 0 when the student
      equals the teacher;
    * ``student_support="full"``: over the whole vocabulary. This has the same gradient as
      upstream's surrogate ``-sum_k p_T,k log q_S,k`` (it differs by the teacher's top-k
      entropy, a constant), which also pulls student mass into the teacher's top-k; its
      value at ``student == teacher`` is ``-log`` (teacher mass in its top-k) >= 0.

    Computed in fp32; no ``T**2`` factor (as upstream). Select the scored positions before
    calling (``logits[mask]``): with ``"full"`` the student's logsumexp is the only
    ``[N, V]`` fp32 intermediate.

    Args:
        student_logits: ``[N, V]`` (any float dtype; gradients flow through it).
        teacher_logits: ``[N, V]`` (treated as constant).
        top_k: teacher tokens kept per position (clamped to ``V``).
        temperature: softmax temperature ``T > 0`` on both sides.
        student_support: ``"topk"`` or ``"full"`` (see above).

    Returns:
        ``[N]`` fp32 per-token KL.
    """
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(
            f"student and teacher logits must both be [N, V]; got {tuple(student_logits.shape)} "
            f"and {tuple(teacher_logits.shape)}"
        )
    log_probs, index = teacher_topk(teacher_logits, top_k=top_k, temperature=temperature)
    return topk_kl_to_student(
        student_logits, log_probs, index, temperature=temperature, student_support=student_support
    )


def anchor_block_ids(
    segment: torch.Tensor, offset: torch.Tensor, prompt_len: torch.Tensor, anchor_block_size: int
) -> torch.Tensor:
    """Block ids ``[B, S]`` of the student's row under the anchor's block size.

    Fed to ``masks.block_diffusion_mask`` they give the anchor's mask for the very same
    tokens: inside a student block the anchor also sees the earlier anchor-sized
    sub-blocks of the clean copy (bard_spec.md section 6).
    """
    return layout_block_ids(segment, offset, prompt_len, anchor_block_size)


def ar_block_ids(segment: torch.Tensor, offset: torch.Tensor, prompt_len: torch.Tensor) -> torch.Tensor:
    """Block ids ``[B, S]`` that make ``block_diffusion_mask`` the AR teacher's causal mask.

    With block size 1 a prefix token's id is its prompt index and a clean token's id is
    ``P + offset``: its index in the ``[prefix | clean]`` stream. Prefix / clean queries
    then see exactly the earlier stream tokens of their sample (token-causal, never the
    noisy copy), which is what an AR model reading ``[prefix | clean]`` sees. Noisy rows of
    that mask are meaningless to an AR model and their logits are never used.
    """
    return layout_block_ids(segment, offset, prompt_len, 1)


def ar_source_index(
    segment: torch.Tensor,
    offset: torch.Tensor,
    prompt_len: torch.Tensor,
    doc: torch.Tensor | None = None,
) -> torch.Tensor:
    """For each noisy token, the row position whose AR logit predicts its clean token.

    The noisy token with response offset ``r`` is predicted, in the AR stream
    ``[prefix | clean]`` of the same sample, by stream index ``P + r - 1``: the clean token
    of offset ``r - 1``, or the last prompt token when ``r == 0``. The lookup goes by
    (sample, stream index), so it holds for any physical order of the packed row.

    Args:
        segment, offset, prompt_len: ``[B, S]`` layout (see ``masks.layout_block_ids``).
        doc: ``[B, S]`` packed-sample ids, or None for one sample per row.

    Returns:
        ``[B, S]`` long: a position in ``[0, S)`` for noisy tokens, ``-1`` elsewhere (and
        for a noisy token whose predecessor is absent from the row).
    """
    if doc is None:
        doc = torch.zeros_like(segment)
    stream = ar_block_ids(segment, offset, prompt_len).long()  # stream index per token
    seq_len = segment.shape[1]
    span = int(stream.max().item()) + 2 if stream.numel() else 1
    known = (segment == PREFIX) | (segment == CLEAN)
    positions = torch.arange(seq_len, device=segment.device)
    result = torch.full_like(segment, -1, dtype=torch.long)
    for row in range(segment.shape[0]):
        # Unique (sample, stream index) key per known token; search the predecessor's key.
        keys = doc[row].long() * span + stream[row]
        known_keys, order = torch.sort(keys[known[row]])
        known_pos = positions[known[row]][order]
        noisy = segment[row] == NOISY
        wanted = keys[noisy] - 1
        if known_keys.numel() == 0 or wanted.numel() == 0:
            continue
        hit = torch.searchsorted(known_keys, wanted).clamp(max=known_keys.numel() - 1)
        found = (known_keys[hit] == wanted) & (stream[row][noisy] > 0)
        result[row, noisy] = torch.where(found, known_pos[hit], torch.full_like(hit, -1))
    return result


def gather_teacher_logits(
    teacher_logits: torch.Tensor, select: torch.Tensor, source: torch.Tensor | None = None
) -> torch.Tensor:
    """Teacher logits ``[N, V]`` aligned with ``student_logits[select]``.

    Args:
        teacher_logits: ``[B, S, V]``.
        select: ``[B, S]`` bool, the scored positions (student order, row-major).
        source: ``[B, S]`` long position to read for each scored position (AR teacher,
            from :func:`ar_source_index`), or None for the same position (anchor).
    """
    if source is None:
        return teacher_logits[select]
    rows, cols = select.nonzero(as_tuple=True)
    src = source[rows, cols]
    if (src < 0).any():
        raise ValueError("a scored position has no AR predecessor in its row (empty prompt or broken layout)")
    return teacher_logits[rows, src]

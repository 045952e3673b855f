"""BardSWDRecipe's teacher and loss hooks, in-process on tiny models (no torchrun, no setup()).

References are independent of the recipe's code path:

* AR teacher: stock Qwen3-VL run the ordinary way on each sample's ``[prompt | clean]``
  alone (its own causal mask and mRoPE positions); its logit at ``P + r - 1`` must be what
  the recipe hands the KL for response token ``r``.
* anchor: the Bard-VL run on the full row with the B=4 mask built from a brute-force block
  id rule, all logits returned, the scored rows picked afterwards.
* loss: per-token CE and KL from dense float64 softmaxes, averaged per sample then over
  samples (``sample_mean``) or over all tokens (``token_mean``).
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

from nemo_automodel_bard.data.collate import bard_collate
from nemo_automodel_bard.data.dataset import build_chat_dataset
from nemo_automodel_bard.data.synthetic import write_color_dataset
from nemo_automodel_bard.diffusion.distill import teacher_topk
from nemo_automodel_bard.diffusion.layout import apply_noise, layout_position_ids
from nemo_automodel_bard.diffusion.masks import (
    CLEAN,
    NOISY,
    PAD,
    PREFIX,
    block_diffusion_mask,
    layout_block_ids,
    to_additive_mask,
)
from nemo_automodel_bard.models.bard_vl import BardVLForConditionalGeneration
from nemo_automodel_bard.recipes.swd import BardSWDRecipe, distill_token_weights
from nemo_automodel_bard.testing import tiny_config, tiny_processor

STUDENT_B, ANCHOR_B = 8, 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Processor, a noised 2-row batch (packed samples, one image each), student/anchor/AR models."""
    processor = tiny_processor()
    data = write_color_dataset(tmp_path_factory.mktemp("swd_data"), num_samples=5)
    dataset = build_chat_dataset(str(data), processor=processor, block_size=STUDENT_B, max_length=256)
    batch = bard_collate([dataset[i] for i in range(5)], processor, block_size=STUDENT_B, pack_size=200)
    config = tiny_config(block_size=STUDENT_B)
    batch = apply_noise(
        batch, block_size=STUDENT_B, mask_token_id=config.mask_token_id, generator=torch.Generator().manual_seed(0)
    )
    torch.manual_seed(0)
    student = BardVLForConditionalGeneration(config).eval()
    torch.manual_seed(1)
    anchor = BardVLForConditionalGeneration(tiny_config(block_size=ANCHOR_B)).eval()
    ar_dict = config.to_dict()
    for key in ("mask_token_id", "block_size", "prompt_attention", "model_type", "transformers_version"):
        ar_dict.pop(key, None)
    torch.manual_seed(2)
    ar = Qwen3VLForConditionalGeneration(Qwen3VLConfig(**ar_dict)).eval()
    assert batch["segment"].shape[0] >= 2 and int(batch["doc"].max()) >= 1, "want packed rows"
    return SimpleNamespace(processor=processor, batch=batch, student=student, anchor=anchor, ar=ar, config=config)


def _recipe(kind, teacher, student, normalization="sample_mean", chunk_tokens=0, **distill):
    """A recipe object with just what the hooks read (setup() would build models and data)."""
    cfg = {
        "recipe": {"_target_": "nemo_automodel_bard.recipes.swd.BardSWDRecipe"},
        "model": {"_target_": "nemo_automodel.NeMoAutoModelForImageTextToText.from_pretrained"},
        "teacher": {"kind": kind},
        "bard": {"block_size": STUDENT_B, "loss": {"normalization": normalization, "chunk_tokens": chunk_tokens}},
        "distill": distill,
    }
    if kind != "none":
        cfg["teacher_model"] = {"_target_": "nemo_automodel.NeMoAutoModelForImageTextToText.from_pretrained"}
    recipe = BardSWDRecipe(cfg)
    recipe.dist_env = SimpleNamespace(device=torch.device("cpu"))
    recipe.model_parts = [student]
    recipe.block_size = STUDENT_B
    recipe.prompt_attention = "block"
    if teacher is not None:
        recipe.teacher_model = teacher
        recipe.teacher_block_size = ANCHOR_B if kind == "anchor" else 1
        recipe.teacher_causal_prompt = False
    return recipe


def _samples(batch):
    """(row, start, P, R) per packed sample."""
    return [tuple(s) for s in batch["samples"].tolist()]


def test_ar_teacher_targets_match_stock_qwen3vl_on_prompt_and_clean(tiny):
    batch = tiny.batch
    recipe = _recipe("ar", tiny.ar, tiny.student, top_k=5)
    log_probs, index = recipe.teacher_targets(batch)

    # Reference: each sample's [prompt | clean] alone through the AR model, HF's own way.
    images = batch["image_grid_thw"]
    pixels_per_image = [int(g.prod()) for g in images]
    pixel_starts = [0] + list(torch.tensor(pixels_per_image).cumsum(0).tolist())
    expected = []
    for s, (row, start, prompt_len, response_len) in enumerate(_samples(batch)):
        clean = slice(start, start + prompt_len + response_len)
        ids = batch["input_ids"][row : row + 1, clean].clone()
        # The noisy copy was corrupted; the clean copy still holds the gold response.
        with torch.no_grad():
            logits = tiny.ar(
                input_ids=ids,
                mm_token_type_ids=batch["mm_token_type_ids"][row : row + 1, clean],
                pixel_values=batch["pixel_values"][pixel_starts[s] : pixel_starts[s + 1]],
                image_grid_thw=images[s : s + 1],
            ).logits[0]
        scored = batch["loss_mask"][row, start + prompt_len + response_len : start + prompt_len + 2 * response_len]
        for r in scored.nonzero()[:, 0].tolist():
            expected.append((row, start + prompt_len + response_len + r, logits[prompt_len + r - 1]))
    # teacher_targets is in row-major order of the scored positions.
    expected.sort(key=lambda x: (x[0], x[1]))
    want_log_probs, want_index = teacher_topk(torch.stack([e[2] for e in expected]), top_k=5)
    assert torch.equal(index, want_index)
    torch.testing.assert_close(log_probs, want_log_probs, rtol=1e-4, atol=1e-5)


def _brute_force_anchor_mask(batch, block_size):
    """The B=anchor visibility rules pair by pair (prompt block-causal, D3/D4)."""
    seg, off, plen, doc = (batch[k][0].tolist() for k in ("segment", "offset", "prompt_len", "doc"))
    n = len(seg)

    def bid(i):
        first = math.ceil(plen[i] / block_size)
        return off[i] // block_size if seg[i] == PREFIX else first + off[i] // block_size

    mask = torch.zeros(n, n, dtype=torch.bool)
    for q in range(n):
        for k in range(n):
            if seg[q] == PAD:
                mask[q, k] = q == k
            elif seg[k] == PAD or doc[q] != doc[k]:
                continue
            elif seg[q] == NOISY:
                mask[q, k] = seg[k] == PREFIX or (seg[k] == CLEAN and bid(k) < bid(q)) or (
                    seg[k] == NOISY and bid(k) == bid(q)
                )
            else:
                mask[q, k] = seg[k] != NOISY and bid(k) <= bid(q)
    return mask


def test_anchor_teacher_targets_use_the_anchor_block_mask(tiny):
    batch = {k: (v[:1] if torch.is_tensor(v) and v.dim() == 2 else v) for k, v in tiny.batch.items()}
    row_samples = [s for s in _samples(tiny.batch) if s[0] == 0]
    num_images = len(row_samples)
    batch["samples"] = tiny.batch["samples"][:num_images]
    batch["image_grid_thw"] = tiny.batch["image_grid_thw"][:num_images]
    batch["sample_num_images"] = tiny.batch["sample_num_images"][:num_images]
    batch["pixel_values"] = tiny.batch["pixel_values"][: int(batch["image_grid_thw"].prod(-1).sum())]
    recipe = _recipe("anchor", tiny.anchor, tiny.student, top_k=16)
    log_probs, index = recipe.teacher_targets(batch)

    positions = layout_position_ids(batch, tiny.student.rope_positions)
    mask = to_additive_mask(_brute_force_anchor_mask(batch, ANCHOR_B)[None])
    with torch.no_grad():
        logits = tiny.anchor(
            input_ids=batch["input_ids"], position_ids=positions, attention_mask=mask,
            pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
        ).logits
    want_log_probs, want_index = teacher_topk(logits[batch["loss_mask"]], top_k=16)
    assert torch.equal(index, want_index)
    torch.testing.assert_close(log_probs, want_log_probs, rtol=1e-4, atol=1e-5)
    # ... and the student's own block size gives different targets (the mask matters).
    student_ids = layout_block_ids(batch["segment"], batch["offset"], batch["prompt_len"], STUDENT_B)
    student_mask = block_diffusion_mask(batch["segment"], student_ids, batch["doc"])
    with torch.no_grad():
        other = tiny.anchor(
            input_ids=batch["input_ids"], position_ids=positions, attention_mask=to_additive_mask(student_mask),
            pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
        ).logits[batch["loss_mask"]]
    assert not torch.allclose(teacher_topk(other, top_k=16)[0], want_log_probs, atol=1e-4)


def _reference_loss(student_logits, teacher_logits, batch, normalization, ce_weight, kl_weight, k, support="topk"):
    """Dense float64 per-token CE and top-k KL (student restricted to the teacher's top-k, or
    over the full vocabulary: upstream's normalisation)."""
    select = batch["loss_mask"]
    rows, cols = select.nonzero(as_tuple=True)
    labels = batch["labels"][select]
    ce_terms, kl_terms, keys = [], [], []
    for n in range(labels.numel()):
        s, t = student_logits[n].double(), teacher_logits[n].double()
        ce_terms.append(-(s.log_softmax(-1)[labels[n]]).item())
        top = t.argsort(descending=True)[:k]
        p = t[top].softmax(-1)
        q = s[top].softmax(-1) if support == "topk" else s.softmax(-1)[top]
        kl_terms.append((p * (p / q).log()).sum().item())
        keys.append((int(rows[n]), int(batch["doc"][rows[n], cols[n]])))
    if normalization == "token_mean":
        ce, kl = sum(ce_terms) / len(ce_terms), sum(kl_terms) / len(kl_terms)
    else:
        per_sample = {}
        for key, c, d in zip(keys, ce_terms, kl_terms):
            per_sample.setdefault(key, []).append((c, d))
        # every packed sample counts, also one without scored tokens (it adds 0)
        num_samples = int(batch["num_samples"])
        ce = sum(sum(c for c, _ in v) / len(v) for v in per_sample.values()) / num_samples
        kl = sum(sum(d for _, d in v) / len(v) for v in per_sample.values()) / num_samples
    return ce_weight * ce + kl_weight * kl, ce, kl


@pytest.mark.parametrize("support", ["full", "topk"])
@pytest.mark.parametrize("normalization", ["sample_mean", "token_mean"])
def test_compute_loss_is_ce_plus_weighted_topk_kl(tiny, normalization, support):
    batch = tiny.batch
    select = batch["loss_mask"]
    n = int(select.sum())
    gen = torch.Generator().manual_seed(5)
    vocab = tiny.config.text_config.vocab_size
    student_logits = (torch.randn(n, vocab, generator=gen) * 2).requires_grad_(True)
    teacher_logits = torch.randn(n, vocab, generator=gen) * 2
    recipe = _recipe("anchor", None, tiny.student, normalization, kl_weight=0.3, ce_weight=0.7, top_k=6,
                     student_support=support)
    recipe._teacher_targets = teacher_topk(teacher_logits, top_k=6)
    denominator = float(batch["num_samples"]) if normalization == "sample_mean" else float(n)
    loss = recipe.compute_loss(student_logits, batch, select, denominator)
    want, ce, kl = _reference_loss(student_logits.detach(), teacher_logits, batch, normalization, 0.7, 0.3, 6, support)
    assert loss.item() == pytest.approx(want, rel=1e-5)
    assert recipe._ce_buffer[-1].item() == pytest.approx(ce, rel=1e-5)
    assert recipe._kl_buffer[-1].item() == pytest.approx(kl, rel=1e-5)
    loss.backward()
    assert student_logits.grad is not None and student_logits.grad.abs().sum() > 0


def test_kind_none_is_the_plain_ce_and_inverse_t_uses_pbm_weights(tiny):
    batch = tiny.batch
    select = batch["loss_mask"]
    n = int(select.sum())
    logits = torch.randn(n, tiny.config.text_config.vocab_size, generator=torch.Generator().manual_seed(6))
    plain = _recipe("none", None, tiny.student).compute_loss(logits, batch, select, float(batch["num_samples"]))
    _, ce, _ = _reference_loss(logits, logits, batch, "sample_mean", 1.0, 0.0, 1)
    assert plain.item() == pytest.approx(ce, rel=1e-5)
    # ce_inverse_t: CE weighted exactly like PBM (loss_weight from diffusion/loss.py).
    weighted = _recipe("none", None, tiny.student, ce_inverse_t=True).compute_loss(
        logits, batch, select, float(batch["num_samples"])
    )
    per_token = torch.nn.functional.cross_entropy(logits.double(), batch["labels"][select], reduction="none")
    want = (per_token * batch["loss_weight"][select].double()).sum() / batch["num_samples"]
    assert weighted.item() == pytest.approx(want.item(), rel=1e-5)


def test_distill_token_weights_against_a_loop():
    loss_mask = torch.tensor([[0, 1, 1, 0, 1, 1, 1, 0], [1, 0, 0, 1, 0, 0, 0, 0]], dtype=torch.bool)
    doc = torch.tensor([[0, 0, 0, 1, 1, 1, 1, -1], [0, 0, 1, 1, -1, -1, -1, -1]])
    got = distill_token_weights(loss_mask, doc, "sample_mean")
    want = torch.zeros(2, 8)
    for r in range(2):
        for i in range(8):
            if loss_mask[r, i]:
                want[r, i] = 1.0 / sum(bool(loss_mask[r, j]) and doc[r, j] == doc[r, i] for j in range(8))
    assert torch.equal(got, want)
    assert torch.equal(distill_token_weights(loss_mask, doc, "token_mean"), loss_mask.float())


@pytest.mark.parametrize(("kind", "support"), [("anchor", "topk"), ("anchor", "full"), ("none", "topk")])
def test_chunked_loss_head_gives_the_unchunked_step(tiny, kind, support):
    """One SWD step with bard.loss.chunk_tokens on: teacher top-k, loss, CE/KL parts, gradients and update as with it off."""
    batch = tiny.batch
    scored = int(batch["loss_mask"].sum())
    assert scored > 2 * 5
    steps = {}
    for chunk in (0, 5):
        student = copy.deepcopy(tiny.student).train()
        recipe = _recipe(kind, tiny.anchor if kind == "anchor" else None, student, chunk_tokens=chunk,
                         kl_weight=0.3, top_k=6, student_support=support)
        targets = recipe.teacher_targets(batch) if kind == "anchor" else None
        recipe._teacher_targets = targets
        loss = recipe.model_loss(student, recipe.build_model_inputs(batch, STUDENT_B), batch, float(batch["num_samples"]))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
        torch.optim.SGD(student.parameters(), lr=0.1).step()  # AdamW would amplify rounding where |grad| ~ eps
        params = {n: p.detach().clone() for n, p in student.named_parameters()}
        steps[chunk] = (targets, loss.detach(), recipe._ce_buffer[-1], recipe._kl_buffer[-1], grads, params)
    (t_on, *on), (t_off, *off) = steps[5], steps[0]
    if kind == "anchor":
        torch.testing.assert_close(t_on[0], t_off[0], atol=1e-6, rtol=1e-6)
        assert torch.equal(t_on[1], t_off[1])
        assert off[2] > 0  # the KL part is really there
    for got, want in zip(on[:3], off[:3]):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    assert on[3].keys() == off[3].keys() and "lm_head.weight" in on[3]
    for table_on, table_off in zip(on[3:], off[3:]):
        for name in table_off:
            torch.testing.assert_close(table_on[name], table_off[name], atol=1e-6, rtol=1e-5, msg=lambda m: f"{name}: {m}")

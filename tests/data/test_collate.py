"""The collator's fake media: text-only micro-batches still run the vision tower, and change nothing real.

References: the same samples collated without the fake image (loss, logits and gradients of
real tokens) and the layout's own ``doc`` ids (who may attend whom).
"""

from __future__ import annotations

import pytest
import torch

from nemo_automodel_bard.data.collate import bard_collate, fake_media_sample
from nemo_automodel_bard.diffusion.layout import (
    apply_noise,
    collate_layout,
    layout_attention_mask,
    layout_position_ids,
)
from nemo_automodel_bard.diffusion.loss import weighted_cross_entropy
from nemo_automodel_bard.diffusion.masks import block_diffusion_mask, layout_block_ids
from nemo_automodel_bard.testing import TINY_IDS, tiny_model, tiny_processor

BLOCK = 4


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


def _text_sample(processor, question: str, answer: str) -> dict:
    tok = processor.tokenizer
    prompt = tok(f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    response = tok(f"{answer}<|im_end|>", add_special_tokens=False)["input_ids"]
    prompt = torch.tensor(prompt, dtype=torch.long)
    return {"prompt_ids": prompt, "response_ids": torch.tensor(response), "mm_token_type_ids": torch.zeros_like(prompt)}


def _samples(processor):
    return [
        _text_sample(processor, "Name a colour.", "red"),
        _text_sample(processor, "Say something long about blue things.", "the sky, the sea and ink"),
        _text_sample(processor, "Hi", "hello there"),
    ]


def _real(batch) -> torch.Tensor:
    """``[B, S]`` bool: tokens of real samples (not padding, not fake media)."""
    fake_docs = torch.zeros_like(batch["doc"], dtype=torch.bool)
    for row, start, prompt_len, response_len in batch["samples"].tolist():
        if response_len == 0:
            fake_docs[row, start : start + prompt_len] = True
    return (batch["segment"] >= 0) & ~fake_docs


def _model_loss(model, batch):
    logits = model(
        input_ids=batch["input_ids"],
        position_ids=layout_position_ids(batch, model.rope_positions),
        attention_mask=layout_attention_mask(batch, BLOCK),
        pixel_values=batch.get("pixel_values"),
        image_grid_thw=batch.get("image_grid_thw"),
        pixel_values_videos=batch.get("pixel_values_videos"),
        video_grid_thw=batch.get("video_grid_thw"),
    ).logits
    return logits, weighted_cross_entropy(logits, batch["labels"], batch["loss_weight"], batch["num_samples"])


@pytest.mark.parametrize("pack_size", [None, 256])
def test_fake_image_changes_no_real_loss_logit_or_gradient(processor, pack_size):
    samples = _samples(processor)
    kwargs = dict(block_size=BLOCK, pack_size=pack_size, pad_to_multiple_of=32)
    plain = bard_collate(samples, processor, fake_images=False, **kwargs)
    faked = bard_collate(samples, processor, **kwargs)
    # The fake image sits in existing padding: same shape, real tokens untouched.
    assert plain["input_ids"].shape == faked["input_ids"].shape
    assert faked["num_fake_media"] == 1 and plain["num_fake_media"] == 0
    assert faked["num_samples"] == plain["num_samples"] == 3
    assert faked["image_grid_thw"].tolist() == [[1, 2, 2]] and plain["image_grid_thw"] is None
    real = _real(faked)
    assert torch.equal(real, plain["segment"] >= 0)
    assert torch.equal(faked["input_ids"][real], plain["input_ids"][real])
    assert int((faked["input_ids"] == TINY_IDS["image"]).sum()) == 1

    # The fake tokens are a sample of their own: no real query sees them, they see no real key.
    block = layout_block_ids(faked["segment"], faked["offset"], faked["prompt_len"], BLOCK)
    mask = block_diffusion_mask(faked["segment"], block, faked["doc"])
    fake = (faked["segment"] >= 0) & ~real
    for b in range(mask.shape[0]):
        assert not mask[b][real[b]][:, fake[b]].any()
        assert not mask[b][fake[b]][:, real[b]].any()

    # Same noise on both (same shape, the fake has no response), same loss, logits, gradients.
    plain = apply_noise(plain, block_size=BLOCK, mask_token_id=TINY_IDS["mask"], generator=torch.Generator().manual_seed(0))
    faked = apply_noise(faked, block_size=BLOCK, mask_token_id=TINY_IDS["mask"], generator=torch.Generator().manual_seed(0))
    assert torch.equal(plain["loss_mask"], faked["loss_mask"]) and torch.equal(plain["loss_weight"], faked["loss_weight"])
    model = tiny_model(seed=0).train()
    calls = []
    model.model.visual.register_forward_hook(lambda *_: calls.append(1))
    logits_p, loss_p = _model_loss(model, plain)
    loss_p.backward()
    grads_p = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert not calls and not any(n.startswith("model.visual.") for n in grads_p)
    model.zero_grad(set_to_none=True)
    logits_f, loss_f = _model_loss(model, faked)
    loss_f.backward()
    assert calls == [1]  # the vision tower ran
    assert torch.allclose(loss_f, loss_p, rtol=1e-6, atol=1e-7), (loss_f.item(), loss_p.item())
    assert torch.allclose(logits_f[real], logits_p[real], atol=1e-5)
    for name, param in model.named_parameters():
        if name.startswith("model.visual."):
            # Every vision parameter takes part in backward (FSDP2 reduce-scatters it) with a zero gradient.
            assert param.grad is not None and not param.grad.any(), name
        elif name in grads_p:
            assert torch.allclose(param.grad, grads_p[name], atol=1e-6, rtol=1e-5), name


def test_batches_with_an_image_get_no_fake_and_videos_are_opt_in(processor):
    samples = _samples(processor)
    image = fake_media_sample(processor, "image")
    with_image = {**samples[0], **{k: image[k] for k in ("pixel_values", "image_grid_thw")}}
    batch = bard_collate([with_image, samples[1]], processor, block_size=BLOCK)
    assert batch["num_fake_media"] == 0
    both = bard_collate(samples, processor, block_size=BLOCK, fake_videos=True)
    assert both["num_fake_media"] == 2
    assert both["video_grid_thw"].tolist() == [[1, 2, 2]] and both["image_grid_thw"].tolist() == [[1, 2, 2]]
    assert int((both["mm_token_type_ids"] == 2).sum()) == 1 and int((both["mm_token_type_ids"] == 1).sum()) == 1
    noised = apply_noise(both, block_size=BLOCK, mask_token_id=TINY_IDS["mask"], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, loss = _model_loss(tiny_model(seed=0).eval(), noised)
    assert torch.isfinite(loss) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="needs the processor to build a fake image"):
        bard_collate(samples, None, block_size=BLOCK, pad_token_id=TINY_IDS["eos"])


def test_fake_media_goes_to_the_row_with_most_room_and_widens_only_when_full(processor):
    fake = fake_media_sample(processor, "image")
    samples = _samples(processor)
    batch = collate_layout(samples, block_size=BLOCK, pad_token_id=0, fake_media=[fake])
    lengths = [int(s["prompt_ids"].numel()) + 2 * -(-int(s["response_ids"].numel()) // BLOCK) * BLOCK for s in samples]
    shortest = min(range(3), key=lengths.__getitem__)
    entries = batch["samples"].tolist()
    assert [e for e in entries if e[3] == 0] == [[shortest, lengths[shortest], 3, 0]]
    assert [e[0] for e in entries] == sorted(e[0] for e in entries)  # row-major: media order = token order
    assert batch["input_ids"].shape[1] == max(lengths)  # it fitted in padding
    # One sample filling its row exactly: the row grows by the fake's 3 tokens.
    full = collate_layout(samples[:1], block_size=BLOCK, pad_token_id=0, fake_media=[fake])
    assert full["input_ids"].shape[1] == lengths[0] + 3
    assert full["input_ids"][0, lengths[0] :].tolist() == fake["prompt_ids"].tolist()

"""The decoder's response mRoPE positions, pinned against HF's ``get_rope_index`` on the whole row.

After an image, Qwen3-VL's next text position is ``max(prompt positions) + 1``, which is less
than the prompt length ``P``; a decoder that used ``P + r`` would still produce text (every other
test passes with it), so the positions the model receives are checked here directly.
"""

from __future__ import annotations

import torch

from nemo_automodel_bard.testing import TINY_IDS, chat_batch, tiny_image, tiny_model, tiny_processor

BLOCK, BLOCKS = 4, 2


def test_response_positions_follow_the_prompt_positions_after_images():
    model, processor = tiny_model(), tiny_processor()
    batch = chat_batch(processor, ["hi", "a longer question"], images=[tiny_image(0, size=32), tiny_image(1, size=16)])
    seen = []
    hook = model.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(kwargs["position_ids"].clone()),
                                           with_kwargs=True)
    try:
        model.generate(batch, max_new_tokens=BLOCK * BLOCKS, block_size=BLOCK, denoising_steps=BLOCK,
                       remasking_strategy="low_confidence_static", eos_token_id=[255])
    finally:
        hook.remove()

    # Reference: the stock get_rope_index over [prompt | response] with the response as plain text.
    n, prompt_width = batch["input_ids"].shape
    response = torch.full((n, BLOCK * BLOCKS), ord("a") - 32 + 9, dtype=torch.long)  # any text token
    assert not torch.isin(response, torch.tensor([TINY_IDS["image"], TINY_IDS["video"]])).any()
    ids = torch.cat([batch["input_ids"], response], 1)
    attn = torch.cat([batch["attention_mask"], torch.ones_like(response)], 1)
    mm = torch.cat([batch["mm_token_type_ids"], torch.zeros_like(response)], 1)
    reference, _ = model.model.get_rope_index(ids, mm, image_grid_thw=batch["image_grid_thw"], attention_mask=attn)

    first, last = seen[0], seen[-1]
    assert torch.equal(first, reference[:, :, : prompt_width + BLOCK])  # prefill fused with block 0
    assert torch.equal(last[:, :, -BLOCK:], reference[:, :, -BLOCK:])  # the last block
    # The pin can fail: P + r (P = real prompt length) differs from the reference after an image.
    real = batch["attention_mask"].sum(1, keepdim=True)
    naive = real + torch.arange(BLOCK * BLOCKS)
    assert not torch.equal(reference[0, :, prompt_width:], naive)

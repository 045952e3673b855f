"""Bard-VL text attention on FlexAttention: equal to sdpa on packed image rows (CPU, fp32, no grad)."""

from __future__ import annotations

import pytest
import torch
import transformers.integrations.flex_attention as hf_flex
from torch.nn.attention.flex_attention import BlockMask

from nemo_automodel_bard.diffusion.flex_masks import layout_mask, uncompiled_flex_attention
from nemo_automodel_bard.diffusion.layout import collate_layout, layout_position_ids
from nemo_automodel_bard.testing import TINY_IDS, tiny_model, tiny_processor, vision_sample




@pytest.fixture(scope="module")
def packed():
    """Two rows: several packed image samples in one, a single one in the other, both padded."""
    processor = tiny_processor()
    texts = [("what is it", "a red square"), ("colour?", "blue"), ("describe the picture", "green on top, red below"),
             ("and this one", "a large yellow circle in the middle of it")]
    samples = [vision_sample(processor, t, r, seed) for seed, (t, r) in enumerate(texts)]
    batch = collate_layout(samples, block_size=4, pad_token_id=TINY_IDS["eos"], pack_size=150, pad_to_multiple_of=64)
    assert batch["input_ids"].shape[0] >= 2 and int(batch["doc"].max()) >= 1
    assert bool((batch["segment"] == -1).any()), "want padding"
    # Corrupt part of the noisy copy so that noisy logits depend on the mask token too.
    noisy = (batch["segment"] == 2) & (torch.rand(batch["segment"].shape, generator=torch.Generator().manual_seed(0)) < 0.5)
    batch["input_ids"] = torch.where(noisy, TINY_IDS["mask"], batch["input_ids"])
    return batch


def _logits(model, batch, mask):
    with torch.no_grad():
        return model(
            input_ids=batch["input_ids"],
            position_ids=layout_position_ids(batch, model.rope_positions),
            attention_mask=mask,
            pixel_values=batch["pixel_values"],
            image_grid_thw=batch["image_grid_thw"],
        ).logits


@pytest.mark.parametrize("causal_prompt", [False, True])
def test_flex_logits_equal_sdpa_logits_on_packed_image_rows(packed, causal_prompt):
    model = tiny_model().eval()
    sdpa_mask = layout_mask(packed, 4, causal_prompt=causal_prompt, backend="sdpa")
    want = _logits(model, packed, sdpa_mask)
    model.set_text_attention("flex_attention")
    assert model.config.vision_config._attn_implementation == "sdpa"  # the vision tower keeps its backend
    flex_mask = layout_mask(packed, 4, causal_prompt=causal_prompt, backend="flex")
    assert isinstance(flex_mask, BlockMask)
    with uncompiled_flex_attention():
        got = _logits(model, packed, flex_mask)
    real = packed["segment"] != -1
    assert (got - want)[real].abs().max() < 1e-5
    # The mask matters: the other prompt mode changes the prompt logits.
    other = layout_mask(packed, 4, causal_prompt=not causal_prompt, backend="flex")
    with uncompiled_flex_attention():
        changed = _logits(model, packed, other)
    assert (changed - got)[real].abs().max() > 1e-3


def test_flex_shares_one_block_mask_over_layers_and_heads_without_repeating_kv(packed, monkeypatch):
    model = tiny_model().eval()
    model.set_text_attention("flex_attention")
    calls = []
    real_flex = hf_flex.flex_attention

    def spy(query, key, value, **kwargs):
        calls.append((query.shape[1], key.shape[1], kwargs["enable_gqa"], kwargs["block_mask"]))
        return real_flex(query, key, value, **kwargs)

    monkeypatch.setattr(hf_flex, "flex_attention", spy)
    monkeypatch.setattr(hf_flex, "repeat_kv", lambda *a: pytest.fail("K/V repeated to all query heads"))
    block_mask = layout_mask(packed, 4, backend="flex")
    with uncompiled_flex_attention():
        _logits(model, packed, block_mask)
    text = model.config.text_config
    assert len(calls) == text.num_hidden_layers
    for q_heads, kv_heads, gqa, mask in calls:
        assert (q_heads, kv_heads, gqa) == (text.num_attention_heads, text.num_key_value_heads, True)
        assert mask is block_mask and mask.kv_num_blocks.shape[1] == 1  # one head entry, broadcast


def test_mask_and_backend_must_match(packed):
    model = tiny_model().eval()
    block_mask = layout_mask(packed, 4, backend="flex")
    with pytest.raises(ValueError, match="set_text_attention"):
        _logits(model, packed, block_mask)
    model.set_text_attention("flex_attention")
    with pytest.raises(ValueError, match="BlockMask"):
        _logits(model, packed, layout_mask(packed, 4, backend="sdpa"))
    short = layout_mask({k: v[:, :64] for k, v in packed.items() if k in ("segment", "offset", "prompt_len", "doc")},
                        4, backend="flex")
    with pytest.raises(ValueError, match="BlockMask covers"):
        _logits(model, packed, short)
    with pytest.raises(ValueError, match="flash_attention_2"):
        model.set_text_attention("flash_attention_2")

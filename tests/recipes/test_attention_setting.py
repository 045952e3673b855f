"""``bard.attention`` (auto | flex | sdpa): validation, resolution, and the recipes' masks (CPU)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.nn.attention.flex_attention import BlockMask

from nemo_automodel_bard.diffusion import flex_masks, layout, masks
from nemo_automodel_bard.diffusion.flex_masks import uncompiled_flex_attention
from nemo_automodel_bard.diffusion.layout import apply_noise, collate_layout
from nemo_automodel_bard.recipes.block_diffusion import prepare_config, resolve_attention, use_text_attention
from nemo_automodel_bard.recipes.config_check import BardSettings
from nemo_automodel_bard.recipes.swd import BardSWDRecipe
from nemo_automodel_bard.testing import TINY_IDS, tiny_model, tiny_processor, vision_sample

STUDENT_B, ANCHOR_B = 8, 4


def test_attention_setting_values():
    assert BardSettings.from_mapping({}).attention == "auto"
    assert BardSettings.from_mapping({"attention": "flex"}).attention == "flex"
    with pytest.raises(ValueError, match=r"bard.attention: must be one of \['auto', 'flex', 'sdpa'\], got 'flash'"):
        BardSettings.from_mapping({"attention": "flash"})


def test_auto_is_flex_on_cuda_only_and_flex_refuses_cpu_training():
    assert resolve_attention("auto", torch.device("cuda", 0)) == "flex"
    assert resolve_attention("auto", torch.device("cpu")) == "sdpa"
    assert resolve_attention("sdpa", torch.device("cuda")) == "sdpa"
    assert resolve_attention("flex", torch.device("cuda")) == "flex"
    with pytest.raises(ValueError, match="no backward on cpu"):
        resolve_attention("flex", torch.device("cpu"))


def test_flex_in_a_model_section_is_refused_by_name():
    config = {"model": {"_target_": "x", "attn_implementation": "flex_attention"}, "bard": {}}
    with pytest.raises(ValueError, match="model.attn_implementation.*bard.attention: flex"):
        prepare_config(config)


def test_use_text_attention_needs_a_bard_model():
    model = tiny_model()
    use_text_attention(model, "sdpa")
    assert model.config.text_config._attn_implementation == "sdpa"
    use_text_attention(model, "flex")
    assert model.config.text_config._attn_implementation == "flex_attention"
    with pytest.raises(ValueError, match="Bard-VL"):
        use_text_attention(torch.nn.Linear(2, 2), "flex")




@pytest.fixture(scope="module")
def batch():
    processor = tiny_processor()
    texts = [("what is it", "a red square on a blue field"), ("colour?", "blue"), ("and this", "green then red")]
    samples = [vision_sample(processor, t, r, seed) for seed, (t, r) in enumerate(texts)]
    packed = collate_layout(samples, block_size=STUDENT_B, pad_token_id=TINY_IDS["eos"], pack_size=400,
                            pad_to_multiple_of=64)
    assert int(packed["doc"].max()) >= 1 and bool((packed["segment"] == -1).any())
    return apply_noise(packed, block_size=STUDENT_B, mask_token_id=TINY_IDS["mask"],
                       generator=torch.Generator().manual_seed(0))


def _swd_recipe(student, anchor, attention):
    """An SWD recipe with just what the hooks read (setup() would build models and data)."""
    recipe = BardSWDRecipe({
        "recipe": {"_target_": "nemo_automodel_bard.recipes.swd.BardSWDRecipe"},
        "model": {"_target_": "nemo_automodel.NeMoAutoModelForImageTextToText.from_pretrained"},
        "teacher_model": {"_target_": "nemo_automodel.NeMoAutoModelForImageTextToText.from_pretrained"},
        "teacher": {"kind": "anchor"},
        "bard": {"block_size": STUDENT_B, "attention": "sdpa"},
        "distill": {"top_k": 16},
    })
    recipe.dist_env = SimpleNamespace(device=torch.device("cpu"))
    recipe.model_parts = [student]
    recipe.block_size, recipe.prompt_attention, recipe.attention = STUDENT_B, "block", attention
    recipe.teacher_model, recipe.teacher_block_size, recipe.teacher_causal_prompt = anchor, ANCHOR_B, False
    use_text_attention(student, attention)
    use_text_attention(anchor, attention)
    return recipe


def test_flex_recipe_inputs_build_no_dense_mask_and_anchor_targets_equal_sdpa(batch, monkeypatch):
    def sdpa_models():
        return tiny_model(seed=0, block_size=STUDENT_B).eval(), tiny_model(seed=1, block_size=ANCHOR_B).eval()

    want = _swd_recipe(*sdpa_models(), "sdpa").teacher_targets(batch)
    sdpa_inputs = _swd_recipe(*sdpa_models(), "sdpa").build_model_inputs(batch, STUDENT_B)
    assert sdpa_inputs["attention_mask"].dtype == torch.bool  # no float [B,1,S,S] on the sdpa path

    for module in (flex_masks, masks, layout):
        for name in ("block_diffusion_mask", "to_additive_mask", "layout_attention_mask"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail("dense mask built in flex mode"))
    recipe = _swd_recipe(*sdpa_models(), "flex")
    inputs = recipe.build_model_inputs(batch, STUDENT_B)
    assert isinstance(inputs["attention_mask"], BlockMask)
    assert isinstance(recipe.teacher_inputs(batch)["attention_mask"], BlockMask)
    # The anchor runs on its own block size's BlockMask: same targets as under its dense sdpa mask.
    with uncompiled_flex_attention():
        got = recipe.teacher_targets(batch)
    assert torch.equal(got[1][:, :4], want[1][:, :4])
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-5)

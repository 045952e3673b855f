"""generate() refuses models that are not Bard-VL and mask ids that are not free rows (issue 11 item 4)."""

from __future__ import annotations

import pytest

from nemo_automodel_bard.generation.validation import NotBardVLError, check_mask_token_unused
from nemo_automodel_bard.models.bard_vl import BardVLForConditionalGeneration
from nemo_automodel_bard.testing import TINY_IDS, chat_batch, save_tiny_qwen3vl_checkpoint, tiny_model, tiny_processor


def _generate(model, **kwargs):
    batch = chat_batch(tiny_processor(), ["hi"])
    return model.generate(batch, max_new_tokens=4, block_size=4, denoising_steps=4, **kwargs)


def test_ar_checkpoint_loaded_as_bard_is_refused(tmp_path):
    ar = save_tiny_qwen3vl_checkpoint(tmp_path / "ar")
    model = BardVLForConditionalGeneration.from_pretrained(ar).eval()
    with pytest.raises(NotBardVLError, match=r"needs a Bard-VL model, got model_type .qwen3_vl.*bard convert --from"):
        _generate(model, mask_token_id=200)


@pytest.mark.parametrize("name", ["image", "video", "vision_start", "eos", "im_start"])
def test_mask_id_naming_a_config_special_is_refused(name):
    with pytest.raises(ValueError, match=f"mask_token_id {TINY_IDS[name]} "):
        _generate(tiny_model(), mask_token_id=TINY_IDS[name])


def test_bard_model_with_free_mask_row_decodes():
    out = _generate(tiny_model(), mask_token_id=200)
    assert out.shape == (1, 4)


def test_mask_id_of_an_ordinary_token_is_refused_by_the_tokenizer_check():
    tokenizer = tiny_processor().tokenizer
    check_mask_token_unused(tokenizer, TINY_IDS["mask"])  # the registered <|mask|> special
    check_mask_token_unused(tokenizer, 250)  # beyond the tokenizer: a spare row
    with pytest.raises(NotBardVLError, match="tokenizer's token 'a'"):
        check_mask_token_unused(tokenizer, tokenizer.convert_tokens_to_ids("a"))
    with pytest.raises(NotBardVLError, match="'<|im_end|>'"):
        check_mask_token_unused(tokenizer, TINY_IDS["eos"])

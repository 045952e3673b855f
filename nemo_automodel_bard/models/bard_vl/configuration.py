"""``BardVLConfig``: a Qwen3-VL config with the three fields block diffusion adds.

A released Bard-VL ``config.json`` (transformers 4.57 layout, sub-config model types
``bard_vl_text`` / ``bard_vl``, ``rope_scaling`` instead of ``rope_parameters``) has none of
these fields and loads with the defaults (bard_spec.md decisions D1, D2).
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLConfig

__all__ = ["BardVLConfig", "DEFAULT_MASK_TOKEN_ID", "DEFAULT_EOS_TOKEN_ID", "PROMPT_ATTENTION_CHOICES"]

# Upstream's generate() defaults (bard_spec.md section 1): a spare embedding row after the
# stock Qwen3 specials, and <|im_end|>.
DEFAULT_MASK_TOKEN_ID = 151671
DEFAULT_EOS_TOKEN_ID = 151645
PROMPT_ATTENTION_CHOICES = ("block", "causal")


@strict
class BardVLConfig(Qwen3VLConfig):
    """Qwen3-VL config for a block-diffusion model.

    Args (beyond ``Qwen3VLConfig``):
        mask_token_id: id of the ``[MASK]`` token noisy positions carry (D2).
        block_size: the block size the checkpoint was trained with (decoding may use another).
        prompt_attention: ``"block"`` (block-causal prompt in ``block_size`` chunks from the
            prompt's first token, as the released checkpoints were trained, D3) or ``"causal"``.
    """

    model_type = "bard_vl"

    mask_token_id: int | None = DEFAULT_MASK_TOKEN_ID
    block_size: int = 4
    prompt_attention: str = "block"

    def __post_init__(self, **kwargs):
        # Released checkpoints name the sub-configs after the model ("bard_vl_text" /
        # "bard_vl"); the tensors are Qwen3-VL's, so the stock sub-configs read them.
        if isinstance(self.vision_config, dict) and self.vision_config.get("model_type") == "bard_vl":
            self.vision_config = {**self.vision_config, "model_type": "qwen3_vl_vision"}
        if isinstance(self.text_config, dict) and self.text_config.get("model_type") == "bard_vl_text":
            self.text_config = {**self.text_config, "model_type": "qwen3_vl_text"}
        super().__post_init__(**kwargs)
        self._check_bard_fields()

    def _check_bard_fields(self) -> None:
        # In __post_init__ (not a strict-dataclass validator) so that callers get a plain ValueError.
        if self.prompt_attention not in PROMPT_ATTENTION_CHOICES:
            raise ValueError(
                f"prompt_attention must be one of {PROMPT_ATTENTION_CHOICES}, got {self.prompt_attention!r}"
            )
        if self.block_size <= 0:
            raise ValueError(f"block_size must be a positive integer, got {self.block_size}")
        # mask_token_id is range-checked against the vocabulary by generate() (and bard-convert):
        # tiny test models load released-layout configs whose default id exceeds their vocab.
        if self.mask_token_id is not None and self.mask_token_id < 0:
            raise ValueError(f"mask_token_id must be >= 0 or None, got {self.mask_token_id}")

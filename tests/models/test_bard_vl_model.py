"""BardVL config, forward contract, registration and checkpoint layout (tiny model, CPU, fp32)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from nemo_automodel_bard.diffusion.masks import CLEAN, NOISY, PREFIX, block_diffusion_mask, to_additive_mask
from nemo_automodel_bard.models.bard_vl import ARCHITECTURE_NAMES, BardVLConfig, BardVLForConditionalGeneration
from nemo_automodel_bard.testing import (
    chat_batch,
    released_layout_config,
    tiny_config,
    tiny_image,
    tiny_model,
    tiny_processor,
)


def _training_inputs(model, batch, block_size=4, response_len=8, seed=0):
    """[prompt | clean | noisy] row of sample 0 with its additive mask and positions."""
    ids = batch["input_ids"][:1]
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(20, 100, (1, response_len), generator=gen)
    noisy = torch.where(torch.rand(1, response_len, generator=gen) < 0.5, model.config.mask_token_id, clean)
    P = ids.shape[1]
    tokens = torch.cat([ids, clean, noisy], 1)
    segment = torch.tensor([[PREFIX] * P + [CLEAN] * response_len + [NOISY] * response_len])
    prompt_blocks = torch.arange(P) // block_size
    resp_blocks = -(-P // block_size) + torch.arange(response_len) // block_size
    block = torch.cat([prompt_blocks, resp_blocks, resp_blocks])[None]
    pos, _ = model.rope_positions(ids, batch["mm_token_type_ids"][:1], batch.get("image_grid_thw"))
    resp_pos = (pos.max() + 1 + torch.arange(response_len)).expand(3, 1, -1)
    positions = torch.cat([pos, resp_pos, resp_pos], 2)
    mask = block_diffusion_mask(segment, block)
    return tokens, mask, positions, segment


@pytest.fixture(scope="module")
def image_batch():
    return chat_batch(tiny_processor(), ["what is this"], images=[tiny_image(3)])


def _forward(model, tokens, mask, positions, batch, **kw):
    return model(
        input_ids=tokens,
        attention_mask=mask,
        position_ids=positions,
        pixel_values=batch["pixel_values"],
        image_grid_thw=batch["image_grid_thw"],
        **kw,
    ).logits


def test_config_defaults_and_validation():
    config = BardVLConfig()
    assert (config.model_type, config.mask_token_id, config.block_size, config.prompt_attention) == (
        "bard_vl",
        151671,
        4,
        "block",
    )
    with pytest.raises(ValueError, match="prompt_attention"):
        BardVLConfig(prompt_attention="sideways")
    with pytest.raises(ValueError, match="block_size"):
        BardVLConfig(block_size=0)


def test_text_attention_is_not_causal():
    model = tiny_model()
    assert all(layer.self_attn.is_causal is False for layer in model.model.language_model.layers)


def test_sdpa_and_eager_agree_and_bool_equals_additive(image_batch):
    sdpa, eager = tiny_model(attn_implementation="sdpa"), tiny_model(attn_implementation="eager")
    tokens, mask, positions, _ = _training_inputs(sdpa, image_batch)
    additive = to_additive_mask(mask)
    ref = _forward(sdpa, tokens, additive, positions, image_batch)
    torch.testing.assert_close(_forward(eager, tokens, additive, positions, image_batch), ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(_forward(eager, tokens, mask[:, None], positions, image_batch), ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(_forward(sdpa, tokens, mask[:, None], positions, image_batch), ref, rtol=1e-5, atol=1e-5)


def test_sdpa_gets_a_bool_mask_whatever_the_weight_dtype(image_batch, monkeypatch):
    """Under FSDP2 mixed precision the weights a mask could be cast to may be fp32 shards while
    queries are bf16; CUDA sdpa rejects a float mask of another dtype, so sdpa must get bool."""
    model = tiny_model(attn_implementation="sdpa")
    tokens, mask, positions, _ = _training_inputs(model, image_batch)
    seen = []
    original = torch.nn.functional.scaled_dot_product_attention

    def recording(*args, attn_mask=None, **kwargs):
        seen.append(attn_mask.dtype if attn_mask is not None else None)
        return original(*args, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    for given in (to_additive_mask(mask), to_additive_mask(mask, torch.bfloat16), mask[:, None]):
        seen.clear()
        _forward(model, tokens, given, positions, image_batch)
        text_layers = len(model.model.language_model.layers)
        assert seen[-text_layers:] == [torch.bool] * text_layers


def test_forward_respects_the_mask(image_batch):
    """Brute-force check through the network: changing a key changes exactly the queries allowed to see it."""
    model = tiny_model()
    tokens, mask, positions, segment = _training_inputs(model, image_batch)
    additive = to_additive_mask(mask)
    base = _forward(model, tokens, additive, positions, image_batch)
    P = int((segment == PREFIX).sum())
    # Perturb one noisy token: only noisy queries of its block may change (clean/prefix never see noisy, D4).
    for k in (tokens.shape[1] - 1, P + 8):  # last noisy token; first noisy token
        perturbed = tokens.clone()
        perturbed[0, k] = 42 if perturbed[0, k] != 42 else 43
        changed = (_forward(model, perturbed, additive, positions, image_batch) - base).abs().amax(-1)[0] > 1e-6
        allowed = mask[0, :, k]
        assert not (changed & ~allowed).any(), "a query changed although the mask hides the key"
        assert changed[k]


def test_logits_are_unshifted_and_match_stock_qwen3vl(image_batch):
    """With a token-causal mask the network equals HF Qwen3-VL; logit i comes from position i (no shift)."""
    from transformers import Qwen3VLForConditionalGeneration as HFQwen3VL

    model = tiny_model()
    stock = HFQwen3VL(model.config).eval()
    stock.load_state_dict(model.state_dict())
    ids = image_batch["input_ids"]
    positions, _ = model.rope_positions(ids, image_batch["mm_token_type_ids"], image_batch["image_grid_thw"])
    L = ids.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool).tril()[None]
    ours = _forward(model, ids, to_additive_mask(causal), positions, image_batch)
    ref = stock(**image_batch).logits
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    kept = _forward(model, ids, to_additive_mask(causal), positions, image_batch, logits_to_keep=3)
    torch.testing.assert_close(kept, ours[:, -3:])
    select = torch.zeros(1, L, dtype=torch.bool)
    select[0, [2, 5]] = True
    packed = _forward(model, ids, to_additive_mask(causal), positions, image_batch, logits_to_keep=select)
    torch.testing.assert_close(packed, ours[0, [2, 5]])


def test_lm_head_fn_gets_the_kept_hidden_states_and_the_head_weight(image_batch):
    """``lm_head_fn(hidden, weight)`` sees exactly what the LM head would: its result is the logits' function."""
    model = tiny_model()
    tokens, mask, positions, segment = _training_inputs(model, image_batch)
    mask, select = mask[:, None], segment == NOISY
    logits = _forward(model, tokens, mask, positions, image_batch, logits_to_keep=select)
    seen = {}

    def head(hidden, weight):
        seen["weight"] = weight
        return (hidden @ weight.T).square().sum()

    out = model(input_ids=tokens, attention_mask=mask, position_ids=positions, pixel_values=image_batch["pixel_values"],
                image_grid_thw=image_batch["image_grid_thw"], logits_to_keep=select, lm_head_fn=head)
    assert out.logits is None and seen["weight"] is model.lm_head.weight
    torch.testing.assert_close(out.head_output, logits.square().sum())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"labels": "LABELS"}, "computes no loss"),
        ({"position_ids": None}, "position_ids is required"),
        ({"attention_mask": "2D"}, r"\[B, 1, Q, K\]"),
    ],
)
def test_forward_refuses_bad_inputs(image_batch, kwargs, match):
    model = tiny_model()
    tokens, mask, positions, _ = _training_inputs(model, image_batch)
    args = dict(input_ids=tokens, attention_mask=to_additive_mask(mask), position_ids=positions)
    for key, value in kwargs.items():
        args[key] = {"LABELS": tokens, "2D": torch.ones_like(tokens)}.get(value, value)
    with pytest.raises(ValueError, match=match):
        model(**args, pixel_values=image_batch["pixel_values"], image_grid_thw=image_batch["image_grid_thw"])


def test_flash_attention_is_refused(image_batch):
    model = tiny_model()
    model.model.language_model.config._attn_implementation = "flash_attention_2"
    tokens, mask, positions, _ = _training_inputs(model, image_batch)
    with pytest.raises(ValueError, match="flash_attention_2"):
        _forward(model, tokens, to_additive_mask(mask), positions, image_batch)


def test_registration():
    from nemo_automodel._transformers.registry import ModelRegistry
    from transformers import AutoConfig, AutoModelForImageTextToText

    assert isinstance(AutoConfig.for_model("bard_vl"), BardVLConfig)
    assert AutoModelForImageTextToText._model_mapping[BardVLConfig] is BardVLForConditionalGeneration
    for name in ARCHITECTURE_NAMES:
        assert ModelRegistry.has_custom_model(name)
        assert ModelRegistry.resolve_custom_model_cls(name, tiny_config()) is BardVLForConditionalGeneration


def _write_released_checkpoint(path):
    """Weights saved by *stock* HF Qwen3-VL, config.json in the released Bard-VL layout."""
    from transformers import Qwen3VLForConditionalGeneration as HFQwen3VL

    reference = tiny_model(seed=5)
    stock = HFQwen3VL(reference.config)
    stock.load_state_dict(reference.state_dict())
    stock.save_pretrained(path, safe_serialization=True)
    (path / "config.json").write_text(json.dumps(released_layout_config(reference.config)))
    return reference


def test_released_layout_loads_without_missing_keys(tmp_path):
    reference = _write_released_checkpoint(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    # Key names of bard_spec.md section 1.
    for key in (
        "model.visual.patch_embed.proj.weight",
        "model.visual.pos_embed.weight",
        "model.visual.blocks.0.attn.qkv.weight",
        "model.visual.merger.linear_fc2.weight",
        "model.visual.deepstack_merger_list.0.linear_fc1.weight",
        "model.language_model.embed_tokens.weight",
        "model.language_model.layers.1.self_attn.q_norm.weight",
        "model.language_model.layers.1.mlp.down_proj.weight",
        "lm_head.weight",
    ):
        assert key in keys
    model, info = BardVLForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.config.mask_token_id == 151671 and model.config.block_size == 4  # D1/D2 defaults
    assert model.config.text_config.rope_parameters["mrope_section"] == [2, 3, 3]
    for name, tensor in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_save_load_roundtrip_through_automodel(tmp_path):
    from nemo_automodel import NeMoAutoModelForImageTextToText

    from nemo_automodel_bard._cpu_shim import apply_cpu_shims

    apply_cpu_shims()
    reference = tiny_model(seed=7)
    reference.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "bard_vl" and config["mask_token_id"] == reference.config.mask_token_id
    loaded = NeMoAutoModelForImageTextToText.from_pretrained(str(tmp_path), dtype=torch.float32)
    assert isinstance(loaded, BardVLForConditionalGeneration)  # AutoModel may add a mixin subclass
    state = loaded.state_dict()
    for name, tensor in reference.state_dict().items():
        assert torch.equal(state[name], tensor), name


def test_hf_create_causal_mask_passes_a_4d_mask_through():
    """The model relies on transformers 5.18 returning a prepared 4-D mask as-is (no causal AND)."""
    from transformers.masking_utils import create_causal_mask

    model = tiny_model()
    text_config = model.model.language_model.config
    mask = to_additive_mask(torch.rand(2, 5, 5) > 0.5)
    out = create_causal_mask(
        config=text_config, inputs_embeds=torch.zeros(2, 5, 64), attention_mask=mask, past_key_values=None,
        position_ids=None,
    )
    assert out is mask

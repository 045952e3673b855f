"""Argument and prompt checks for ``generate``: every bad input fails before any forward."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nemo_automodel_bard.generation.sampling import REMASKING_STRATEGIES
from nemo_automodel_bard.models.bard_vl.configuration import DEFAULT_EOS_TOKEN_ID, PROMPT_ATTENTION_CHOICES

__all__ = ["DecodeOptions", "resolve_options", "check_prompt"]


@dataclass(frozen=True)
class DecodeOptions:
    """Validated decoding arguments with the ids resolved from overrides and config."""

    max_new_tokens: int
    block_size: int
    denoising_steps: int
    temperature: float
    top_k: int
    top_p: float
    remasking_strategy: str
    confidence_threshold: float
    mask_token_id: int
    eos_token_ids: tuple[int, ...]
    banned_token_ids: tuple[int, ...]
    causal_prompt: bool


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _eos_ids(model, override) -> tuple[int, ...]:
    """EOS ids: the override, else the generation config, else the text config, else upstream's 151645."""
    candidates = [override]
    generation_config = getattr(model, "generation_config", None)
    candidates.append(getattr(generation_config, "eos_token_id", None))
    candidates.append(getattr(model.config.get_text_config(), "eos_token_id", None))
    for value in candidates:
        if value is None:
            continue
        ids = (value,) if isinstance(value, int) else tuple(value)
        if ids and all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            return ids
        raise ValueError(f"eos_token_id must be an int or a non-empty list of ints, got {value!r}")
    return (DEFAULT_EOS_TOKEN_ID,)


def resolve_options(
    model,
    *,
    max_new_tokens,
    block_size,
    denoising_steps,
    temperature,
    top_k,
    top_p,
    remasking_strategy,
    confidence_threshold,
    mask_token_id,
    eos_token_id,
    prompt_attention=None,
) -> DecodeOptions:
    """Check every argument; raise ValueError naming it and its allowed values.

    ``block_size`` and ``prompt_attention`` default (None) to the checkpoint's config, the
    values it was trained with; ``denoising_steps`` defaults to ``block_size`` (one token per
    step at most for the static strategy).
    """
    if block_size is None:
        block_size = getattr(model.config, "block_size", None)
        if block_size is None:
            raise ValueError("block_size is not set: the config has no block_size; pass generate(block_size=...)")
    if denoising_steps is None:
        denoising_steps = block_size
    if prompt_attention is None:
        prompt_attention = getattr(model.config, "prompt_attention", "block")
    if prompt_attention not in PROMPT_ATTENTION_CHOICES:
        raise ValueError(f"prompt_attention must be one of {PROMPT_ATTENTION_CHOICES}, got {prompt_attention!r}")
    _positive_int("max_new_tokens", max_new_tokens)
    _positive_int("block_size", block_size)
    _positive_int("denoising_steps", denoising_steps)
    if remasking_strategy not in REMASKING_STRATEGIES:
        raise ValueError(f"remasking_strategy must be one of {REMASKING_STRATEGIES}, got {remasking_strategy!r}")
    if remasking_strategy == "low_confidence_static" and denoising_steps > block_size:
        raise ValueError(
            f"denoising_steps must be in [1, block_size={block_size}] for low_confidence_static "
            f"(a step must commit at least one token), got {denoising_steps}"
        )
    if not 0.0 <= float(confidence_threshold) <= 1.0:
        raise ValueError(f"confidence_threshold must be in [0, 1], got {confidence_threshold!r}")
    if not float(temperature) >= 0.0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
    if not 0.0 < float(top_p) <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (1 = off), got {top_p!r}")

    vocab = model.config.get_text_config().vocab_size
    mask_id = mask_token_id if mask_token_id is not None else getattr(model.config, "mask_token_id", None)
    if mask_id is None:
        raise ValueError(
            "mask_token_id is not set: the config has no mask_token_id; pass generate(mask_token_id=...) "
            "or set config.mask_token_id (bard-convert does)"
        )
    if isinstance(mask_id, bool) or not isinstance(mask_id, int) or not 0 <= mask_id < vocab:
        raise ValueError(f"mask_token_id must be an int in [0, vocab_size={vocab}), got {mask_id!r}")
    eos = _eos_ids(model, eos_token_id)
    if mask_id in eos:
        raise ValueError(f"mask_token_id {mask_id} must differ from eos_token_id {list(eos)}")
    # Never commit the mask token (upstream could); also never pad unless it is an EOS.
    banned = [mask_id]
    pad = getattr(model.config.get_text_config(), "pad_token_id", None)
    if pad is not None and pad not in eos and pad != mask_id:
        banned.append(pad)
    return DecodeOptions(
        max_new_tokens=max_new_tokens,
        block_size=block_size,
        denoising_steps=denoising_steps,
        temperature=float(temperature),
        top_k=top_k,
        top_p=float(top_p),
        remasking_strategy=remasking_strategy,
        confidence_threshold=float(confidence_threshold),
        mask_token_id=mask_id,
        eos_token_ids=eos,
        banned_token_ids=tuple(banned),
        causal_prompt=prompt_attention == "causal",
    )


def check_prompt(model, inputs: dict) -> None:
    """Left padding, and vision inputs that match their placeholder tokens (checked before the vision tower)."""
    ids = inputs.get("input_ids")
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[1] == 0:
        raise ValueError("batch['input_ids'] must be a non-empty [N, P] tensor (the processor output)")
    attn = inputs.get("attention_mask")
    if attn is not None:
        if attn.shape != ids.shape:
            raise ValueError(f"attention_mask shape {tuple(attn.shape)} != input_ids shape {tuple(ids.shape)}")
        a = attn.long()
        if bool((a[:, 1:] < a[:, :-1]).any()) or bool((a.sum(1) == 0).any()):
            raise ValueError(
                "attention_mask must be left-padded with at least one real token per row "
                "(set processor.tokenizer.padding_side = 'left')"
            )
    config = model.config
    merge = config.vision_config.spatial_merge_size ** 2
    for kind, token_id, pixels_key, grid_key in (
        ("image", config.image_token_id, "pixel_values", "image_grid_thw"),
        ("video", config.video_token_id, "pixel_values_videos", "video_grid_thw"),
    ):
        n_tokens = int((ids == token_id).sum())
        pixels, grid = inputs.get(pixels_key), inputs.get(grid_key)
        if (pixels is None) != (grid is None):
            raise ValueError(f"{pixels_key} and {grid_key} must be given together")
        expected = 0 if grid is None else int((grid.prod(-1) // merge).sum())
        if n_tokens != expected:
            raise ValueError(
                f"input_ids contain {n_tokens} {kind} tokens but {grid_key} describes {expected} "
                f"({0 if grid is None else grid.shape[0]} {kind}s): the {kind}s do not match the prompt's {kind} tokens"
            )
    if (ids == config.image_token_id).any() or (ids == config.video_token_id).any():
        if inputs.get("mm_token_type_ids") is None:
            raise ValueError("batch['mm_token_type_ids'] is required with images/videos (the processor returns it)")

"""Argument, model and prompt checks for ``generate``: every bad input fails before any forward.

The model-free checks (:func:`check_decode_arguments`, :func:`check_mask_token_unused`,
:func:`check_checkpoint_config`) also run in ``bard generate`` before the weights load.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from nemo_automodel_bard.generation.sampling import REMASKING_STRATEGIES
from nemo_automodel_bard.models.bard_vl.configuration import DEFAULT_EOS_TOKEN_ID, PROMPT_ATTENTION_CHOICES

__all__ = [
    "DecodeOptions",
    "NotBardVLError",
    "resolve_options",
    "check_decode_arguments",
    "check_bard_model",
    "check_mask_token_unused",
    "check_checkpoint_config",
    "check_mask_id_in_config_json",
    "check_prompt",
]

CONVERT_HINT = "convert an autoregressive Qwen3-VL first: bard convert --from AR_DIR --to BARD_DIR, then train it"


class NotBardVLError(ValueError):
    """The model (or checkpoint) is not a Bard-VL, or its mask id is not a free embedding row."""


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
    revision_threshold: float = 0.0  # 0 = off; see block_decode ("Token revision")


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
    revision_threshold=0.0,
) -> DecodeOptions:
    """Check every argument and the model; raise ValueError naming the problem and its allowed values.

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
    check_decode_arguments(
        max_new_tokens=max_new_tokens,
        block_size=block_size,
        denoising_steps=denoising_steps,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        remasking_strategy=remasking_strategy,
        confidence_threshold=confidence_threshold,
        revision_threshold=revision_threshold,
    )
    vocab = model.config.get_text_config().vocab_size
    mask_id = mask_token_id if mask_token_id is not None else getattr(model.config, "mask_token_id", None)
    if mask_id is None:
        raise ValueError(
            "mask_token_id is not set: the config has no mask_token_id; pass generate(mask_token_id=...) "
            "(bard generate --mask-token-id N) or set config.mask_token_id (bard convert does)"
        )
    if isinstance(mask_id, bool) or not isinstance(mask_id, int) or not 0 <= mask_id < vocab:
        raise ValueError(f"mask_token_id must be an int in [0, vocab_size={vocab}), got {mask_id!r}")
    eos = _eos_ids(model, eos_token_id)
    check_bard_model(model, mask_id)
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
        revision_threshold=float(revision_threshold),
    )


def check_decode_arguments(
    *,
    max_new_tokens,
    block_size,
    denoising_steps,
    temperature,
    top_k,
    top_p,
    remasking_strategy,
    confidence_threshold,
    revision_threshold=0.0,
) -> None:
    """Model-free argument checks (``bard generate`` runs them before loading weights).

    ``block_size`` / ``denoising_steps`` may be None (not given: the checkpoint's config decides,
    and :func:`resolve_options` checks the resolved values).
    """
    _positive_int("max_new_tokens", max_new_tokens)
    if block_size is not None:
        _positive_int("block_size", block_size)
    if denoising_steps is not None:
        _positive_int("denoising_steps", denoising_steps)
    if remasking_strategy not in REMASKING_STRATEGIES:
        raise ValueError(f"remasking_strategy must be one of {REMASKING_STRATEGIES}, got {remasking_strategy!r}")
    if (
        remasking_strategy == "low_confidence_static"
        and None not in (block_size, denoising_steps)
        and denoising_steps > block_size
    ):
        raise ValueError(
            f"denoising_steps must be in [1, block_size={block_size}] for low_confidence_static "
            f"(a step must commit at least one token), got {denoising_steps}"
        )
    if not 0.0 <= float(confidence_threshold) <= 1.0:
        raise ValueError(f"confidence_threshold must be in [0, 1], got {confidence_threshold!r}")
    if isinstance(revision_threshold, bool) or not 0.0 <= float(revision_threshold) < 1.0:
        raise ValueError(f"revision_threshold must be in [0, 1) (0 = off), got {revision_threshold!r}")
    if float(revision_threshold) > 0 and remasking_strategy != "low_confidence_dynamic":
        raise ValueError("revision_threshold needs remasking_strategy='low_confidence_dynamic' (re-masked tokens "
                         f"make a block's step count data-dependent), got {remasking_strategy!r}")
    # inf would turn every logit into 0/inf = NaN probabilities; NaN fails every comparison.
    if not (math.isfinite(float(temperature)) and float(temperature) >= 0.0):
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
    if not 0.0 < float(top_p) <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (1 = off), got {top_p!r}")


def _special_ids(config) -> dict[int, str]:
    """Token ids the config gives a meaning (vision placeholders, bos/eos/pad) -> the key naming them."""
    text = config.get_text_config()
    named = {}
    for owner in (text, config):
        for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id",
                    "bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(owner, key, None)
            for token_id in [value] if isinstance(value, int) else list(value or []):
                named.setdefault(token_id, key)
    return named


def check_bard_model(model, mask_id: int) -> None:
    """Refuse a model that is not a Bard-VL, or whose ``mask_id`` is not a real, unused embedding row.

    Cheap config-only checks: an autoregressive Qwen3-VL loaded through the Bard-VL class keeps
    ``architectures: [Qwen3VLForConditionalGeneration]`` and would decode meaningless text.
    """
    config = model.config
    if getattr(config, "model_type", None) != "bard_vl":
        raise NotBardVLError(
            f"generate() needs a Bard-VL model, got model_type {getattr(config, 'model_type', None)!r}; {CONVERT_HINT}"
        )
    architectures = list(getattr(config, "architectures", None) or [])
    if architectures and not any(str(name).startswith("BardVL") for name in architectures):
        raise NotBardVLError(
            f"this checkpoint is not a Bard-VL (config architectures {architectures}): block-diffusion decoding "
            f"of an autoregressive model prints meaningless text; {CONVERT_HINT}"
        )
    rows = model.get_input_embeddings().num_embeddings
    if not 0 <= mask_id < rows:
        raise NotBardVLError(f"mask_token_id {mask_id} is not a row of the embedding table ({rows} rows)")
    used = _special_ids(config)
    if mask_id in used:
        raise NotBardVLError(
            f"mask_token_id {mask_id} is the config's {used[mask_id]}, not a free embedding row; pass the id "
            "bard convert registered (config.json mask_token_id)"
        )


def check_mask_token_unused(tokenizer, mask_id: int) -> None:
    """Refuse a ``mask_id`` that the tokenizer uses for an ordinary token or a named special.

    Free: beyond the tokenizer (a spare row, as in the released checkpoints) or an added special
    token such as the ``<|mask|>`` that ``bard convert`` registers.
    """
    token = tokenizer.convert_ids_to_tokens(mask_id)
    if token is None:
        return
    added = getattr(tokenizer, "added_tokens_decoder", {}).get(mask_id)
    named = {getattr(tokenizer, f"{name}_token", None) for name in ("bos", "eos", "pad", "unk")}
    if added is None or not getattr(added, "special", False) or token in named:
        raise NotBardVLError(
            f"mask_token_id {mask_id} is the tokenizer's token {token!r}, which prompts and answers use; "
            f"pass --mask-token-id with the id bard convert registered (config.json mask_token_id)"
        )


def check_mask_id_in_config_json(config: dict, mask_id: int) -> None:
    """Refuse a ``mask_id`` that a ``*_token_id`` of ``config.json`` (or its text config) already names."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    for key, value in {**text, **config}.items():
        ids = value if isinstance(value, list) else [value]
        if key.endswith("_token_id") and key != "mask_token_id" and mask_id in ids:
            raise NotBardVLError(
                f"mask_token_id {mask_id} is config.json's {key}, not a free embedding row; pass the id "
                "bard convert registered (config.json mask_token_id)"
            )


def check_checkpoint_config(path: str | Path) -> dict:
    """Read ``path/config.json`` and refuse folders that are missing or not Bard-VL checkpoints."""
    path = Path(path)
    if not path.exists():
        raise NotBardVLError(f"model folder not found: {path}")
    config_path = path / "config.json"
    if not path.is_dir() or not config_path.is_file():
        raise NotBardVLError(f"{path} is not a checkpoint folder (no config.json)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise NotBardVLError(f"{config_path} is not valid JSON: {err}") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type != "bard_vl":
        raise NotBardVLError(f"{path} is not a Bard-VL checkpoint (model_type {model_type!r}); {CONVERT_HINT}")
    return config


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

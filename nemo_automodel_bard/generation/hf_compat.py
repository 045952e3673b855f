"""Hugging Face calling convention for ``BardVLForConditionalGeneration.generate``.

Two conventions share ``model.generate``:

* Bard's: ``generate(batch, max_new_tokens, block_size=..., ...)`` with the processor output as
  the first argument; returns the **response** ids only (``block_generate``).
* HF's: ``generate(**inputs, max_new_tokens=128, do_sample=False, generation_config=...)``
  (or ``generate(input_ids, ...)``), as the Qwen3-VL card, most HF code and the
  ``image-text-to-text`` pipeline call it; returns **prompt + response** rows, so
  ``out[:, inputs["input_ids"].shape[1]:]`` is the response, as with any HF model.

This module only translates the HF call into ``block_generate``'s arguments and its result
back into HF's layout; decoding itself is ``block_generate``'s. Generation options are merged
by transformers' own ``_prepare_generation_config`` (call arguments > ``generation_config`` >
the checkpoint's ``generation_config.json`` > HF's global defaults), then mapped:

* ``do_sample=False`` -> greedy (``temperature=0``; ``temperature``/``top_k``/``top_p`` are
  ignored, as HF does); ``do_sample=True`` -> ``temperature``, ``top_k`` (0 or None: off),
  ``top_p`` of the merged config;
* ``max_new_tokens``, else ``max_length - prompt length``;
* ``eos_token_id`` (int or list), ``pad_token_id`` (fills each row after its EOS; unset: the
  first EOS, as ``block_generate`` pads), ``use_cache``, ``return_dict_in_generate``
  (``sequences`` only), ``streamer``;
* Bard's own options (``block_size``, ``denoising_steps``, ``remasking_strategy``,
  ``confidence_threshold``, ``mask_token_id``, ``generator``, ``return_step_stats``) pass
  through unchanged, e.g. from a pipeline's ``generate_kwargs``.

Anything HF's ``generate`` would do differently (beam search, several return sequences,
repetition penalties, logits processors, ...) is refused with a ``ValueError`` naming the
option; unknown keyword arguments raise ``TypeError``. A right-padded batch is moved to left
padding for decoding (each sample's tokens are unchanged); the returned prompt part is the
caller's ``input_ids`` as given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from transformers import GenerationConfig
from transformers.generation.utils import GenerateDecoderOnlyOutput

from nemo_automodel_bard.generation.block_decode import block_generate

__all__ = ["is_hf_call", "hf_generate", "MODEL_INPUT_KEYS"]

# Processor outputs that generate() takes as keyword arguments (what block_generate reads).
MODEL_INPUT_KEYS = (
    "input_ids",
    "attention_mask",
    "pixel_values",
    "image_grid_thw",
    "pixel_values_videos",
    "video_grid_thw",
    "mm_token_type_ids",
)
# Per-token inputs that move with the tokens when right padding is turned into left padding.
_PER_TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")

# Names shared by Bard's signature and HF's generation config: in HF mode they are HF options.
_SHARED_OPTIONS = ("max_new_tokens", "temperature", "top_k", "top_p", "eos_token_id")

# GenerationConfig fields block diffusion does not implement. A field set to None, False or
# HF's global default is a no-op and accepted (released generation_config.json files carry e.g.
# repetition_penalty=1.0); any other value is refused by name.
_UNSUPPORTED_CONFIG_FIELDS = (
    "num_beams",
    "num_beam_groups",
    "num_return_sequences",
    "diversity_penalty",
    "penalty_alpha",
    "dola_layers",
    "repetition_penalty",
    "encoder_repetition_penalty",
    "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size",
    "bad_words_ids",
    "sequence_bias",
    "min_length",
    "min_new_tokens",
    "typical_p",
    "epsilon_cutoff",
    "eta_cutoff",
    "min_p",
    "top_h",
    "exponential_decay_length_penalty",
    "suppress_tokens",
    "begin_suppress_tokens",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "guidance_scale",
    "watermarking_config",
    "stop_strings",
    "max_time",
    "token_healing",
    "prompt_lookup_num_tokens",
    "assistant_early_exit",
    "cache_implementation",
    "output_scores",
    "output_logits",
    "output_attentions",
    "output_hidden_states",
)
# Arguments of HF's generate() (not config fields) that have no block-diffusion meaning.
_UNSUPPORTED_ARGUMENTS = (
    "logits_processor",
    "stopping_criteria",
    "prefix_allowed_tokens_fn",
    "synced_gpus",
    "assistant_model",
    "negative_prompt_ids",
    "negative_prompt_attention_mask",
    "custom_generate",
    "past_key_values",
    "inputs_embeds",
)
# Accepted and without effect here: HF's generate uses the tokenizer only for stop_strings.
_IGNORED_ARGUMENTS = ("tokenizer",)


def is_hf_call(batch: Any, hf_kwargs: Mapping[str, Any]) -> bool:
    """True for ``generate(**inputs, ...)`` / ``generate(input_ids, ...)``; False for ``generate(batch, ...)``.

    Raises:
        TypeError: a processor batch passed positionally together with HF-only keyword
            arguments (the two conventions return different things, so one call uses one).
    """
    if batch is None or isinstance(batch, torch.Tensor):
        return True
    if hf_kwargs:
        raise TypeError(
            f"generate(batch, ...) takes Bard's options only, got {sorted(hf_kwargs)}. For Hugging Face options "
            "pass the processor output as keyword arguments, generate(**batch, ...) (returns prompt + response)."
        )
    return False


def hf_generate(model: torch.nn.Module, batch: torch.Tensor | None, options: dict[str, Any], **hf_kwargs: Any):
    """Run ``block_generate`` for an HF-style call; return prompt + response rows.

    Args:
        batch: ``input_ids`` given positionally (HF's ``inputs``), or None.
        options: ``generate``'s named arguments (Bard's signature); ``None`` means not given.
        hf_kwargs: model inputs (``input_ids``, ``attention_mask``, ``pixel_values``, ...),
            ``generation_config`` and HF generation options.

    Returns:
        ``LongTensor [B, P + L]`` (the caller's ``input_ids`` then the response, each row
        padded after its EOS with ``pad_token_id``), a ``GenerateDecoderOnlyOutput`` with
        ``return_dict_in_generate=True``, and ``(that, StepStats)`` with ``return_step_stats``.
    """
    options = dict(options)
    hf_kwargs = _with_input_ids(batch, hf_kwargs)
    shared = {name: value for name in _SHARED_OPTIONS if (value := options.pop(name, None)) is not None}
    generation_config, rest = model._prepare_generation_config(hf_kwargs.pop("generation_config", None), **shared, **hf_kwargs)
    _check_supported(generation_config, rest)
    inputs = {key: rest.pop(key) for key in MODEL_INPUT_KEYS if rest.get(key) is not None}
    if "input_ids" not in inputs:
        raise ValueError("generate() needs input_ids (generate(**processor_output, ...) or generate(input_ids, ...))")
    prompt_ids = inputs["input_ids"]
    sampling = _sampling_options(generation_config)
    user_stats = options.pop("return_step_stats", False)
    response, stats = block_generate(
        model,
        _left_padded(inputs),
        max_new_tokens=_max_new_tokens(generation_config, prompt_ids.shape[1]),
        **sampling,
        **{k: v for k, v in options.items() if v is not None},
        eos_token_id=generation_config.eos_token_id,
        return_step_stats=True,
        use_cache=bool(generation_config.use_cache),
    )
    response = _pad_after_eos(response, stats.num_tokens, generation_config.pad_token_id)
    sequences = torch.cat([prompt_ids.to(response.device), response], dim=1)
    out = GenerateDecoderOnlyOutput(sequences=sequences) if generation_config.return_dict_in_generate else sequences
    return (out, stats) if user_stats else out


def _with_input_ids(batch: torch.Tensor | None, hf_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Fold HF's positional ``inputs`` (or ``inputs=``) into ``input_ids``."""
    hf_kwargs = dict(hf_kwargs)
    given = [t for t in (batch, hf_kwargs.pop("inputs", None)) if t is not None]
    if given:
        if len(given) > 1 or hf_kwargs.get("input_ids") is not None:
            raise ValueError("input_ids given twice (positionally / as inputs= and as input_ids=)")
        hf_kwargs["input_ids"] = given[0]
    return hf_kwargs


def _check_supported(config: GenerationConfig, rest: dict[str, Any]) -> None:
    """Refuse HF options block diffusion does not implement, and unknown arguments."""
    defaults = GenerationConfig._get_default_generation_params()
    bad = [
        f"{name}={value!r}"
        for name in _UNSUPPORTED_CONFIG_FIELDS
        if (value := getattr(config, name, None)) is not None and value is not False and value != defaults.get(name)
    ]
    bad += [f"{name}=..." for name in _UNSUPPORTED_ARGUMENTS if rest.pop(name, None) is not None]
    if bad:
        raise ValueError(
            f"Bard-VL's block-diffusion generate() does not support {', '.join(bad)} "
            "(greedy or sampled decoding of one sequence per prompt only)"
        )
    for name in _IGNORED_ARGUMENTS:
        rest.pop(name, None)
    unknown = sorted(k for k, v in rest.items() if k not in MODEL_INPUT_KEYS and v is not None)
    if unknown:
        raise TypeError(
            f"generate() got unexpected keyword arguments {unknown}; model inputs are {list(MODEL_INPUT_KEYS)}"
        )


def _sampling_options(config: GenerationConfig) -> dict[str, Any]:
    """HF's ``do_sample`` / ``temperature`` / ``top_k`` / ``top_p`` as ``block_generate`` takes them."""
    if not config.do_sample:
        return {"temperature": 0.0, "top_k": 0, "top_p": 1.0}
    if config.temperature is None or config.temperature <= 0:
        raise ValueError(f"do_sample=True needs temperature > 0, got {config.temperature!r}")
    top_p = 1.0 if config.top_p is None else config.top_p
    return {"temperature": float(config.temperature), "top_k": int(config.top_k or 0), "top_p": float(top_p)}


def _max_new_tokens(config: GenerationConfig, prompt_len: int) -> int:
    """``max_new_tokens``, else HF's ``max_length`` (prompt included) minus the prompt."""
    if config.max_new_tokens is not None:
        return config.max_new_tokens
    budget = config.max_length - prompt_len
    if budget <= 0:
        raise ValueError(
            f"max_length={config.max_length} leaves no room after the {prompt_len}-token prompt; pass max_new_tokens"
        )
    return budget


def _left_padded(inputs: dict[str, Any]) -> dict[str, Any]:
    """Right-padded rows moved to left padding (block_generate decodes left-padded batches)."""
    mask = inputs.get("attention_mask")
    if mask is None or mask.dim() != 2:
        return inputs
    mask = mask.long()
    non_increasing = not bool((mask[:, 1:] > mask[:, :-1]).any())
    if not (non_increasing and bool((mask[:, -1] == 0).any())):
        return inputs  # left-padded, unpadded, or invalid (block_generate names the problem)
    # A stable sort on the mask puts each row's padding first and keeps its tokens in order.
    order = torch.sort(mask, dim=1, stable=True).indices
    moved = {key: inputs[key].gather(1, order.to(inputs[key].device)) for key in _PER_TOKEN_KEYS if key in inputs}
    return {**inputs, **moved}


def _pad_after_eos(response: torch.Tensor, lengths: list[int], pad_token_id: int | None) -> torch.Tensor:
    """Fill each row after its own length (its EOS) with ``pad_token_id``, as HF's generate pads."""
    if pad_token_id is None:
        return response
    positions = torch.arange(response.shape[1], device=response.device)
    finished = positions[None, :] >= torch.tensor(lengths, device=response.device)[:, None]
    return response.masked_fill(finished, pad_token_id)

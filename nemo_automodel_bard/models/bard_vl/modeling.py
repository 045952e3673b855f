"""``BardVLForConditionalGeneration``: AutoModel's Qwen3-VL with block-diffusion attention.

Only what block diffusion changes (bard_spec.md section 1) lives here; the network, the
vision tower, DeepStack, FSDP2 parallelizer and HF checkpointing are inherited:

* text attention is non-causal: the caller passes the block-diffusion mask as an additive
  ``[B, 1, Q, K]`` float mask (or a bool one, converted here so that sdpa and eager agree,
  decision D5), or a FlexAttention ``BlockMask`` once the text layers use
  ``flex_attention`` (:meth:`set_text_attention`; the vision tower keeps its own backend);
* ``position_ids`` are required (mRoPE ids, see :meth:`rope_positions`): with a 4-D mask the
  model cannot infer them;
* logits are **unshifted** (logit ``i`` predicts token ``i``) and ``forward`` never computes a
  loss: HF's shifted next-token loss is wrong for diffusion, so ``labels`` are refused;
* ``lm_head_fn`` replaces the LM head on the kept positions by the caller's function of
  ``(hidden [N, H], head weight [V, H])`` (the recipes' chunked loss and teacher top-k,
  ``diffusion/chunked_head.py``); it runs inside this forward because that is where FSDP2
  has the head's weight unsharded;
* ``generate`` is exact-cache block-diffusion decoding (``nemo_automodel_bard.generation``).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

import torch
from nemo_automodel.components.models.qwen3_vl.model import (
    Qwen3VLForConditionalGeneration as AutoModelQwen3VLForConditionalGeneration,
)
from transformers import PreTrainedModel
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLCausalLMOutputWithPast

from nemo_automodel_bard.models.bard_vl.configuration import BardVLConfig
from nemo_automodel_bard.models.bard_vl.processor_files import warn_if_stock_processor

try:  # FlexAttention is optional (absent on some builds)
    from torch.nn.attention.flex_attention import BlockMask
except ImportError:  # pragma: no cover
    BlockMask = ()  # type: ignore[assignment,misc]

__all__ = [
    "BardVLForConditionalGeneration",
    "BardVLOutput",
    "MASK_ATTENTION_IMPLEMENTATIONS",
    "TEXT_ATTENTION_IMPLEMENTATIONS",
]

# Attention backends that honour an arbitrary 4-D additive mask. flash_attention_* ignore it
# (bard_spec.md section 1), so they are refused rather than silently wrong.
MASK_ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")
# What the text layers may run: the dense-mask backends, or FlexAttention with a BlockMask.
TEXT_ATTENTION_IMPLEMENTATIONS = (*MASK_ATTENTION_IMPLEMENTATIONS, "flex_attention")


@dataclass
class BardVLOutput(Qwen3VLCausalLMOutputWithPast):
    """Qwen3-VL's output plus ``head_output``: what ``lm_head_fn`` returned (``logits`` is then None)."""

    head_output: Any = None


class BardVLForConditionalGeneration(AutoModelQwen3VLForConditionalGeneration):
    """Block-diffusion Qwen3-VL (Bard-VL). Same module tree and state-dict keys as Qwen3-VL."""

    config_class = BardVLConfig
    # Flex opt-in (transformers checks this flag before allowing attn_implementation="flex_attention").
    # Qwen3-VL's text attention already dispatches through transformers' attention interface,
    # whose flex_attention function takes a BlockMask as the mask; what stock Qwen3-VL lacks is a
    # mask to give it, and this subclass builds one (diffusion/flex_masks.py).
    _supports_flex_attn = True

    # FSDP2 layer grouping (automodel_notes.md section 1).
    parallel_layer_groups = {"language": ("model.language_model.layers",), "vision": ("model.visual.blocks",)}

    @dataclass(frozen=True)
    class ModelCapabilities:
        """Context parallelism shards the sequence with AutoModel's causal assumptions: off."""

        supports_tp: bool = False
        supports_cp: bool = False
        supports_pp: bool = False
        supports_ep: bool = False
        supports_thd: bool = False
        supports_cp_vision_frame_sharding: bool = False

    def __init__(self, config: BardVLConfig) -> None:
        super().__init__(config)
        # Non-causal text attention (bard_spec.md section 1, difference 1): the mask says it all.
        for layer in self.model.language_model.layers:
            layer.self_attn.is_causal = False
        # transformers asks each sub-model in turn: the text model is the one that runs flex.
        self.model.language_model._supports_flex_attn = True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *model_args: Any, **kwargs: Any):
        """transformers' ``from_pretrained``, plus one warning when the checkpoint's processor files
        name ``Qwen3VLProcessor`` (released checkpoints do; the model card's snippet then fails in
        ``AutoProcessor``'s class; the warning gives the one-time fix). Loading is unchanged."""
        loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        warn_if_stock_processor(pretrained_model_name_or_path, subfolder=kwargs.get("subfolder") or "")
        return loaded

    def set_text_attention(self, implementation: str) -> None:
        """Run the text layers with ``implementation`` (``sdpa``, ``eager`` or ``flex_attention``).

        Only the text sub-config changes (transformers' per-sub-config ``set_attn_implementation``):
        the vision tower keeps its own backend (its per-image attention takes no BlockMask).
        With ``flex_attention`` the forward then takes a ``BlockMask`` (and nothing else).
        """
        if implementation not in TEXT_ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"text attention implementation must be one of {TEXT_ATTENTION_IMPLEMENTATIONS}, got {implementation!r}"
            )
        self.set_attn_implementation({"text_config": implementation})

    def save_pretrained(self, save_directory: str, checkpointer: Any = None, tokenizer: Any = None, **kwargs: Any) -> None:
        """Save HF safetensors + config; with a NeMo ``checkpointer`` use AutoModel's (distributed) path.

        AutoModel's mixin requires a checkpointer; a plain single-process save falls back to
        transformers' ``PreTrainedModel.save_pretrained`` (same key names either way).
        """
        if checkpointer is not None:
            super().save_pretrained(save_directory, checkpointer=checkpointer, tokenizer=tokenizer, **kwargs)
            return
        PreTrainedModel.save_pretrained(self, save_directory, **kwargs)
        if tokenizer is not None:
            tokenizer.save_pretrained(save_directory)

    # ------------------------------------------------------------------ positions
    def rope_positions(
        self,
        input_ids: torch.Tensor,
        mm_token_type_ids: torch.Tensor | None,
        image_grid_thw: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """mRoPE ids of a (left-padded) prompt batch.

        Args:
            input_ids: ``[B, L]``.
            mm_token_type_ids: ``[B, L]`` (0 text, 1 image, 2 video) as the processor returns;
                None means text only.
            attention_mask: ``[B, L]`` 0/1 padding mask; padding gets position 0.

        Returns:
            ``position_ids [3, B, L]`` and ``rope_deltas [B, 1]``; the next token of sample
            ``b`` sits at ``position_ids[:, b].max() + 1`` on all three axes.
        """
        if mm_token_type_ids is None:
            vision_ids = (self.config.image_token_id, self.config.video_token_id)
            if any(bool((input_ids == i).any()) for i in vision_ids):
                raise ValueError("mm_token_type_ids is required when input_ids contain image or video tokens")
            mm_token_type_ids = torch.zeros_like(input_ids, dtype=torch.int)
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError(f"rope_positions takes a [B, L] padding mask, got shape {tuple(attention_mask.shape)}")
        video_grid_thw = None if video_grid_thw is None else video_grid_thw.clone()  # get_rope_index edits it
        return self.model.get_rope_index(
            input_ids,
            mm_token_type_ids,
            image_grid_thw=image_grid_thw,
            video_grid_thw=video_grid_thw,
            attention_mask=attention_mask,
        )

    # ------------------------------------------------------------------ forward
    def _text_attn_implementation(self) -> str:
        return self.model.language_model.config._attn_implementation or "eager"

    def _prepare_mask(
        self, attention_mask: Any, q_len: int, kv_len: int, dtype: torch.dtype, cache: Any = None
    ) -> Any:
        """Validate the block-diffusion mask and bring it into the form sdpa and eager agree on."""
        impl = self._text_attn_implementation()
        block_cache = getattr(cache, "is_block_kv_cache", False)
        if attention_mask is None and block_cache and impl in MASK_ATTENTION_IMPLEMENTATIONS:
            # Decoding step whose queries see every key of the cache's view (a noisy block of
            # an unpadded batch): no mask for the kernel to read.
            return None
        if isinstance(attention_mask, BlockMask):
            if impl != "flex_attention":
                raise ValueError(
                    f"a FlexAttention BlockMask needs the text layers on flex_attention (model.set_text_attention), "
                    f"got {impl!r}"
                )
            if tuple(attention_mask.shape[-2:]) != (q_len, kv_len):
                raise ValueError(
                    f"BlockMask covers [Q, K]={tuple(attention_mask.shape[-2:])}, the input needs [{q_len}, {kv_len}]"
                )
            return attention_mask
        if impl == "flex_attention":
            raise ValueError(
                "the text layers run flex_attention, which takes the block-diffusion mask as a BlockMask "
                "(nemo_automodel_bard.diffusion.flex_masks); got "
                + (f"a tensor of shape {tuple(attention_mask.shape)}" if isinstance(attention_mask, torch.Tensor)
                   else type(attention_mask).__name__)
            )
        if impl not in MASK_ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"BardVL attention needs an arbitrary 4-D mask; attn_implementation={impl!r} cannot take one. "
                f"Use one of {MASK_ATTENTION_IMPLEMENTATIONS} (or 'flex_attention' with a BlockMask)."
            )
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 4:
            raise ValueError(
                "attention_mask must be the block-diffusion mask: a [B, 1, Q, K] additive float (or bool) tensor "
                "from nemo_automodel_bard.diffusion.masks (a 2-D padding mask would make HF build a causal mask); "
                f"got {type(attention_mask).__name__}"
                + (f" of shape {tuple(attention_mask.shape)}" if isinstance(attention_mask, torch.Tensor) else "")
            )
        if attention_mask.shape[1] != 1 or attention_mask.shape[2] != q_len or attention_mask.shape[3] != kv_len:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} does not match [B, 1, Q={q_len}, K={kv_len}] "
                "(K = cached tokens + Q, or the BlockKVCache window's view)"
            )
        if impl == "sdpa":
            # sdpa takes a bool mask whatever the compute dtype. A float mask must match the query
            # dtype, which under FSDP2 mixed precision differs from the (fp32, sharded) weights.
            if attention_mask.dtype == torch.bool:
                return attention_mask
            return attention_mask > torch.finfo(attention_mask.dtype).min / 2
        if attention_mask.dtype == torch.bool:
            # eager adds a bool mask to the scores (silently wrong, D5): make it additive.
            additive = torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device)
            return additive.masked_fill_(~attention_mask, torch.finfo(dtype).min)
        # Clamp before casting: fp32's minimum overflows to -inf in bf16 (NaN on empty rows).
        return attention_mask.clamp(min=torch.finfo(dtype).min).to(dtype)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Any | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        mm_token_type_ids: torch.IntTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        lm_head_fn: Callable[[torch.Tensor, torch.Tensor], Any] | None = None,
        **kwargs: Any,
    ) -> BardVLOutput:
        """Block-diffusion forward returning unshifted logits.

        Args:
            input_ids: ``[B, Q]`` current tokens (prompt, clean and/or noisy blocks).
            attention_mask: ``[B, 1, Q, K]`` additive float (0 attend, large negative block) or
                bool (True attend) mask, ``K = cached + Q``; or a ``BlockMask``.
            position_ids: ``[3, B, Q]`` mRoPE ids (or ``[4, B, Q]``, text positions first).
            past_key_values: an HF ``Cache`` holding the first ``K - Q`` keys; with
                ``use_cache`` it is appended to (crop it to keep it read-only).
            labels: refused (this model never computes HF's shifted loss).
            mm_token_type_ids: accepted for API compatibility; positions come from ``position_ids``.
            logits_to_keep: ``0`` all, ``int k`` the last ``k`` positions, a 1-D index tensor,
                a 2-D bool ``[B, Q]`` selection (returns packed ``[N, V]`` logits) or a 2-D int
                ``[B, K]`` gather.
            lm_head_fn: run instead of the LM head as ``lm_head_fn(hidden, weight)`` on the
                kept hidden states (``[N, H]`` for a bool ``logits_to_keep``) and the head's
                ``[V, H]`` weight, e.g. a loss computed in chunks of rows so that ``[N, V]``
                logits never exist. It runs here, not on returned logits, because under FSDP2
                the head's weight is only unsharded inside this forward (and its backward).

        Returns:
            ``BardVLOutput`` with ``logits [B, kept, V]`` (or ``[N, V]``), where the logit at
            position ``i`` predicts token ``i``, or with ``logits=None`` and ``head_output``
            when ``lm_head_fn`` is given; ``loss`` is always None.
        """
        del mm_token_type_ids  # positions are explicit
        if labels is not None:
            raise ValueError(
                "BardVLForConditionalGeneration.forward computes no loss (HF's loss is shifted next-token CE, "
                "wrong for diffusion): pop 'labels' and apply the diffusion loss to the unshifted logits"
            )
        if position_ids is None:
            raise ValueError(
                "position_ids is required ([3, B, Q] mRoPE ids, see BardVLForConditionalGeneration.rope_positions): "
                "with a 4-D block-diffusion mask the model cannot infer them"
            )
        q_len = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        # Keys the attention reads: cached + Q for a DynamicCache, the window's view for a BlockKVCache.
        kv_len = past_key_values.get_mask_sizes(q_len, 0)[0] if past_key_values is not None else q_len
        dtype = self.lm_head.weight.dtype if inputs_embeds is None else inputs_embeds.dtype
        attention_mask = self._prepare_mask(attention_mask, q_len, kv_len, dtype, past_key_values)

        with _bidirectional_if_unmasked(self.model.language_model.config, attention_mask is None):
            outputs = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                inputs_embeds=inputs_embeds,
                pixel_values=pixel_values,
                pixel_values_videos=pixel_values_videos,
                image_grid_thw=image_grid_thw,
                video_grid_thw=video_grid_thw,
                use_cache=use_cache,
                **kwargs,
            )
        hidden = _select_positions(outputs.last_hidden_state, logits_to_keep)
        head_output = None if lm_head_fn is None else lm_head_fn(hidden, self._lm_head_weight())
        return BardVLOutput(
            loss=None,
            logits=self.lm_head(hidden) if lm_head_fn is None else None,
            head_output=head_output,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            rope_deltas=None,
        )

    def _lm_head_weight(self) -> torch.Tensor:
        """The LM head's weight as its forward would use it (unsharded under FSDP2).

        A tied head belongs to the root FSDP unit, unsharded for this whole forward. An untied
        one is its own unit (AutoModel shards it apart, kept gathered after forward), only
        gathered when its forward runs: ``unshard()`` gathers it the same way; the root's
        end-of-backward callback then reduce-scatters its gradient and reshards it.
        """
        head = self.lm_head
        if getattr(head, "bias", None) is not None:
            raise ValueError("lm_head_fn needs a bias-free linear LM head (Qwen3-VL's has none)")
        if hasattr(head.weight, "full_tensor") and hasattr(head, "unshard"):  # a sharded FSDP2 unit
            head.unshard()
        weight = head.weight
        if hasattr(weight, "full_tensor"):
            raise ValueError(f"the LM head's weight is still sharded ({type(weight).__name__}) inside the forward")
        return weight

    # ------------------------------------------------------------------ decoding
    def generate(
        self,
        batch: Any = None,
        max_new_tokens: int | None = None,
        block_size: int | None = None,
        denoising_steps: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        remasking_strategy: str = "low_confidence_dynamic",
        confidence_threshold: float = 0.5,
        return_step_stats: bool = False,
        *,
        mask_token_id: int | None = None,
        eos_token_id: int | list[int] | None = None,
        generator: torch.Generator | None = None,
        streamer: Any = None,
        prompt_attention: str | None = None,
        compile: bool | dict = False,
        revision_threshold: float = 0.0,
        **hf_kwargs: Any,
    ):
        """Exact-cache, batched block-diffusion decoding; see ``nemo_automodel_bard.generation.block_decode``.

        ``generate(batch, max_new_tokens, ...)`` (the processor output first) returns the
        response only. ``block_size`` and ``prompt_attention`` default to the checkpoint's
        config, ``denoising_steps`` to ``block_size``; ``temperature``/``top_k``/``top_p`` left
        as None mean 0.0 (greedy) / 0 / 1.0; ``compile=True`` compiles the denoising steps;
        ``revision_threshold > 0`` re-masks committed tokens of the current block whose
        probability fell below it (dynamic strategy; for mixed-noise-trained models).
        ``generate(**batch, max_new_tokens=..., do_sample=..., generation_config=...)`` is
        Hugging Face's convention and returns prompt + response rows
        (``nemo_automodel_bard.generation.hf_compat``).

        Returns:
            ``LongTensor [B, T]`` response ids (truncated after each sample's EOS, padded with
            the EOS id), or ``(ids, StepStats)`` when ``return_step_stats``.
        """
        from nemo_automodel_bard.generation.block_decode import block_generate
        from nemo_automodel_bard.generation.hf_compat import hf_generate, is_hf_call

        options = dict(
            max_new_tokens=max_new_tokens,
            block_size=block_size,
            denoising_steps=denoising_steps,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            remasking_strategy=remasking_strategy,
            confidence_threshold=confidence_threshold,
            return_step_stats=return_step_stats,
            mask_token_id=mask_token_id,
            eos_token_id=eos_token_id,
            generator=generator,
            streamer=streamer,
            prompt_attention=prompt_attention,
            compile=compile,
            revision_threshold=revision_threshold,
        )
        if is_hf_call(batch, hf_kwargs):
            return hf_generate(self, batch, options, **hf_kwargs)
        # None = not given: block_generate's defaults apply.
        return block_generate(self, batch, **{k: v for k, v in options.items() if v is not None})


@contextmanager
def _bidirectional_if_unmasked(text_config: Any, unmasked: bool):
    """A mask-free decoding step (see ``_prepare_mask``): transformers must build no mask, not a
    causal one. ``is_causal = False`` on the text config does that (bidirectional, skipped for
    sdpa without padding); it is set only for this forward, so a stock model built from the
    same config stays causal."""
    if not unmasked:
        yield
        return
    previous = text_config.__dict__.get("is_causal", _UNSET)
    text_config.is_causal = False
    try:
        yield
    finally:
        if previous is _UNSET:
            del text_config.is_causal
        else:
            text_config.is_causal = previous


_UNSET = object()


def _select_positions(hidden: torch.Tensor, logits_to_keep: int | torch.Tensor) -> torch.Tensor:
    """Hidden states ``[B, Q, H]`` -> the positions the LM head runs on (see ``forward``)."""
    if isinstance(logits_to_keep, int):
        if logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be >= 0, got {logits_to_keep}")
        return hidden if logits_to_keep == 0 else hidden[:, -logits_to_keep:]
    if logits_to_keep.dim() == 1:
        return hidden[:, logits_to_keep]
    if logits_to_keep.dim() == 2 and logits_to_keep.dtype == torch.bool:
        if logits_to_keep.shape != hidden.shape[:2]:
            raise ValueError(f"bool logits_to_keep must be [B, Q]={tuple(hidden.shape[:2])}")
        return hidden[logits_to_keep]
    if logits_to_keep.dim() == 2:
        index = logits_to_keep.to(hidden.device)[..., None].expand(-1, -1, hidden.shape[-1])
        return hidden.gather(1, index)
    raise ValueError(f"logits_to_keep must be an int, a 1-D index, or a 2-D bool/int tensor; got {logits_to_keep.dim()}-D")

"""The model forwards of one ``generate``: which queries, which keys, which mask, compiled or not.

Three kinds of cached forward (bard_spec.md section 7, decision D7):

* **prefill**: block 0, step 0, queries ``[prompt | block 0]`` (with the vision inputs);
  shapes depend on the prompt, so it always runs eagerly;
* **fused commit**: block b > 0, step 0, queries ``[block b-1 final | block b masks]``
  (``2 * block_size`` queries);
* **steady**: every later step, queries ``[block b]`` (``block_size`` queries).

Every forward writes its queries' K/V into the ``BlockKVCache`` at their positions, so the
noisy block is overwritten by the next step and the cache always ends a block holding
``[pad | prompt | committed blocks]`` plus a noisy block the next forward rewrites. The LM
head runs on the last ``block_size`` positions (a fixed slice, no data-dependent selection).

Eager (default): keys are the exact prefix ``[0, end)``, and a steady step of an unpadded
batch passes no mask (its noisy block sees every key). Compiled (``compile=...``): the fused
commit and steady steps read the whole preallocated cache with a mask hiding the unwritten
columns, so their shapes never change between blocks and CUDA graphs can replay them.
"""

from __future__ import annotations

from typing import Callable

import torch

from nemo_automodel_bard.diffusion.masks import NOISY, block_diffusion_mask
from nemo_automodel_bard.generation.kv_cache import BlockKVCache

__all__ = ["BlockForward", "decode_attention_mask", "compile_options"]

VISION_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")


def decode_attention_mask(
    segment: torch.Tensor,
    block: torch.Tensor,
    *,
    start: int,
    end: int,
    block_size: int,
    causal_prompt: bool = False,
) -> torch.Tensor:
    """Mask of one decoding forward: the last ``block_size`` tokens before ``end`` are the noisy block.

    Args:
        segment: ``[N, T]`` layout with every response token ``CLEAN``.
        block: ``[N, T]`` block ids.
        start, end: queries are ``[start, end)``, keys ``[0, end)`` (cache + queries).

    Returns:
        ``[N, end - start, end]`` bool.
    """
    current = segment[:, :end].clone()
    current[:, end - block_size :] = NOISY
    return block_diffusion_mask(current, block[:, :end], causal_prompt=causal_prompt, query_start=start)


def compile_options(compile: bool | dict, device: torch.device) -> dict | None:
    """``generate(compile=...)`` -> ``torch.compile`` kwargs (None: eager).

    ``True`` uses CUDA graphs on CUDA (``mode="reduce-overhead"``) and inductor's default
    mode elsewhere; a dict is passed to ``torch.compile`` as is (e.g. ``{"backend": "eager"}``).
    """
    if compile is False or compile is None:
        return None
    if compile is True:
        return {"mode": "reduce-overhead"} if device.type == "cuda" else {}
    if isinstance(compile, dict):
        return dict(compile)
    raise ValueError(f"compile must be a bool or a dict of torch.compile options, got {compile!r}")


def _text_step(model, input_ids, position_ids, attention_mask, cache, block_size: int) -> torch.Tensor:
    """A fused-commit or steady forward (text only, cached): logits of the last ``block_size`` queries."""
    return model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=block_size,
    ).logits


_COMPILED: dict[tuple, Callable] = {}


def _compiled_step(options: dict) -> Callable:
    """One compiled ``_text_step`` per option set, shared by every ``generate`` call (compiled once)."""
    key = tuple(sorted((k, repr(v)) for k, v in options.items()))
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(_text_step, **options)
    return _COMPILED[key]


class BlockForward:
    """Runs the forwards of one ``generate`` over the decoder's rows (see the module docstring).

    Args:
        rows: the decoder's row state (``tokens``, ``positions``, ``segment``, ``block``), read
            at each call, so rows dropped from it are dropped here too.
        total_length: ``prompt width + n_blocks * block_size``.
        use_cache: False recomputes ``[0, end)`` every step (the uncached reference).
        compiled: ``torch.compile`` kwargs for the fused-commit and steady steps, or None.
    """

    def __init__(
        self, model, rows, inputs: dict, opts, total_length: int, use_cache: bool, compiled: dict | None
    ) -> None:
        self.model, self.rows, self.opts = model, rows, opts
        self.vision_inputs = {k: inputs[k] for k in VISION_KEYS if inputs.get(k) is not None}
        attn = inputs.get("attention_mask")
        self.unpadded = attn is None or bool(attn.bool().all())  # once per generate
        text_config = model.config.get_text_config()
        self.cache = (
            BlockKVCache(text_config.num_hidden_layers, rows.tokens.shape[0], total_length) if use_cache else None
        )
        self.step_fn = _compiled_step(compiled) if compiled is not None else _text_step
        self.compiled = compiled is not None
        self._masks: dict[tuple[int, int, int], torch.Tensor] = {}
        self._inputs: tuple = ((-1, -1), None, None)

    def select(self, keep: torch.Tensor) -> None:
        """Rows ``keep`` only from now on (finished rows dropped; eager mode)."""
        if self.cache is not None:
            self.cache.batch_select_indices(keep)
        self._masks.clear()
        self._inputs = ((-1, -1), None, None)

    def __call__(self, query_start: int, end: int, first_step: bool) -> torch.Tensor:
        """Logits ``[N, block_size, V]`` of the noisy block ``[end - block_size, end)``.

        Args:
            query_start: first query of a cached forward (0 = prefill).
            first_step: the block's first step (fused commit or prefill): needs the mask.
        """
        rows, B = self.rows, self.opts.block_size
        if self.cache is None:  # reference: the whole sequence, every step
            mask = self._mask(0, end, end)
            return self._eager(0, end, mask, vision=True)
        prefill = query_start == 0
        full_view = self.compiled and not prefill
        self.cache.set_window(query_start, end, full_view=full_view, device=rows.tokens.device)
        if not first_step and self.unpadded and not full_view:
            mask = None  # the noisy block sees every key of [0, end)
        else:
            mask = self._mask(query_start, end, self.cache.max_length if full_view else end)
        if prefill:
            return self._eager(0, end, mask, vision=True)
        if self.compiled:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's logits are consumed
        if self._inputs[0] != (query_start, end):  # views: the block's steps see its new tokens
            self._inputs = ((query_start, end), rows.tokens[:, query_start:end], rows.positions[:, :, query_start:end])
        return self.step_fn(self.model, self._inputs[1], self._inputs[2], mask, self.cache, B)

    def _eager(self, start: int, end: int, mask: torch.Tensor | None, vision: bool) -> torch.Tensor:
        rows = self.rows
        out = self.model(
            input_ids=rows.tokens[:, start:end],
            attention_mask=mask,
            position_ids=rows.positions[:, :, start:end],
            past_key_values=self.cache,
            use_cache=self.cache is not None,
            logits_to_keep=self.opts.block_size,
            **(self.vision_inputs if vision else {}),
        )
        return out.logits

    def _mask(self, start: int, end: int, keys: int) -> torch.Tensor:
        """Bool ``[N, 1, end - start, keys]`` mask; columns past ``end`` (unwritten cache) hidden.
        Built once per block and shape (the steps of a block share it)."""
        key = (start, end, keys)
        if key not in self._masks and self.unpadded and start > 0:
            self._masks = {key: _unpadded_block_mask(self.rows.tokens.shape[0], start, end, keys, self.opts.block_size,
                                                     self.rows.tokens.device)}
        if key not in self._masks:
            rows, opts = self.rows, self.opts
            mask = decode_attention_mask(
                rows.segment, rows.block, start=start, end=end, block_size=opts.block_size,
                causal_prompt=opts.causal_prompt,
            )
            if keys > end:
                mask = torch.nn.functional.pad(mask, (0, keys - end), value=False)
            self._masks = {key: mask[:, None]}
        return self._masks[key]



def _unpadded_block_mask(n: int, start: int, end: int, keys: int, block_size: int, device) -> torch.Tensor:
    """``decode_attention_mask`` of a fused-commit or steady forward over unpadded rows, built
    directly: every query sees the prompt and the committed blocks, the noisy block sees
    itself, and the committed block's queries never see the noisy block (D4)."""
    mask = torch.ones(n, 1, end - start, keys, dtype=torch.bool, device=device)
    mask[..., end:] = False  # cache columns not written yet (fixed-shape view)
    mask[:, :, : end - start - block_size, end - block_size : end] = False
    return mask

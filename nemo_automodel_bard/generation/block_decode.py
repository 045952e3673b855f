"""Exact-cache, batched block-diffusion decoding (``BardVLForConditionalGeneration.generate``).

Layout of one row (``T = P + n_blocks * B``)::

    [ left pad | prompt (P_i real tokens) | block 0 | block 1 | ... ]

The KV cache always holds exactly ``[pad | prompt | committed blocks]`` (read-only semantics
through ``DynamicCache.crop``: every forward appends its K/V, the still-noisy block is cropped
off again). Forwards:

* block 0, step 0: ``[prompt | block 0 all masks]`` -- the prefill fused with the first
  denoising pass; the LM head runs only on the block;
* block b > 0, step 0: ``[block b-1 final tokens (CLEAN) | block b masks (NOISY)]`` -- the
  commit of block b-1 fused with block b's first pass (decision D7). Clean queries never see
  noisy keys (D4), so block b-1's K/V are exactly those a separate commit forward would give;
* later steps: ``[block b]`` against the cache.

Masks come from ``diffusion.masks.block_diffusion_mask`` over the whole layout (rows = the
current queries, columns = cache + queries). Prompt block ids count from each sample's first
real token and positions come from ``get_rope_index`` with the padding mask, so a sample's
result does not depend on its batch neighbours. With ``use_cache=False`` the same loop
recomputes the whole sequence every step (the reference the tests compare against).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from nemo_automodel_bard.diffusion.masks import (
    CLEAN,
    NOISY,
    PAD,
    PREFIX,
    block_diffusion_mask,
    layout_block_ids,
    to_additive_mask,
)
from nemo_automodel_bard.generation.sampling import (
    REMASKING_STRATEGIES,
    num_transfer_tokens,
    propose_tokens,
    select_commits,
)
from nemo_automodel_bard.generation.stats import StepStats
from nemo_automodel_bard.generation.validation import DecodeOptions, check_prompt, resolve_options

__all__ = ["block_generate", "decode_attention_mask", "REMASKING_STRATEGIES"]


@dataclass
class _Rows:
    """Per-row decoding state; every tensor is indexed by physical row (pruned when finished)."""

    sample: torch.Tensor  # [N] index of the row's sample in the caller's batch
    tokens: torch.Tensor  # [N, T] prompt + committed blocks + current block
    positions: torch.Tensor  # [3, N, T] mRoPE ids
    segment: torch.Tensor  # [N, T] PAD / PREFIX / CLEAN (response tokens CLEAN; current block set NOISY per forward)
    block: torch.Tensor  # [N, T] block ids
    alive: torch.Tensor  # [N] bool, not finished

    def select(self, keep: torch.Tensor) -> None:
        self.sample, self.tokens, self.segment, self.block, self.alive = (
            t[keep] for t in (self.sample, self.tokens, self.segment, self.block, self.alive)
        )
        self.positions = self.positions[:, keep]


def block_generate(
    model: torch.nn.Module,
    batch: Any,
    max_new_tokens: int,
    block_size: int = 8,
    denoising_steps: int = 8,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    remasking_strategy: str = "low_confidence_dynamic",
    confidence_threshold: float = 0.5,
    return_step_stats: bool = False,
    *,
    mask_token_id: int | None = None,
    eos_token_id: int | list[int] | None = None,
    generator: torch.Generator | None = None,
    streamer: Any = None,
    use_cache: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, StepStats]:
    """Decode responses for a processor batch with block diffusion.

    Args:
        batch: Qwen3-VL processor output: ``input_ids [N, P]``, ``attention_mask [N, P]``
            (left-padded), optional ``pixel_values``/``image_grid_thw``,
            ``pixel_values_videos``/``video_grid_thw``, ``mm_token_type_ids``.
        max_new_tokens: response budget; need not be a multiple of ``block_size`` (the last
            block is decoded whole and truncated).
        denoising_steps: step budget per block (static: exactly that many, at most
            ``block_size``; dynamic: at most that many).
        remasking_strategy / confidence_threshold: see ``sampling.select_commits`` (D6).
        mask_token_id / eos_token_id: override the config (D2); EOS may be a list.
        generator: RNG for ``temperature > 0``.
        streamer: ``transformers`` streamer (``put``/``end``, batch 1) or a callable
            ``streamer(block_index, new_tokens)`` with one list of ids per sample per block.
        use_cache: False recomputes the whole sequence every step (reference, slow).

    Returns:
        ``LongTensor [N, L]`` response ids, each row truncated after its first EOS and padded
        with the EOS id; with ``return_step_stats`` also a ``StepStats``.
    """
    opts = resolve_options(
        model,
        max_new_tokens=max_new_tokens,
        block_size=block_size,
        denoising_steps=denoising_steps,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        remasking_strategy=remasking_strategy,
        confidence_threshold=confidence_threshold,
        mask_token_id=mask_token_id,
        eos_token_id=eos_token_id,
    )
    device = next(model.parameters()).device
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in dict(batch).items()}
    check_prompt(model, inputs)
    if streamer is not None and hasattr(streamer, "put") and inputs["input_ids"].shape[0] != 1:
        raise ValueError("a transformers streamer (with put/end) supports batch size 1; pass a callable for batches")
    with torch.no_grad():
        return _decode(model, inputs, opts, return_step_stats, generator, streamer, use_cache)


def _initial_rows(model, inputs: dict, opts: DecodeOptions) -> tuple[_Rows, int]:
    """Token, position and layout tensors of the whole ``[prompt | n blocks]`` row."""
    ids = inputs["input_ids"]
    n, prompt_width = ids.shape
    attn = inputs.get("attention_mask")
    attn = torch.ones_like(ids) if attn is None else attn.long()
    n_blocks = math.ceil(opts.max_new_tokens / opts.block_size)
    response_len = n_blocks * opts.block_size
    pos, _ = model.rope_positions(
        ids, inputs.get("mm_token_type_ids"), inputs.get("image_grid_thw"), inputs.get("video_grid_thw"), attn
    )
    # Responses continue after each sample's largest prompt position, equal on all 3 axes.
    next_pos = pos.amax(dim=(0, 2))
    resp_pos = (next_pos[:, None] + 1 + torch.arange(response_len, device=ids.device)).expand(3, -1, -1)
    prompt_seg = torch.where(attn.bool(), PREFIX, PAD)
    segment = torch.cat([prompt_seg, torch.full((n, response_len), CLEAN, device=ids.device)], 1)
    offset = torch.cat(
        [(attn.cumsum(1) - 1).clamp(min=0), torch.arange(response_len, device=ids.device).expand(n, -1)], 1
    )
    prompt_len = attn.sum(1, keepdim=True).expand_as(segment)
    block = layout_block_ids(segment, offset, prompt_len, opts.block_size)
    tokens = torch.cat([ids, torch.full((n, response_len), opts.mask_token_id, device=ids.device)], 1)
    rows = _Rows(
        sample=torch.arange(n, device=ids.device),
        tokens=tokens,
        positions=torch.cat([pos, resp_pos], 2),
        segment=segment,
        block=block,
        alive=torch.ones(n, dtype=torch.bool, device=ids.device),
    )
    return rows, prompt_width


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


def _forward_block(
    model,
    rows: _Rows,
    cache,
    inputs,
    opts,
    *,
    start: int,
    end: int,
    vision: bool,
    mask: torch.Tensor | None = None,
    need: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run queries ``[start, end)`` against keys ``[0, end)`` (cache + queries).

    ``mask`` (``[N, 1, end - start, end]`` additive) may be passed to reuse it across the
    steps of a block; it is built from the layout otherwise.

    Returns:
        logits ``[N, B, V]`` of the last block, or packed ``[M, V]`` of the positions where
        ``need`` (``[N, B]`` bool) is set: the LM head only runs where a token is still masked.
    """
    if mask is None:
        mask = block_attention_mask(rows, opts, start, end, model.lm_head.weight.dtype)
    vision_inputs = {}
    if vision:
        vision_inputs = {
            k: inputs[k]
            for k in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")
            if inputs.get(k) is not None
        }
    out = model(
        input_ids=rows.tokens[:, start:end],
        attention_mask=mask,
        position_ids=rows.positions[:, :, start:end],
        past_key_values=cache,
        use_cache=cache is not None,
        logits_to_keep=opts.block_size if need is None else _keep_last(need, end - start),
        **vision_inputs,
    )
    if cache is not None:
        cache.crop(-opts.block_size)  # the noisy block never stays in the cache
    return out.logits


def _keep_last(need: torch.Tensor, q_len: int) -> torch.Tensor:
    """``[N, B]`` selection of the last block -> ``[N, q_len]`` selection of the forward's queries."""
    keep = torch.zeros(need.shape[0], q_len, dtype=torch.bool, device=need.device)
    keep[:, q_len - need.shape[1] :] = need
    return keep


def block_attention_mask(rows: _Rows, opts: DecodeOptions, start: int, end: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive ``[N, 1, end - start, end]`` mask of a decoding forward (see ``decode_attention_mask``)."""
    mask = decode_attention_mask(
        rows.segment, rows.block, start=start, end=end, block_size=opts.block_size, causal_prompt=opts.causal_prompt
    )
    return to_additive_mask(mask, dtype)


def _decode(model, inputs, opts: DecodeOptions, return_step_stats, generator, streamer, use_cache):
    rows, prompt_width = _initial_rows(model, inputs, opts)
    n = rows.tokens.shape[0]
    B, mask_id = opts.block_size, opts.mask_token_id
    n_blocks = math.ceil(opts.max_new_tokens / B)
    schedule = num_transfer_tokens(B, opts.denoising_steps)
    banned = torch.tensor(opts.banned_token_ids, dtype=torch.long)
    eos = torch.tensor(opts.eos_token_ids, device=rows.tokens.device)
    cache = DynamicCache(config=model.config.get_text_config()) if use_cache else None
    responses: list[list[int]] = [[] for _ in range(n)]
    stats = StepStats(block_steps=[[] for _ in range(n)], tokens_per_forward=[[] for _ in range(n)])
    if streamer is not None and hasattr(streamer, "put"):  # like HF generate: the prompt first
        streamer.put(rows.tokens[0, :prompt_width][rows.segment[0, :prompt_width] != PAD].cpu())

    for b in range(n_blocks):
        start_b, end = prompt_width + b * B, prompt_width + (b + 1) * B
        commit_step = torch.full((rows.tokens.shape[0], B), -1, dtype=torch.long, device=rows.tokens.device)
        steps = torch.zeros(rows.tokens.shape[0], dtype=torch.long, device=rows.tokens.device)
        step = 0
        masks: dict[tuple[int, int], torch.Tensor] = {}
        limit = min(B, opts.max_new_tokens - b * B)
        while True:
            block_tokens = rows.tokens[:, start_b:end]
            masked = (block_tokens == mask_id) & rows.alive[:, None]
            working = (masked & _output_positions(block_tokens, eos, limit)).any(-1)
            if not working.any():
                break
            start = _query_start(b, step, start_b, B) if use_cache else 0
            if (start, end) not in masks:  # steps after the first reuse one mask per block
                masks = {(start, end): block_attention_mask(rows, opts, start, end, model.lm_head.weight.dtype)}
            packed = _forward_block(
                model, rows, cache, inputs, opts, start=start, end=end, vision=(start == 0), mask=masks[(start, end)],
                need=masked,
            )
            stats.batch_forwards += 1
            proposal, confidence = _propose(packed, masked, block_tokens, opts, banned, generator)
            k_step = schedule[step] if step < len(schedule) else B
            commit = select_commits(
                confidence,
                masked,
                torch.full_like(steps, k_step),
                strategy=opts.remasking_strategy,
                threshold=opts.confidence_threshold,
            ) & working[:, None]
            rows.tokens[:, start_b:end] = torch.where(commit, proposal, block_tokens)
            commit_step[commit] = step
            steps += working.long()
            step += 1
        finished = _finish_block(rows, b, start_b, end, commit_step, steps, eos, opts, responses, stats)
        _stream(streamer, b, finished, n)
        if not rows.alive.any():
            break
        if use_cache and not bool(rows.alive.all()):
            keep = rows.alive.nonzero()[:, 0]
            rows.select(keep)
            cache.batch_select_indices(keep)

    if streamer is not None and hasattr(streamer, "end"):
        streamer.end()
    output = _pad_responses(responses, opts.eos_token_ids[0], inputs["input_ids"].device)
    return (output, stats) if return_step_stats else output


def _output_positions(block_tokens: torch.Tensor, eos: torch.Tensor, limit: int) -> torch.Tensor:
    """``[N, B]`` bool: the block positions that can reach the output.

    Those are the positions before the ``max_new_tokens`` budget (``limit``) and up to the
    first committed EOS. Committed tokens are never revised, so once these are all committed
    the response is final: denoising the rest of the block would only cost forwards (short
    answers in large blocks), and the output stays identical.
    """
    width = block_tokens.shape[1]
    index = torch.arange(width, device=block_tokens.device)
    first_eos = torch.where(torch.isin(block_tokens, eos), index, width).amin(-1, keepdim=True)
    return (index <= first_eos) & (index < limit)


def _query_start(b: int, step: int, start_b: int, block_size: int) -> int:
    """First query of a cached forward: whole prompt (block 0, step 0), previous block + this
    block (first step of a later block: fused commit, D7), else this block only."""
    if step > 0:
        return start_b
    return 0 if b == 0 else start_b - block_size


def _propose(packed, masked, block_tokens, opts, banned, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Proposals and fp32 confidences ``[N, B]`` from packed logits ``[M, V]`` of the masked positions.

    Positions without logits (already committed) keep their token and get confidence 0;
    ``select_commits`` never picks them.
    """
    tokens, confidence = propose_tokens(
        packed[None], temperature=opts.temperature, top_k=opts.top_k, top_p=opts.top_p, banned=banned,
        generator=generator,
    )
    full_confidence = torch.zeros(masked.shape, dtype=torch.float32, device=masked.device)
    return block_tokens.masked_scatter(masked, tokens[0]), full_confidence.masked_scatter(masked, confidence[0])


def _finish_block(rows, b, start_b, end, commit_step, steps, eos, opts, responses, stats) -> dict[int, list[int]]:
    """Record block ``b`` of every live row: kept tokens (up to EOS / budget) and step stats."""
    B = opts.block_size
    limit = min(B, opts.max_new_tokens - b * B)
    new_tokens: dict[int, list[int]] = {}
    block = rows.tokens[:, start_b:end].tolist()
    is_eos = torch.isin(rows.tokens[:, start_b : start_b + limit], eos).tolist()
    for r, sample in enumerate(rows.sample.tolist()):
        if not bool(rows.alive[r]):
            continue
        kept = limit
        if any(is_eos[r]):
            kept = is_eos[r].index(True) + 1
            rows.alive[r] = False
        elif (b + 1) * B >= opts.max_new_tokens:
            rows.alive[r] = False
        n_steps = int(steps[r])
        committed_at = commit_step[r, :kept]
        stats.block_steps[sample].append(n_steps)
        stats.tokens_per_forward[sample].extend(int((committed_at == s).sum()) for s in range(n_steps))
        new_tokens[sample] = block[r][:kept]
        responses[sample].extend(new_tokens[sample])
    return new_tokens


def _stream(streamer: Any, block_index: int, new_tokens: dict[int, list[int]], n: int) -> None:
    if streamer is None:
        return
    if hasattr(streamer, "put"):
        if new_tokens.get(0):
            streamer.put(torch.tensor(new_tokens[0]))
        return
    if not callable(streamer):
        raise ValueError("streamer must have put()/end() (transformers streamer) or be callable")
    streamer(block_index, [new_tokens.get(i, []) for i in range(n)])


def _pad_responses(responses: list[list[int]], pad_id: int, device: torch.device) -> torch.Tensor:
    width = max(len(r) for r in responses)
    out = torch.full((len(responses), width), pad_id, dtype=torch.long, device=device)
    for i, r in enumerate(responses):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long, device=device)
    return out


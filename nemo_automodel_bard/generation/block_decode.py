"""Exact-cache, batched block-diffusion decoding (``BardVLForConditionalGeneration.generate``).

Layout of one row (``T = P + n_blocks * B``)::

    [ left pad | prompt (P_i real tokens) | block 0 | block 1 | ... ]

Forwards (``generation.forward``): block 0's first step is the prefill fused with its first
denoising pass; block b > 0's first step is block b-1's commit fused with block b's first
pass (decision D7: clean queries never see noisy keys, D4, so block b-1's K/V are exactly
those a separate commit forward would give); later steps run the block alone. The K/V go to
a preallocated ``BlockKVCache`` written in place at the queries' positions.

The loop stays on the device: proposals, confidences, static/dynamic commits, EOS and the
per-row "finished" state are tensors. Host syncs: with ``low_confidence_static`` a block runs
exactly ``denoising_steps`` forwards and the host reads one small tensor per block (which rows
finished, plus the block's tokens when streaming); ``low_confidence_dynamic`` finishes a block
after a data-dependent number of steps, so it also reads one flag per step (whether any row
still has a masked output position). Rows that finished take no commits; in eager mode they
are dropped from the batch (and the cache) at the block boundary. Per block the record keeps
the block's tokens (and, with ``return_step_stats``, each position's commit step); lengths and
statistics are derived once at the end (``record.DecodeRecord``).

Token revision (``revision_threshold > 0``, dynamic strategy only): from a block's second
step on, a token committed at an earlier step of the same block whose probability under the
current forward has fallen below ``revision_threshold`` is re-masked and decoded again (each
position at most once per block, so a block ends within ``2 * block_size`` steps). The
forward already scores the whole block, so revision costs no extra forward, only the steps
that re-decode what it re-masked. Meant for models trained with mixed noise
(``bard.noise.schedule: mixed``), which learned to judge visible tokens. The block's commit to
the cache is unchanged: it happens once the block is final.

Masks come from ``diffusion.masks.block_diffusion_mask`` over the whole layout. Prompt block
ids count from each sample's first real token and positions come from ``get_rope_index`` with
the padding mask, so a sample's result does not depend on its batch neighbours. With
``use_cache=False`` the same loop recomputes the whole sequence every step (the reference the
tests compare against).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from nemo_automodel_bard.diffusion.masks import CLEAN, PAD, PREFIX, layout_block_ids
from nemo_automodel_bard.generation.forward import BlockForward, compile_options, decode_attention_mask
from nemo_automodel_bard.generation.record import DecodeRecord, block_kept_length
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
    dropped: bool = False  # rows were dropped: physical row i is no longer sample i

    def select(self, keep: torch.Tensor) -> None:
        self.dropped = True
        self.sample, self.tokens, self.segment, self.block, self.alive = (
            t[keep] for t in (self.sample, self.tokens, self.segment, self.block, self.alive)
        )
        self.positions = self.positions[:, keep]


def block_generate(
    model: torch.nn.Module,
    batch: Any,
    max_new_tokens: int,
    block_size: int | None = None,
    denoising_steps: int | None = None,
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
    prompt_attention: str | None = None,
    compile: bool | dict = False,
    use_cache: bool = True,
    revision_threshold: float = 0.0,
) -> torch.Tensor | tuple[torch.Tensor, StepStats]:
    """Decode responses for a processor batch with block diffusion.

    Args:
        batch: Qwen3-VL processor output: ``input_ids [N, P]``, ``attention_mask [N, P]``
            (left-padded), optional ``pixel_values``/``image_grid_thw``,
            ``pixel_values_videos``/``video_grid_thw``, ``mm_token_type_ids``.
        max_new_tokens: response budget; need not be a multiple of ``block_size`` (the last
            block is decoded whole and truncated).
        block_size: default (None) the checkpoint's ``config.block_size``.
        denoising_steps: step budget per block (static: exactly that many, at most
            ``block_size``; dynamic: at most that many); default ``block_size``.
        remasking_strategy / confidence_threshold: see ``sampling.select_commits`` (D6).
        mask_token_id / eos_token_id: override the config (D2); EOS may be a list.
        generator: RNG for ``temperature > 0``.
        streamer: ``transformers`` streamer (``put``/``end``, batch 1) or a callable
            ``streamer(block_index, new_tokens)`` with one list of ids per sample per block.
        prompt_attention: ``"block"`` / ``"causal"``; default the config's (D3).
        compile: ``torch.compile`` the fused-commit and steady steps (fixed shapes; CUDA graphs
            on CUDA); a dict is passed to ``torch.compile``. Same output as eager.
        use_cache: False recomputes the whole sequence every step (reference, slow).
        revision_threshold: re-mask a committed token of the current block whose probability
            fell below this (0 = off; dynamic strategy only; see the module docstring).

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
        prompt_attention=prompt_attention,
        revision_threshold=revision_threshold,
    )
    device = next(model.parameters()).device
    compiled = compile_options(compile, device) if use_cache else None
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in dict(batch).items()}
    check_prompt(model, inputs)
    if streamer is not None and hasattr(streamer, "put") and inputs["input_ids"].shape[0] != 1:
        raise ValueError("a transformers streamer (with put/end) supports batch size 1; pass a callable for batches")
    if streamer is not None and not hasattr(streamer, "put") and not callable(streamer):
        raise ValueError("streamer must have put()/end() (transformers streamer) or be callable")
    with torch.no_grad():
        output, stats = _decode(model, inputs, opts, generator, streamer, use_cache, compiled, return_step_stats)
    return (output, stats) if return_step_stats else output


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


def _decode(model, inputs, opts: DecodeOptions, generator, streamer, use_cache, compiled, with_stats: bool):
    rows, prompt_width = _initial_rows(model, inputs, opts)
    n, device = rows.tokens.shape[0], rows.tokens.device
    B, mask_id = opts.block_size, opts.mask_token_id
    n_blocks = math.ceil(opts.max_new_tokens / B)
    schedule = num_transfer_tokens(B, opts.denoising_steps)
    static = opts.remasking_strategy == "low_confidence_static"
    banned = torch.tensor(opts.banned_token_ids, dtype=torch.long, device=device)
    eos = torch.tensor(opts.eos_token_ids, device=device)
    forward = BlockForward(model, rows, inputs, opts, prompt_width + n_blocks * B, use_cache, compiled)
    revise = opts.revision_threshold > 0
    # steps per block: at most the schedule (+1 spare); with revision each position commits at most twice
    max_steps = max(len(schedule), 2 * B if revise else 0) + 1
    record = DecodeRecord(n, n_blocks, B, max_steps, opts.max_new_tokens, eos, with_stats)
    batch_forwards = 0
    pruned = use_cache and compiled is None  # finished rows leave the batch at block ends
    if streamer is not None and hasattr(streamer, "put"):  # like HF generate: the prompt first
        streamer.put(rows.tokens[0, :prompt_width][rows.segment[0, :prompt_width] != PAD].cpu())

    for b in range(n_blocks):
        start_b, end = prompt_width + b * B, prompt_width + (b + 1) * B
        limit = min(B, opts.max_new_tokens - b * B)
        # The step each position was committed at (statistics only; -1 = not yet).
        commit_step = torch.full((rows.tokens.shape[0], B), -1, dtype=torch.long, device=device) if with_stats else None
        step = 0
        block = rows.tokens[:, start_b:end]  # a view: commits below write rows.tokens in place
        live = None if pruned else rows.alive[:, None]  # eager drops finished rows: all alive
        revised = torch.zeros_like(block, dtype=torch.bool) if revise else None
        # static: exactly len(schedule) steps (they empty the block); dynamic: until no row works.
        while not static or step < len(schedule):
            masked = block == mask_id
            if live is not None:
                masked &= live
            if not static:  # the one per-step sync (dynamic only): does any row still work?
                if not bool((masked & _output_positions(block, eos, limit)).any()):
                    break
            logits = forward(_query_start(b, step, start_b, B), end, first_step=step == 0)
            batch_forwards += 1
            proposal, confidence = propose_tokens(
                logits, temperature=opts.temperature, top_k=opts.top_k, top_p=opts.top_p, banned=banned,
                generator=generator,
            )
            k_step = schedule[step] if step < len(schedule) else B
            # A row whose output is already final may still commit positions past its EOS or
            # budget: they never reach the output, and the row ends with this block.
            commit = select_commits(
                confidence, masked, k_step, strategy=opts.remasking_strategy, threshold=opts.confidence_threshold
            )
            remask = _revisions(logits, block, live, revised, eos, limit, opts) if revise and step > 0 else None
            torch.where(commit, proposal, block, out=block)  # in place: block is a view of rows.tokens
            if remask is not None:  # disjoint from commit (those positions were masked)
                block.masked_fill_(remask, mask_id)
                revised |= remask
            if commit_step is not None:
                commit_step.masked_fill_(commit, step)
            step += 1
        record.add_block(b, rows.sample if rows.dropped else None, rows.alive, block, commit_step)
        alive_before = rows.alive.clone() if streamer is not None else None
        if (b + 1) * B < opts.max_new_tokens:
            rows.alive &= ~_is_eos(block, eos, limit).any(-1)
        else:
            rows.alive.zero_()
        alive = _end_of_block(streamer, b, n, rows.sample, alive_before, block, eos, limit, rows.alive)
        if not any(alive):
            break
        if pruned and not all(alive):  # drop finished rows (eager shapes)
            keep = torch.tensor([i for i, a in enumerate(alive) if a], device=device)
            rows.select(keep)
            forward.select(keep)

    if streamer is not None and hasattr(streamer, "end"):
        streamer.end()
    return record.finish(batch_forwards)


def _revisions(logits: torch.Tensor, block: torch.Tensor, live: torch.Tensor | None, revised: torch.Tensor,
               eos: torch.Tensor, limit: int, opts: DecodeOptions) -> torch.Tensor:
    """Committed output positions of rows still working on this block, not yet revised in it,
    whose token's probability under this step's logits is below ``opts.revision_threshold``
    (``[N, B]`` bool). A row whose output positions are all committed is done with the block,
    as it would be alone: the steps its batch neighbours still run do not revise it."""
    outputs = _output_positions(block, eos, limit)
    committed = block != opts.mask_token_id
    working = (~committed & outputs).any(-1, keepdim=True)
    held = committed & ~revised & outputs & working
    if live is not None:
        held &= live
    prob = logits.float().softmax(-1).gather(-1, block[..., None])[..., 0]
    return held & (prob < opts.revision_threshold)


def _end_of_block(streamer, b, n, sample, alive_before, block_tokens, eos, limit, alive) -> list[bool]:
    """The block's one device-to-host copy: which rows still decode (and, when streaming, the
    block's kept tokens, handed to the streamer)."""
    if streamer is None:
        return alive.tolist()
    kept, _ = block_kept_length(block_tokens, eos, limit)
    host = torch.cat([alive[:, None], alive_before[:, None], sample[:, None], kept[:, None], block_tokens], 1).tolist()
    new_tokens = {row[2]: row[4 : 4 + row[3]] for row in host if row[1]}
    if hasattr(streamer, "put"):
        if new_tokens.get(0):
            streamer.put(torch.tensor(new_tokens[0]))
    else:
        streamer(b, [new_tokens.get(i, []) for i in range(n)])
    return [bool(row[0]) for row in host]


def _output_positions(block_tokens: torch.Tensor, eos: torch.Tensor, limit: int) -> torch.Tensor:
    """``[N, B]`` bool: the block positions that can reach the output.

    Those are the positions before the ``max_new_tokens`` budget (``limit``) and up to the
    first committed EOS. Once these are all committed the response is final (revision only
    re-masks positions while the block still has steps to run): denoising the rest of the block would only cost forwards (short
    answers in large blocks), and the output stays identical.
    """
    is_eos = _is_eos(block_tokens, eos, block_tokens.shape[1])
    keep = is_eos.cumsum(-1) <= is_eos  # no EOS strictly before the position
    if limit < block_tokens.shape[1]:
        keep[:, limit:] = False
    return keep


def _is_eos(block_tokens: torch.Tensor, eos: torch.Tensor, limit: int) -> torch.Tensor:
    """``[N, B]`` bool: EOS ids among the block's first ``limit`` positions."""
    is_eos = block_tokens == eos[0] if eos.numel() == 1 else torch.isin(block_tokens, eos)
    if limit < block_tokens.shape[1]:
        is_eos[:, limit:] = False
    return is_eos


def _query_start(b: int, step: int, start_b: int, block_size: int) -> int:
    """First query of a cached forward: whole prompt (block 0, step 0), previous block + this
    block (first step of a later block: fused commit, D7), else this block only."""
    if step > 0:
        return start_b
    return 0 if b == 0 else start_b - block_size

"""FlexAttention (BlockMask) vs sdpa (dense bool mask) on the block-diffusion training layout.

For each row length S and each layout, one step of a Bard-VL model (random weights, text
layers only: vision tokens are prompt tokens to the text attention) is timed with both
backends, interleaved, repeated, medians reported. A step is: build the mask from the
layout's per-token ids, forward (CPU) or forward + backward (CUDA). Also reported: the mask
bytes of each backend, the fraction of empty 128x128 tiles (skipped by flex), and the max
``|flex - sdpa|`` logit difference on real tokens.

Layouts (``[prompt | clean | noisy]`` per sample, block size 4):

* ``single``: one sample, P = S/2, R = S/4 (P + 2R = S);
* ``packed4``: four samples of P = S/8, R = S/16, then padding to S.

On CPU flex runs eagerly (``uncompiled_flex_attention``: compiling costs about a
minute per shape on a small CPU; eager flex computes every tile), forward only (no CPU flex
backward): the CPU times say nothing about GPU speed, the bytes and tile fractions do. On
CUDA flex is transformers' compiled flex_attention and the masks use compiled
``create_block_mask``; the model runs in bf16.

    python benchmarks/train_attention.py --quick --json /tmp/attn.json
    python benchmarks/train_attention.py --masks-only --lengths 2048 4096 8192 16384   # no model: mask cost only
    python benchmarks/train_attention.py --device cuda --hidden 2560 --heads 32 --kv-heads 8 --head-dim 128 --layers 4 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from typing import Any

import torch

from nemo_automodel_bard.diffusion.flex_masks import (
    block_mask_bytes,
    empty_tile_fraction,
    layout_mask,
    uncompiled_flex_attention,
)
from nemo_automodel_bard.diffusion.masks import CLEAN, NOISY, PAD, PREFIX
from nemo_automodel_bard.models.bard_vl import BardVLForConditionalGeneration
from nemo_automodel_bard.testing import tiny_config

BLOCK_SIZE = 4
BACKENDS = {"flex": "flex_attention", "sdpa": "sdpa"}


def training_layout(seq_len: int, samples: int) -> dict[str, torch.Tensor]:
    """``segment, offset, prompt_len, doc`` ``[1, S]`` of ``samples`` samples (P = 2R) then padding."""
    if samples == 1:
        sizes = [(seq_len // 2, seq_len // 4)]
    else:
        sizes = [(seq_len // (2 * samples), seq_len // (4 * samples))] * samples
    seg, off, plen, doc = [], [], [], []
    for d, (p, r) in enumerate(sizes):
        r -= r % BLOCK_SIZE
        seg += [PREFIX] * p + [CLEAN] * r + [NOISY] * r
        off += list(range(p)) + list(range(r)) * 2
        plen += [p] * (p + 2 * r)
        doc += [d] * (p + 2 * r)
    pad = seq_len - len(seg)
    seg, off, plen, doc = seg + [PAD] * pad, off + [0] * pad, plen + [0] * pad, doc + [-1] * pad
    return {k: torch.tensor([v]) for k, v in zip(("segment", "offset", "prompt_len", "doc"), (seg, off, plen, doc))}


def build_model(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> BardVLForConditionalGeneration:
    """A random Bard-VL with the requested text attention shapes (tiny vision tower, unused)."""
    head_dim = args.head_dim or args.hidden // args.heads
    half = head_dim // 2
    side = half * 5 // 16  # Qwen3-VL's mRoPE split of head_dim / 2: [24, 20, 20] at 128
    text = {
        "hidden_size": args.hidden,
        "intermediate_size": 3 * args.hidden,
        "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads,
        "num_key_value_heads": args.kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": 32768,
        "rope_parameters": {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [half - 2 * side, side, side],
                            "mrope_interleaved": True},
    }
    torch.manual_seed(0)
    config = tiny_config(text=text, vision={"out_hidden_size": args.hidden})
    return BardVLForConditionalGeneration(config).to(device=device, dtype=dtype)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step(model, inputs: dict[str, Any], layout: dict[str, torch.Tensor], backend: str, train: bool) -> torch.Tensor:
    """One step: the mask from the layout, forward, and backward when training."""
    mask = layout_mask(layout, BLOCK_SIZE, backend=backend)
    if not train:
        with torch.no_grad():
            return model(**inputs, attention_mask=mask).logits
    logits = model(**inputs, attention_mask=mask).logits
    logits.float().square().mean().backward()
    return logits.detach()


def mask_stats(layout: dict[str, torch.Tensor], seq_len: int, samples: int) -> dict[str, Any]:
    block_mask = layout_mask(layout, BLOCK_SIZE, backend="flex")
    dense = layout_mask(layout, BLOCK_SIZE, backend="sdpa")
    return {
        "seq_len": seq_len,
        "layout": "single" if samples == 1 else f"packed{samples}",
        "dense_mask_bytes": dense.numel() * dense.element_size(),
        "dense_fp32_additive_mask_bytes": dense.numel() * 4,
        "block_mask_bytes": block_mask_bytes(block_mask),
        "empty_tile_fraction": empty_tile_fraction(block_mask),
    }


def measure_masks(seq_len: int, samples: int, args, device) -> dict[str, Any]:
    """Mask building only (no model): median time of each backend's mask, interleaved."""
    layout = {k: v.to(device) for k, v in training_layout(seq_len, samples).items()}
    times: dict[str, list[float]] = {b: [] for b in BACKENDS}
    for r in range(args.repeats + 1):
        for backend in (BACKENDS if r % 2 == 0 else reversed(list(BACKENDS))):
            _sync(device)
            start = time.perf_counter()
            layout_mask(layout, BLOCK_SIZE, backend=backend)
            _sync(device)
            if r:  # the first round warms up (compiles on CUDA)
                times[backend].append(time.perf_counter() - start)
    result = mask_stats(layout, seq_len, samples)
    result.update({f"{b}_mask_ms": 1e3 * statistics.median(times[b]) for b in BACKENDS})
    result["max_abs_logit_diff"] = None
    return result


def measure(model, seq_len: int, samples: int, args, device, dtype) -> dict[str, Any]:
    layout = {k: v.to(device) for k, v in training_layout(seq_len, samples).items()}
    gen = torch.Generator().manual_seed(seq_len)
    inputs = {
        "input_ids": torch.randint(20, 100, (1, seq_len), generator=gen).to(device),
        "position_ids": torch.arange(seq_len, device=device).expand(3, 1, seq_len),
    }
    train = device.type == "cuda"
    flex_ctx = uncompiled_flex_attention if device.type != "cuda" and not args.compile else contextlib.nullcontext
    real = layout["segment"][0] != PAD

    def run(backend):
        model.set_text_attention(BACKENDS[backend])
        with flex_ctx() if backend == "flex" else contextlib.nullcontext():
            return step(model, inputs, layout, backend, train)

    # Correctness first (and warm-up: compiles on CUDA).
    logits = {b: run(b) for b in BACKENDS}
    diff = (logits["flex"][0, real].float() - logits["sdpa"][0, real].float()).abs().max().item()
    del logits
    times: dict[str, list[float]] = {b: [] for b in BACKENDS}
    peaks: dict[str, int] = {}
    for r in range(args.repeats):
        for backend in (BACKENDS if r % 2 == 0 else reversed(list(BACKENDS))):
            model.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            _sync(device)
            start = time.perf_counter()
            run(backend)
            _sync(device)
            times[backend].append(time.perf_counter() - start)
            if device.type == "cuda":
                peaks[backend] = torch.cuda.max_memory_allocated()
    result = mask_stats(layout, seq_len, samples)
    result.update({
        "train_step": train,
        "flex_ms": 1e3 * statistics.median(times["flex"]),
        "sdpa_ms": 1e3 * statistics.median(times["sdpa"]),
        "max_abs_logit_diff": diff,
    })
    result["sdpa_over_flex_time"] = result["sdpa_ms"] / result["flex_ms"]
    if peaks:
        result.update({f"{b}_peak_gib": peaks[b] / 2**30 for b in peaks})
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="S = 256, 512, 2 repeats: seconds on a CPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--lengths", type=int, nargs="+", default=None, help="row lengths S (default 2048 4096 8192)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=None, help="default hidden / heads (Qwen3-VL-4B: 128)")
    parser.add_argument("--compile", action="store_true", help="CPU: use transformers' compiled flex (slow to compile)")
    parser.add_argument("--masks-only", action="store_true", help="time mask building only (no model)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.lengths = args.lengths or [256, 512]
        args.repeats = min(args.repeats, 2)
    lengths = args.lengths or [2048, 4096, 8192]
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.masks_only:
        runs = [measure_masks(s, n, args, device) for s in lengths for n in (1, 4)]
    else:
        model = build_model(args, device, dtype)
        model.train(device.type == "cuda")
        runs = [measure(model, s, n, args, device, dtype) for s in lengths for n in (1, 4)]
    for run in runs:
        times = ("flex_mask_ms", "sdpa_mask_ms") if args.masks_only else ("flex_ms", "sdpa_ms")
        diff = run["max_abs_logit_diff"]
        print(
            f"S={run['seq_len']:>5} {run['layout']:>7}: flex {run[times[0]]:8.1f} ms  sdpa {run[times[1]]:8.1f} ms  "
            f"dense mask {run['dense_mask_bytes'] / 2**20:7.2f} MiB  BlockMask {run['block_mask_bytes'] / 2**10:7.1f} KiB  "
            f"empty tiles {run['empty_tile_fraction']:.1%}" + ("" if diff is None else f"  max|dlogit| {diff:.2e}")
        )
    largest = max((r for r in runs if r["layout"] == "single"), key=lambda r: r["seq_len"])
    results = {
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "model": {k: getattr(args, k) for k in ("layers", "hidden", "heads", "kv_heads", "head_dim")},
        "flex_compiled": device.type == "cuda" or args.compile,
        "masks_only": args.masks_only,
        "repeats": args.repeats,
        "max_abs_logit_diff": None if args.masks_only else max(r["max_abs_logit_diff"] for r in runs),
        # The largest single-sample row's figures (all rows in `runs`).
        "seq_len": largest["seq_len"],
        "dense_mask_bytes": largest["dense_mask_bytes"],
        "block_mask_bytes": largest["block_mask_bytes"],
        "empty_tile_fraction": largest["empty_tile_fraction"],
        "runs": runs,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()

"""Decoding cost of exact-cache block diffusion vs autoregressive decoding, interleaved.

One randomly initialised model (same weights for Bard and the AR baselines), text prompts of
equal length (no padding), CPU or CUDA (timings synchronised). Every measurement is repeated
``--reps`` times with the variants interleaved inside each repetition (so machine load hits
all of them alike) and reported as medians:

1. **forward cost** per batch size: one cached Bard denoising forward at block 1/4/8/16/32 and
   the fused-commit forward (2 blocks), each next to the stock transformers Qwen3-VL forward of
   the same query and cache lengths, and next to an AR decode forward (1 token);
2. **throughput** per batch size: stock transformers ``generate`` (default dynamic cache),
   transformers ``generate`` with its static cache + ``torch.compile`` (``--compiled-ar``),
   and Bard ``generate`` at forced tokens per forward (static strategy, block 32,
   ``denoising_steps = 32 / TPF``): tokens/s and Bard/AR ratios;
3. **decoder overhead** at TPF 4, per batch size: share of ``generate`` wall time spent
   inside the model's forward, and host syncs per generate (``HostSyncCounter``);
4. **time per token** at response lengths 64 / 256 / 1024 (batch 1), AR and Bard TPF 4.

EOS is disabled (one LM-head row zeroed and used as EOS: random logits always have a positive
maximum), so every run decodes exactly the requested length.

    python benchmarks/decode.py --quick --json runs/decode_quick.json     # tiny model, ~2 min CPU
    python benchmarks/decode.py --json runs/decode.json                   # tiny, batch 1/8/32, 5 reps
    python benchmarks/decode.py --size 4b --device cuda --dtype bfloat16  # real Qwen3-VL-4B shapes
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import DynamicCache

from nemo_automodel_bard.generation.cli import resolve_dtype
from nemo_automodel_bard.generation.kv_cache import BlockKVCache
from nemo_automodel_bard.generation.syncs import HostSyncCounter
from nemo_automodel_bard.models.bard_vl import BardVLForConditionalGeneration
from nemo_automodel_bard.testing import tiny_config

_MROPE = {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20], "mrope_interleaved": True}
SIZES = {
    "tiny": {},
    # Qwen2.5-0.5B-shaped text decoder (494M parameters, tied embeddings, 151936 vocabulary).
    "0.5b": dict(
        text=dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, head_dim=64,
                  rope_parameters={**_MROPE, "mrope_section": [12, 10, 10]}),
        vision=dict(out_hidden_size=896), mask_token_id=151671, tie_word_embeddings=True,
    ),
    # Qwen3-VL-4B text shapes (scale_facts.md); a 2-block vision tower (text prompts skip it).
    "4b": dict(
        text=dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                  num_attention_heads=32, num_key_value_heads=8, head_dim=128, rope_parameters=_MROPE),
        vision=dict(out_hidden_size=2560), mask_token_id=151671, tie_word_embeddings=True,
    ),
}
BLOCK_SIZES = (1, 4, 8, 16, 32)
BLOCK = 32  # forced-TPF runs decode 32-token blocks


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def interleaved(variants: dict, reps: int, device: torch.device, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each variant; every repetition runs all variants once, in turn."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            times[name].append(_timed(fn, device))
    return {name: statistics.median(t) for name, t in times.items()}


def build_models(size: str, dtype: torch.dtype, device: str = "cpu"):
    """Bard model and a stock HF Qwen3-VL with the same random weights; returns (bard, ar, eos_id)."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    config = tiny_config(**SIZES[size])
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        bard = BardVLForConditionalGeneration(config).to(dtype).eval()
    eos_id = config.text_config.vocab_size - 1
    with torch.no_grad():
        bard.lm_head.weight[eos_id].zero_()  # never the argmax: EOS never fires
    data = config.to_dict()
    for key in ("mask_token_id", "block_size", "prompt_attention", "model_type", "architectures"):
        data.pop(key, None)
    data["text_config"].pop("is_causal", None)
    ar_config = Qwen3VLConfig(**data)
    ar_config._attn_implementation = "sdpa"
    with torch.device(device):
        ar = Qwen3VLForConditionalGeneration(ar_config).to(dtype).eval()
    ar.load_state_dict(bard.state_dict())
    for m in (bard, ar):
        m.generation_config.eos_token_id = eos_id
        m.generation_config.pad_token_id = eos_id
    return bard, ar, eos_id


def prompt_batch(batch: int, length: int, vocab: int, device="cpu", seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(20, min(vocab, 5000), (batch, length), generator=gen).to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


# ----------------------------------------------------------------------------- forward cost
def _positions(n: int, start: int, q: int, device) -> torch.Tensor:
    return torch.arange(start, start + q, device=device).expand(3, n, -1)


@torch.no_grad()
def forward_costs(bard, ar, n: int, prompt_len: int, context: int, reps: int, device) -> dict:
    """Median ms of cached forwards with ``prompt_len + context`` tokens already in the cache."""
    vocab = bard.config.text_config.vocab_size
    cached = prompt_len + context
    ids = prompt_batch(n, cached + 2 * BLOCK, vocab, device)["input_ids"]
    layers = bard.config.text_config.num_hidden_layers
    cache = BlockKVCache(layers, n, cached + 2 * BLOCK)
    cache.set_window(0, cached, full_view=False, device=device)
    bard(input_ids=ids[:, :cached], attention_mask=torch.ones(n, 1, cached, cached, dtype=torch.bool, device=device),
         position_ids=_positions(n, 0, cached, device), past_key_values=cache, use_cache=True, logits_to_keep=1)
    stock_cache = DynamicCache(config=ar.config.get_text_config())
    ar(input_ids=ids[:, :cached], past_key_values=stock_cache, use_cache=True, logits_to_keep=1)

    def bard_step(q: int, fused: bool = False):
        start = cached - BLOCK if fused else cached  # fused: the last committed block + the noisy one
        mask = None
        if fused:  # clean queries do not see the noisy block (D4)
            mask = torch.ones(n, 1, 2 * BLOCK, cached + BLOCK, dtype=torch.bool, device=device)
            mask[:, :, :BLOCK, cached:] = False

        def run():
            cache.set_window(start, start + q, full_view=False, device=device)
            bard(input_ids=ids[:, start : start + q], attention_mask=mask, position_ids=_positions(n, start, q, device),
                 past_key_values=cache, use_cache=True, logits_to_keep=min(q, BLOCK))
        return run

    def stock_step(q: int, fused: bool = False):
        start = cached - BLOCK if fused else cached

        def run():
            if fused:  # drop the last committed block: the forward recomputes it
                stock_cache.crop(start - stock_cache.get_seq_length())
            ar(input_ids=ids[:, start : start + q], past_key_values=stock_cache, use_cache=True,
               logits_to_keep=min(q, BLOCK))
            stock_cache.crop(cached - stock_cache.get_seq_length())
        return run

    variants = {"ar_token": stock_step(1)}
    for b in BLOCK_SIZES:
        variants[f"bard_block{b}"] = bard_step(b)
        variants[f"stock_q{b}"] = stock_step(b)
    variants["bard_fused_commit"] = bard_step(2 * BLOCK, fused=True)
    variants["stock_q64"] = stock_step(2 * BLOCK, fused=True)
    ms = {k: v * 1e3 for k, v in interleaved(variants, reps, device).items()}
    ratios = {f"block{b}_vs_stock": ms[f"bard_block{b}"] / ms[f"stock_q{b}"] for b in BLOCK_SIZES}
    ratios["fused_commit_vs_stock"] = ms["bard_fused_commit"] / ms["stock_q64"]
    ratios["block32_vs_ar_token"] = ms["bard_block32"] / ms["ar_token"]
    return {"ms": ms, "ratios": ratios, "cached_tokens": cached}


# ----------------------------------------------------------------------------- generate
@torch.no_grad()
def ar_generate(model, batch, new_tokens: int, compiled=None) -> None:
    kw = dict(cache_implementation="static", compile_config=compiled) if compiled is not None else {}
    out = model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, **kw)
    assert out.shape[1] - batch["input_ids"].shape[1] == new_tokens


@torch.no_grad()
def bard_generate(model, batch, new_tokens: int, tpf: int, compile=False, dynamic: bool = False) -> None:
    """Forced TPF: the static strategy; ``dynamic`` runs the dynamic strategy with threshold 1.0,
    which never fires, so it commits exactly as static (same forwards) plus one flag read per
    step: the difference is the cost of that read."""
    strategy = dict(remasking_strategy="low_confidence_dynamic", confidence_threshold=1.0) if dynamic else dict(
        remasking_strategy="low_confidence_static")
    out = model.generate(batch, max_new_tokens=new_tokens, block_size=BLOCK, denoising_steps=BLOCK // tpf,
                         compile=compile, **strategy)
    assert out.shape[1] == new_tokens


def ar_compile_config(device: torch.device):
    """transformers' static cache + torch.compile of the decode forward (CUDA graphs on CUDA)."""
    from transformers.generation.configuration_utils import CompileConfig

    config = CompileConfig(fullgraph=False, mode="reduce-overhead" if device.type == "cuda" else "default")
    config._compile_all_devices = True  # transformers only auto-compiles on accelerators otherwise
    return config


def throughput(bard, ar, batch, new_tokens: int, tpfs, reps: int, device, compiled_ar: bool) -> dict:
    variants = {"ar": lambda: ar_generate(ar, batch, new_tokens)}
    if compiled_ar:
        config = ar_compile_config(device)
        variants["ar_static_compiled"] = lambda: ar_generate(ar, batch, new_tokens, compiled=config)
    for tpf in tpfs:
        variants[f"bard_tpf{tpf}"] = lambda tpf=tpf: bard_generate(bard, batch, new_tokens, tpf)
    variants["bard_tpf4_dynamic"] = lambda: bard_generate(bard, batch, new_tokens, 4, dynamic=True)
    seconds = interleaved(variants, reps, device)
    n = batch["input_ids"].shape[0] * new_tokens
    tokens_per_s = {k: n / s for k, s in seconds.items()}
    ratios = {"tpf4_static_vs_dynamic_same_forwards": tokens_per_s["bard_tpf4"] / tokens_per_s["bard_tpf4_dynamic"]}
    for tpf in tpfs:
        for base in [k for k in tokens_per_s if k.startswith("ar")]:
            ratios[f"tpf{tpf}_vs_{base}"] = tokens_per_s[f"bard_tpf{tpf}"] / tokens_per_s[base]
    return {"tokens_per_s": tokens_per_s, "ratios": ratios}


@torch.no_grad()
def decoder_overhead(bard, batch, new_tokens: int, tpf: int, reps: int, device) -> dict:
    """Share of ``generate`` wall time inside the model's forward (median over reps), host syncs."""
    inside = [0.0]
    start = [0.0]

    def pre(module, args, kwargs):
        _sync(device)
        start[0] = time.perf_counter()

    def post(module, args, kwargs, output):
        _sync(device)
        inside[0] += time.perf_counter() - start[0]

    handles = [bard.register_forward_pre_hook(pre, with_kwargs=True),
               bard.register_forward_hook(post, with_kwargs=True)]
    try:
        bard_generate(bard, batch, new_tokens, tpf)  # warm-up
        shares = []
        for _ in range(reps):
            inside[0] = 0.0
            total = _timed(lambda: bard_generate(bard, batch, new_tokens, tpf), device)
            shares.append(inside[0] / total)
    finally:
        for h in handles:
            h.remove()
    with HostSyncCounter() as counter:
        bard_generate(bard, batch, new_tokens, tpf)
    with HostSyncCounter() as dynamic:  # the same budget; its early exit reads one flag per step
        bard.generate(batch, max_new_tokens=new_tokens, block_size=BLOCK, denoising_steps=BLOCK // tpf,
                      remasking_strategy="low_confidence_dynamic")
    return {"forward_share": statistics.median(shares), "host_syncs": counter.total,
            "host_syncs_dynamic": dynamic.total,
            "blocks": -(-new_tokens // BLOCK), "forwards": -(-new_tokens // BLOCK) * (BLOCK // tpf)}


def time_per_token(bard, ar, batch, lengths, tpf: int, reps: int, device) -> dict:
    out = {"ar": {}, f"bard_tpf{tpf}": {}}
    for length in lengths:
        _progress(f"time per token at {length}")
        s = interleaved({"ar": lambda: ar_generate(ar, batch, length),
                         "bard": lambda: bard_generate(bard, batch, length, tpf)}, reps, device)
        out["ar"][length] = s["ar"] / length * 1e3
        out[f"bard_tpf{tpf}"][length] = s["bard"] / length * 1e3
    return out


def _progress(message: str) -> None:
    print(f"[decode-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(args) -> dict:
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    dtype = resolve_dtype(args.dtype, args.device)
    bard, ar, _ = build_models(args.size, dtype, args.device)
    vocab = bard.config.text_config.vocab_size
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "device": str(device), "dtype": str(dtype).removeprefix("torch."),
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
        "args": {k: v for k, v in vars(args).items() if k != "json"},
        "forward": {}, "throughput": {}, "overhead": {},
    }
    for n in args.batch:
        _progress(f"batch {n}: forward cost")
        result["forward"][n] = forward_costs(bard, ar, n, args.prompt_len, args.context, args.forward_reps, device)
        batch = prompt_batch(n, args.prompt_len, vocab, device)
        _progress(f"batch {n}: throughput at {args.tokens} tokens")
        result["throughput"][n] = throughput(bard, ar, batch, args.tokens, args.tpf, args.reps, device, args.compiled_ar)
        _progress(f"batch {n}: decoder overhead")
        result["overhead"][n] = decoder_overhead(bard, batch, args.tokens, 4, args.reps, device)
    if args.lengths:
        batch = prompt_batch(1, args.prompt_len, vocab, device)
        result["time_per_token_ms"] = time_per_token(bard, ar, batch, args.lengths, 4, args.reps, device)
    return result


def print_table(r: dict) -> None:
    m = r["machine"]
    print(f"\n== decode benchmark: size={r['args']['size']}, {m['device']} {m['gpu'] or ''} {m['dtype']}, "
          f"{m['threads']} thread(s), prompt {r['args']['prompt_len']}, reps {r['args']['reps']} "
          f"(forwards {r['args']['forward_reps']}; interleaved medians)")
    for n, f in r["forward"].items():
        ms, ratio = f["ms"], f["ratios"]
        print(f"batch {n}: AR token forward {ms['ar_token']:.2f} ms (cache {f['cached_tokens']})")
        print("  block | Bard ms | stock ms | Bard/stock | Bard/AR token")
        for b in BLOCK_SIZES:
            print(f"  {b:>5} | {ms[f'bard_block{b}']:>7.2f} | {ms[f'stock_q{b}']:>8.2f} | "
                  f"{ratio[f'block{b}_vs_stock']:>10.2f} | {ms[f'bard_block{b}'] / ms['ar_token']:>13.2f}")
        print(f"  fused | {ms['bard_fused_commit']:>7.2f} | {ms['stock_q64']:>8.2f} | "
              f"{ratio['fused_commit_vs_stock']:>10.2f} |")
    for n, t in r["throughput"].items():
        tps = "  ".join(f"{k} {v:.0f}" for k, v in t["tokens_per_s"].items())
        print(f"batch {n} tokens/s: {tps}")
        print("  ratios: " + "  ".join(f"{k} {v:.2f}" for k, v in t["ratios"].items()))
        o = r["overhead"][n]
        print(f"  TPF 4: {o['forward_share'] * 100:.1f} % of generate() inside the forward; "
              f"{o['host_syncs']} host syncs for {o['blocks']} blocks / {o['forwards']} forwards "
              f"(dynamic strategy: {o.get('host_syncs_dynamic', '-')})")
    if "time_per_token_ms" in r:
        for name, per_len in r["time_per_token_ms"].items():
            print(f"time per token (ms, batch 1) {name:<10} " + "  ".join(f"{k}: {v:.2f}" for k, v in per_len.items()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=tuple(SIZES), default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="auto: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--quick", action="store_true", help="batch 1/8, 3 reps, 64 tokens, lengths 64/256")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, nargs="+", default=None)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--context", type=int, default=64, help="committed tokens in the cache for the forward cost")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--forward-reps", type=int, default=None,
                   help="repetitions of the single-forward timings (cheap; default 15, --quick 5)")
    p.add_argument("--tokens", type=int, default=None, help="response length of the throughput runs")
    p.add_argument("--tpf", type=int, nargs="+", default=[1, 2, 4, 8], help="forced tokens per forward (divide 32)")
    p.add_argument("--lengths", type=int, nargs="*", default=None)
    p.add_argument("--compiled-ar", action=argparse.BooleanOptionalAction, default=True,
                   help="also time transformers' static cache + torch.compile AR baseline (compiles for minutes on CPU)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    args.batch = args.batch or ([1, 8] if args.quick else [1, 8, 32])
    args.reps = args.reps or (3 if args.quick else 5)
    args.forward_reps = args.forward_reps or (5 if args.quick else 15)
    args.tokens = args.tokens or (64 if args.quick else 256)
    if args.lengths is None:
        args.lengths = [64, 256] if args.quick else [64, 256, 1024]
    if any(BLOCK % t for t in args.tpf) or 4 not in args.tpf:
        p.error("--tpf values must divide 32 and include 4")
    result = run(args)
    print_table(result)
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        print(f"saved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Decoding cost of exact-cache block diffusion vs autoregressive decoding, in one run.

On a randomly initialised model of a chosen size (same weights for both):

1. per-forward latency with the KV cache for block sizes 1, 4, 8, 16, 32 (queries = one
   noisy block against ``prompt + context`` cached tokens), next to an AR decode forward
   (stock transformers Qwen3-VL, one token, same cache length);
2. AR baseline: transformers ``Qwen3VLForConditionalGeneration.generate`` (greedy, KV cache)
   tokens/s;
3. Bard ``generate`` tokens/s at forced tokens-per-forward (static strategy, block 32,
   ``denoising_steps = 32 / TPF``) and its ratio to AR;
4. time per token at response lengths 64 / 256 / 1024, for AR and Bard.

EOS is disabled by zeroing one LM-head row and using that id as EOS (random logits always
have a positive maximum), so every run decodes exactly the requested length. Prompts are
text only (the vision tower is not part of the decode loop). Prints a table, saves JSON.

    python benchmarks/decode.py --quick                 # tiny model, seconds
    python benchmarks/decode.py --size 0.5b --quick     # ~0.5B text decoder
    python benchmarks/decode.py --size 0.5b             # full run (minutes on 2 CPU cores)
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

from nemo_automodel_bard.generation.block_decode import _forward_block, _initial_rows
from nemo_automodel_bard.generation.validation import resolve_options
from nemo_automodel_bard.models.bard_vl import BardVLForConditionalGeneration
from nemo_automodel_bard.testing import tiny_config

# ~0.5B: Qwen2.5-0.5B-shaped text decoder (494M parameters, tied embeddings, 151936 vocabulary)
# and a small vision tower (unused by text prompts).
SIZES = {
    "tiny": {},
    "0.5b": dict(
        text=dict(
            vocab_size=151936,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            head_dim=64,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 5e6,
                "mrope_section": [12, 10, 10],
                "mrope_interleaved": True,
            },
        ),
        vision=dict(out_hidden_size=896),
        mask_token_id=151671,
        tie_word_embeddings=True,
    ),
}
BLOCK_SIZES = (1, 4, 8, 16, 32)


def build_models(size: str, dtype: torch.dtype):
    """Bard model and a stock HF Qwen3-VL with the same random weights; returns (bard, ar, eos_id)."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    config = tiny_config(**SIZES[size])
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    bard = BardVLForConditionalGeneration(config).to(dtype).eval()
    vocab = config.text_config.vocab_size
    eos_id = vocab - 1
    with torch.no_grad():
        bard.lm_head.weight[eos_id].zero_()  # never the argmax: EOS never fires
    data = config.to_dict()
    for key in ("mask_token_id", "block_size", "prompt_attention", "model_type", "architectures"):
        data.pop(key, None)
    ar_config = Qwen3VLConfig(**data)
    ar_config._attn_implementation = "sdpa"
    ar = Qwen3VLForConditionalGeneration(ar_config).to(dtype).eval()
    ar.load_state_dict(bard.state_dict())
    for m in (bard, ar):
        m.generation_config.eos_token_id = eos_id
        m.generation_config.pad_token_id = eos_id
    return bard, ar, eos_id


def prompt_batch(length: int, vocab: int, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(20, min(vocab, 5000), (1, length), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _median_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def bard_forward_latency(model, batch, block_size: int, context: int, repeats: int) -> float:
    """Seconds for one denoising forward of a ``block_size`` block against a cache of ``prompt + context``."""
    opts = resolve_options(
        model, max_new_tokens=context + block_size, block_size=block_size, denoising_steps=1, temperature=0.0,
        top_k=0, top_p=1.0, remasking_strategy="low_confidence_dynamic", confidence_threshold=0.5,
        mask_token_id=None, eos_token_id=None,
    )
    rows, P = _initial_rows(model, batch, opts)
    cache = DynamicCache(config=model.config.get_text_config())
    # Fill the cache with prompt + context "committed" tokens (one forward, keep everything).
    end = P + context
    n_blocks = context // block_size
    if context:
        rows.tokens[:, P:end] = torch.randint(20, min(model.config.text_config.vocab_size, 1000), (1, context))
    _forward_block(model, rows, cache, batch, opts, start=0, end=P + (n_blocks + 1) * block_size, vision=True)
    assert cache.get_seq_length() == end
    start_b = end

    def step():
        _forward_block(model, rows, cache, batch, opts, start=start_b, end=start_b + block_size, vision=False)

    return _median_time(step, repeats)


@torch.no_grad()
def ar_forward_latency(model, batch, context: int, repeats: int) -> float:
    """Seconds for one AR decode forward (1 token) with a cache of ``prompt + context``."""
    ids = torch.cat([batch["input_ids"], torch.randint(20, min(model.config.text_config.vocab_size, 1000), (1, context))], 1)
    cache = DynamicCache(config=model.config.get_text_config())
    model(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=cache, use_cache=True)
    token = ids[:, -1:]
    mask = torch.ones(1, ids.shape[1] + 1, dtype=torch.long)

    def step():
        model(input_ids=token, attention_mask=mask, past_key_values=cache, use_cache=True)
        cache.crop(-1)

    return _median_time(step, repeats)


@torch.no_grad()
def first_forward_times(bard, ar, batch, repeats: int) -> dict[str, float]:
    """Seconds of each decoder's first forward: AR prefill of the prompt; Bard's fused
    ``[prompt | block 0]`` forward (block 32). Subtracted for the steady-state per-token time."""
    opts = resolve_options(
        bard, max_new_tokens=32, block_size=32, denoising_steps=1, temperature=0.0, top_k=0, top_p=1.0,
        remasking_strategy="low_confidence_static", confidence_threshold=0.5, mask_token_id=None, eos_token_id=None,
    )
    rows, P = _initial_rows(bard, batch, opts)

    def bard_first():
        cache = DynamicCache(config=bard.config.get_text_config())
        _forward_block(bard, rows, cache, batch, opts, start=0, end=P + 32, vision=True)

    def ar_first():
        ar(**batch, past_key_values=DynamicCache(config=ar.config.get_text_config()), use_cache=True, logits_to_keep=1)

    return {"ar": _median_time(ar_first, repeats), "bard": _median_time(bard_first, repeats)}


@torch.no_grad()
def ar_generate_time(model, batch, new_tokens: int) -> float:
    start = time.perf_counter()
    out = model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    elapsed = time.perf_counter() - start
    assert out.shape[1] - batch["input_ids"].shape[1] == new_tokens
    return elapsed


@torch.no_grad()
def bard_generate_time(model, batch, new_tokens: int, tpf: int, block_size: int = 32) -> tuple[float, float]:
    start = time.perf_counter()
    out, stats = model.generate(
        batch, max_new_tokens=new_tokens, block_size=block_size, denoising_steps=block_size // tpf,
        remasking_strategy="low_confidence_static", return_step_stats=True,
    )
    elapsed = time.perf_counter() - start
    assert out.shape[1] == new_tokens
    return elapsed, stats.mean_tpf


def _progress(message: str) -> None:
    print(f"[decode-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    bard, ar, _ = build_models(args.size, dtype)
    vocab = bard.config.text_config.vocab_size
    batch = prompt_batch(args.prompt_len, vocab)
    n_params = sum(p.numel() for p in {id(p): p for p in bard.model.language_model.parameters()}.values())
    if not bard.config.tie_word_embeddings:
        n_params += bard.lm_head.weight.numel()
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "threads": args.threads,
                    "torch": torch.__version__, "device": "cpu", "dtype": args.dtype},
        "size": args.size, "text_decoder_params": n_params, "prompt_len": args.prompt_len, "context": args.context,
    }
    _progress(f"built {args.size} models; per-forward latency")
    ar_fwd = ar_forward_latency(ar, batch, args.context, args.repeats)
    result["ar_forward_ms"] = ar_fwd * 1e3
    result["bard_forward_ms"] = {
        b: bard_forward_latency(bard, batch, b, args.context, args.repeats) * 1e3 for b in BLOCK_SIZES
    }
    result["bard_forward_vs_ar"] = {b: ms / result["ar_forward_ms"] for b, ms in result["bard_forward_ms"].items()}

    n = args.throughput_tokens
    _progress(f"throughput at {n} tokens")
    ar_time = ar_generate_time(ar, batch, n)
    result["ar_tokens_per_s"] = n / ar_time
    result["bard_tokens_per_s"] = {}
    for tpf in args.tpf:
        elapsed, measured_tpf = bard_generate_time(bard, batch, n, tpf)
        result["bard_tokens_per_s"][tpf] = {"tokens_per_s": n / elapsed, "measured_tpf": measured_tpf,
                                            "ratio_vs_ar": (n / elapsed) / result["ar_tokens_per_s"]}
    bard_key = f"bard_tpf{args.tpf[-1]}"
    result["time_per_token_ms"] = {"ar": {}, bard_key: {}}
    result["steady_time_per_token_ms"] = {"ar": {}, bard_key: {}}
    first = first_forward_times(bard, ar, batch, args.repeats)
    result["first_forward_ms"] = {"ar": first["ar"] * 1e3, bard_key: first["bard"] * 1e3}
    for length in args.lengths:
        _progress(f"time per token at {length} tokens")
        reps = max(1, min(3, 256 // length))  # short runs are noisier: median of a few
        ar_s = statistics.median(ar_generate_time(ar, batch, length) for _ in range(reps))
        bard_s = statistics.median(bard_generate_time(bard, batch, length, args.tpf[-1])[0] for _ in range(reps))
        result["time_per_token_ms"]["ar"][length] = ar_s / length * 1e3
        result["time_per_token_ms"][bard_key][length] = bard_s / length * 1e3
        # Steady state: without the first forward (prompt prefill), which short answers cannot amortise.
        result["steady_time_per_token_ms"]["ar"][length] = (ar_s - first["ar"]) / length * 1e3
        result["steady_time_per_token_ms"][bard_key][length] = (bard_s - first["bard"]) / length * 1e3
    for table in ("time_per_token", "steady_time_per_token"):
        for name, per_len in result[f"{table}_ms"].items():
            values = list(per_len.values())
            result.setdefault(f"{table}_spread", {})[name] = max(values) / min(values) - 1
    return result


def print_table(r: dict) -> None:
    print(f"\n== decode benchmark: size={r['size']} ({r['text_decoder_params'] / 1e6:.1f}M text params), "
          f"{r['machine']['dtype']}, {r['machine']['threads']} thread(s), prompt {r['prompt_len']}, context {r['context']}")
    print(f"AR decode forward (1 token): {r['ar_forward_ms']:.2f} ms")
    print("block | Bard forward ms | x AR forward")
    for b, ms in r["bard_forward_ms"].items():
        print(f"{b:>5} | {ms:>15.2f} | {r['bard_forward_vs_ar'][b]:>12.2f}")
    print(f"AR generate: {r['ar_tokens_per_s']:.1f} tok/s")
    print("forced TPF | measured TPF | Bard tok/s | ratio vs AR")
    for tpf, v in r["bard_tokens_per_s"].items():
        print(f"{tpf:>10} | {v['measured_tpf']:>12.2f} | {v['tokens_per_s']:>10.1f} | {v['ratio_vs_ar']:>11.2f}")
    print("first forward (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in r["first_forward_ms"].items()))
    for table, title in (("time_per_token", "time per token"), ("steady_time_per_token", "without the first forward")):
        print(f"{title} (ms) by response length")
        for name, per_len in r[f"{table}_ms"].items():
            cells = "  ".join(f"{n}: {ms:.2f}" for n, ms in per_len.items())
            print(f"  {name:<10} {cells}   (max/min - 1 = {r[f'{table}_spread'][name] * 100:.1f} %)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=tuple(SIZES), default="tiny")
    p.add_argument("--quick", action="store_true", help="fewer repeats and shorter generations")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--context", type=int, default=64, help="committed tokens in the cache for the per-forward latency")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--throughput-tokens", type=int, default=None)
    p.add_argument("--tpf", type=int, nargs="+", default=[1, 2, 4, 8], help="forced tokens per forward (divide 32)")
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--out", default=None, help="JSON path (default runs/bench_decode_<size>.json)")
    args = p.parse_args(argv)
    args.repeats = args.repeats or (5 if args.quick else 20)
    args.throughput_tokens = args.throughput_tokens or (64 if args.quick else 256)
    if args.quick and args.size != "tiny" and args.lengths == [64, 256, 1024]:
        args.lengths = [64, 256]
    if any(32 % t for t in args.tpf):
        p.error("--tpf values must divide the block size 32")
    result = run(args)
    print_table(result)
    out = Path(args.out or f"runs/bench_decode_{args.size}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

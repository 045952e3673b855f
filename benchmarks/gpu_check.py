"""Parts of ``benchmarks/gpu_check.sh`` (one process each) and the summary that merges them.

    python benchmarks/gpu_check.py latency    --out OUT/latency.json    [--smoke]
    python benchmarks/gpu_check.py throughput --out OUT/throughput.json [--smoke]
    python benchmarks/gpu_check.py exactness  --out OUT/exactness.json  [--smoke]
    python benchmarks/gpu_check.py summary OUT

Random weights at real Qwen3-VL-4B text shapes, bf16, on the first CUDA device (``--smoke``:
the tiny test config in fp32 on CPU, small sizes, for the test suite). No network.

* latency: one cached forward of a noisy block of 1/4/8/16/32 tokens (and the fused commit)
  against a 1k-token cache, vs the stock Qwen3-VL forward of the same shapes and vs an AR
  token, batch 1 and 16; plus the SDPA kernel each kind of step runs (profiler op names);
* throughput: full ``generate`` tokens/s at forced TPF 4 (block 32, 8 static steps) vs
  transformers AR ``generate`` (dynamic cache; and static cache + compile on CUDA), Bard
  eager and ``compile=True``;
* exactness: cached == uncached decoding of a left-padded batch, and sdpa == eager logits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

PARTS = ("latency", "throughput", "exactness")
BLOCK_SIZES = (1, 4, 8, 16, 32)  # benchmarks/decode.py's; the summary must not import the model stack


def _bench():
    """benchmarks/decode.py (imported by the parts only: the model stack takes long to import)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import decode

    return decode


def _setting(smoke: bool) -> dict:
    if smoke:
        return dict(size="tiny", device="cpu", dtype=torch.float32, batch=[1, 2], cache=64, tokens=32, reps=2)
    return dict(size="4b", device="cuda", dtype=torch.bfloat16, batch=[1, 16], cache=1024, tokens=256, reps=5)


def sdpa_kernels(model, fn) -> list[str]:
    """Names of the scaled-dot-product-attention ops ``fn`` runs (which backend SDPA picked)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key or "attention" in e.key.lower()}
    return sorted(n for n in names if n.startswith("aten::"))


@torch.no_grad()
def part_latency(s: dict) -> dict:
    bench = _bench()
    device = torch.device(s["device"])
    bard, ar, _ = bench.build_models(s["size"], s["dtype"], s["device"])
    out = {"cache_tokens": s["cache"], "batch": {}}
    for n in s["batch"]:
        out["batch"][n] = bench.forward_costs(bard, ar, n, s["cache"], 0, s["reps"], device)
    out["sdpa_kernels"] = _kernels(bard, s, device)
    return out


def _kernels(bard, s: dict, device) -> dict:
    """Kernel of a steady step (no mask, exact cache view) and of a masked step (fused commit)."""
    from nemo_automodel_bard.generation.kv_cache import BlockKVCache

    bench = _bench()
    n, cached, B = 1, s["cache"], bench.BLOCK
    ids = bench.prompt_batch(n, cached + B, bard.config.text_config.vocab_size, device)["input_ids"]
    cache = BlockKVCache(bard.config.text_config.num_hidden_layers, n, cached + B)
    cache.set_window(0, cached, full_view=False, device=device)
    full = torch.ones(n, 1, cached, cached, dtype=torch.bool, device=device)
    bard(input_ids=ids[:, :cached], attention_mask=full, position_ids=bench._positions(n, 0, cached, device),
         past_key_values=cache, use_cache=True, logits_to_keep=1)

    def step(mask):
        def run():
            cache.set_window(cached, cached + B, full_view=False, device=device)
            bard(input_ids=ids[:, cached:], attention_mask=mask, position_ids=bench._positions(n, cached, B, device),
                 past_key_values=cache, use_cache=True, logits_to_keep=B)
        return run

    masked = torch.ones(n, 1, B, cached + B, dtype=torch.bool, device=device)
    return {"steady_no_mask": sdpa_kernels(bard, step(None)), "masked": sdpa_kernels(bard, step(masked))}


@torch.no_grad()
def part_throughput(s: dict) -> dict:
    bench = _bench()
    device = torch.device(s["device"])
    bard, ar, _ = bench.build_models(s["size"], s["dtype"], s["device"])
    vocab = bard.config.text_config.vocab_size
    out = {"tokens": s["tokens"], "tpf": 4, "batch": {}}
    for n in s["batch"]:
        batch = bench.prompt_batch(n, 64, vocab, device)
        variants = {
            "ar": lambda: bench.ar_generate(ar, batch, s["tokens"]),
            "bard_tpf4": lambda: bench.bard_generate(bard, batch, s["tokens"], 4),
            # Same commits and forwards as bard_tpf4, plus the dynamic strategy's per-step flag read.
            "bard_tpf4_dynamic": lambda: bench.bard_generate(bard, batch, s["tokens"], 4, dynamic=True),
        }
        if device.type == "cuda":  # compiling on CPU takes minutes: not in the smoke run
            config = bench.ar_compile_config(device)
            variants["ar_static_compiled"] = lambda: bench.ar_generate(ar, batch, s["tokens"], compiled=config)
            variants["bard_tpf4_compiled"] = lambda: bench.bard_generate(bard, batch, s["tokens"], 4, compile=True)
            variants["bard_tpf4_compiled_dynamic"] = lambda: bench.bard_generate(
                bard, batch, s["tokens"], 4, compile=True, dynamic=True)
        seconds = bench.interleaved(variants, s["reps"], device)
        tps = {k: n * s["tokens"] / v for k, v in seconds.items()}
        ratios = {f"{b}_vs_{a}": tps[b] / tps[a] for b in tps if b.startswith("bard") for a in tps if a.startswith("ar")}
        for static in [k for k in tps if k.startswith("bard") and not k.endswith("_dynamic")]:
            ratios[f"{static}_vs_its_dynamic"] = tps[static] / tps[f"{static}_dynamic"]
        out["batch"][n] = {"tokens_per_s": tps, "ratios": ratios}
    return out


@torch.no_grad()
def part_exactness(s: dict) -> dict:
    from nemo_automodel_bard.generation.block_decode import _initial_rows, block_generate
    from nemo_automodel_bard.generation.forward import decode_attention_mask
    from nemo_automodel_bard.generation.validation import resolve_options

    bench = _bench()
    device = torch.device(s["device"])
    bard, _, _ = bench.build_models(s["size"], s["dtype"], s["device"])
    vocab = bard.config.text_config.vocab_size
    prompts = bench.prompt_batch(2, 40, vocab, device)
    prompts["attention_mask"][1, :7] = 0  # left padding on the second row: masked steps too
    kw = dict(max_new_tokens=40, block_size=8, denoising_steps=4, remasking_strategy="low_confidence_dynamic",
              confidence_threshold=0.05)
    cached = bard.generate(prompts, **kw)
    uncached = block_generate(bard, prompts, use_cache=False, **kw)  # recomputes everything every step
    out = {"cached_equals_uncached": bool(torch.equal(cached, uncached)),
           "token_agreement": float((cached == uncached).float().mean()) if cached.shape == uncached.shape else 0.0}
    # sdpa vs eager on the same prompt forward with a block-diffusion mask (prefill + block 0)
    opts = resolve_options(bard, max_new_tokens=8, block_size=8, denoising_steps=8, temperature=0.0, top_k=0, top_p=1.0,
                           remasking_strategy="low_confidence_static", confidence_threshold=0.5, mask_token_id=None,
                           eos_token_id=None)
    rows, P = _initial_rows(bard, prompts, opts)
    mask = decode_attention_mask(rows.segment, rows.block, start=0, end=P + 8, block_size=8)[:, None]
    logits = {}
    for impl in ("sdpa", "eager"):
        bard.set_attn_implementation(impl)
        logits[impl] = bard(input_ids=rows.tokens[:, : P + 8], attention_mask=mask,
                            position_ids=rows.positions[:, :, : P + 8], logits_to_keep=8).logits.float()
    bard.set_attn_implementation("sdpa")
    out["sdpa_vs_eager_max_abs"] = float((logits["sdpa"] - logits["eager"]).abs().max())
    out["sdpa_vs_eager_argmax_agreement"] = float((logits["sdpa"].argmax(-1) == logits["eager"].argmax(-1)).float().mean())
    return out


def summary(out_dir: Path) -> int:
    """Merge the parts' JSON (and exit codes) into ``summary.json``; print a table; 0 if all passed."""
    merged, ok = {}, True
    for part in PARTS:
        rc_file, json_file = out_dir / f"{part}.rc", out_dir / f"{part}.json"
        rc = int(rc_file.read_text().strip()) if rc_file.exists() else None
        status = "ok" if rc == 0 and json_file.exists() else ("timeout" if rc in (124, 137) else f"failed (rc {rc})")
        ok &= status == "ok"
        merged[part] = {"status": status, **(json.loads(json_file.read_text()) if json_file.exists() else {})}
    (out_dir / "summary.json").write_text(json.dumps(merged, indent=2))
    print(f"== GPU check ({out_dir}) ==")
    for part, r in merged.items():
        print(f"[{part}] {r['status']}" + ("" if r["status"] == "ok" else f" (see {out_dir / (part + '.log')})"))
    lat = merged["latency"]
    for n, f in lat.get("batch", {}).items():
        ms = f["ms"]
        cells = "  ".join(f"B{b} {ms[f'bard_block{b}']:.2f} ({f['ratios'][f'block{b}_vs_stock']:.2f}x stock)"
                          for b in BLOCK_SIZES)
        print(f"  batch {n}, cache {lat['cache_tokens']}: AR token {ms['ar_token']:.2f} ms | {cells} | "
              f"block32/AR token {f['ratios']['block32_vs_ar_token']:.2f}")
    if "sdpa_kernels" in lat:
        kernels = lat["sdpa_kernels"]
        print(f"  SDPA kernels: steady (no mask) {kernels['steady_no_mask']}, masked {kernels['masked']}")
    for n, t in merged["throughput"].get("batch", {}).items():
        print(f"  batch {n} tokens/s: " + "  ".join(f"{k} {v:.1f}" for k, v in t["tokens_per_s"].items()))
        print("    ratios: " + "  ".join(f"{k} {v:.2f}" for k, v in t["ratios"].items()))
    ex = merged["exactness"]
    if "cached_equals_uncached" in ex:
        print(f"  cached == uncached: {ex['cached_equals_uncached']} (token agreement {ex['token_agreement']:.3f}); "
              f"sdpa vs eager max |diff| {ex['sdpa_vs_eager_max_abs']:.2e}, argmax agreement "
              f"{ex['sdpa_vs_eager_argmax_agreement']:.3f}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("part", choices=PARTS + ("summary",))
    p.add_argument("out", nargs="?", help="summary: the output directory")
    p.add_argument("--out", dest="out_file", help="part: JSON file to write")
    p.add_argument("--smoke", action="store_true", help="tiny fp32 model on CPU (test suite)")
    args = p.parse_args(argv)
    if args.part == "summary":
        return summary(Path(args.out))
    s = _setting(args.smoke)
    if s["device"] == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (use --smoke on CPU)", file=sys.stderr)
        return 2
    if args.smoke:
        torch.set_num_threads(1)
    start = time.perf_counter()
    result = {"part_latency": part_latency, "part_throughput": part_throughput,
              "part_exactness": part_exactness}[f"part_{args.part}"](s)
    result["setting"] = {k: str(v) for k, v in s.items()}
    result["seconds"] = time.perf_counter() - start
    if s["device"] == "cuda":
        result["gpu"] = torch.cuda.get_device_name()
    Path(args.out_file).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

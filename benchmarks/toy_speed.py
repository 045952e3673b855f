"""Where a toy answer's decoding time goes, AR vs Bard, at batch 1 (interleaved, repeated).

On a finished ``bard demo`` run, the AR source and the SWD B=32 model (at the run's chosen
threshold) decode the same test prompts one at a time, alternating per prompt, ``--repeats``
times, with the demo's decoders and timing (only the ``generate`` calls are timed). Forward hooks
split each ``generate`` into: the vision encoder, the first language-model forward (AR: the
prompt prefill; Bard: prefill fused with the first block's first denoising step), the later
language-model forwards, the rest of the model calls (embedding, image-token merge, rope
positions, LM head) and the decoding loop outside the model calls (transformers' ``generate``
for AR, ``block_generate`` for Bard). From the split it prints what bounds the
tokens/s ratio: with short answers the per-prompt fixed cost (vision + prefill) is paid once
by both decoders and caps the ratio well below the tokens per forward.

    python benchmarks/toy_speed.py --run runs/toy [--prompts 64] [--repeats 5] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from nemo_automodel_bard.toy import evaluate as ev

PARTS = ("vision", "first_forward", "later_forwards", "head_and_glue", "loop")


class ForwardClock:
    """Wall time of the vision encoder and of each language-model forward (hooks, no sync: CPU)."""

    def __init__(self, model: torch.nn.Module):
        self.reset()
        self._in_model = False
        inner = model.model
        self._hook(model, self._model_done, self._model_start)
        self._hook(inner.visual, self._vision_done)
        self._hook(inner.language_model, lambda dt: self.forwards.append(dt))

    def _hook(self, module: torch.nn.Module, done, started=None) -> None:
        start = []

        def pre(*_):
            if started:
                started()
            start.append(time.perf_counter())
        module.register_forward_pre_hook(pre)
        module.register_forward_hook(lambda *_: done(time.perf_counter() - start.pop()))

    def _model_start(self) -> None:
        self._in_model = True

    def _vision_done(self, dt: float) -> None:
        # transformers' generate encodes images before its first model call; Bard inside it
        self.vision += dt
        self.vision_in_model += dt if self._in_model else 0.0

    def _model_done(self, dt: float) -> None:
        self.model += dt
        self._in_model = False

    def reset(self) -> None:
        self.vision, self.vision_in_model, self.model, self.forwards = 0.0, 0.0, 0.0, []


def _parts(clock: ForwardClock, total: float, tokens: int) -> dict:
    """One answer's time split (seconds) from its ``generate`` wall time and the hooks' clocks."""
    first, later = clock.forwards[0], sum(clock.forwards[1:])
    return {"total": total, "vision": clock.vision, "first_forward": first, "later_forwards": later,
            "head_and_glue": clock.model - clock.vision_in_model - first - later,
            "loop": total - clock.model - (clock.vision - clock.vision_in_model),
            "later_count": len(clock.forwards) - 1, "tokens": tokens}


def measure(run: Path, prompts: int, repeats: int, threshold: float | None, max_new_tokens: int) -> dict:
    """Per-answer time split (means over prompts x repeats) and the interleaved tokens/s ratio.

    The project's own decoders (``toy/evaluate.py``: the demo's settings, only ``generate``
    timed) run one prompt at a time through ``interleaved_timing``, the demo's speed timing.
    """
    from nemo_automodel_bard.toy.stats import interleaved_timing

    summary = json.loads((run / "summary.json").read_text())
    threshold = float(summary["threshold"]) if threshold is None else threshold
    examples = ev.load_examples(run / "data" / "test.jsonl", prompts)
    ar, processor = ev.load_ar(summary["checkpoints"]["ar"])
    bard = ev.load_bard(summary["checkpoints"]["swd_b32"])
    decoders = {"ar": (ar, ev.ar_decoder(ar, processor, max_new_tokens)),
                "bard": (bard, ev.bard_decoder(bard, processor, max_new_tokens, **ev.bard_settings(32, threshold)))}
    rows: dict[str, list[dict]] = {name: [] for name in decoders}

    def split_recorded(name: str):
        model, decode = decoders[name]
        clock = ForwardClock(model)
        decode(examples[:1])  # untimed warm-up, as in the demo

        def run_one(chunk: list[dict]) -> tuple[int, float]:
            clock.reset()
            (result,) = decode(chunk)
            rows[name].append(_parts(clock, result.seconds, result.tokens))
            return result.tokens, result.seconds
        return run_one

    timing = interleaved_timing({name: split_recorded(name) for name in decoders}, ev.chunked(examples, 1), repeats)
    return {"threshold": threshold, "prompts": prompts, "repeats": repeats, "threads": torch.get_num_threads(),
            "split_ms": {name: _split(r) for name, r in rows.items()},
            "tokens_per_s": {name: v["median"] for name, v in timing["tokens_per_s"].items()},
            "speedup": timing["ratio"]["bard"]["median"]}


def _split(rows: list[dict]) -> dict:
    """Mean per answer (ms) of each part; later forwards also per call."""
    mean = {part: 1e3 * statistics.fmean(r[part] for r in rows) for part in ("total",) + PARTS}
    calls = sum(r["later_count"] for r in rows)
    mean["per_later_forward"] = 1e3 * sum(r["later_forwards"] for r in rows) / calls if calls else 0.0
    mean["forwards_per_answer"] = 1 + calls / len(rows)
    mean["tokens_per_answer"] = statistics.fmean(r["tokens"] for r in rows)
    return mean


def bounds(result: dict) -> dict:
    """Tokens/s ratios (from the mean split) if parts of Bard's or both decoders' time were free."""
    ar, bard = result["split_ms"]["ar"], result["split_ms"]["bard"]
    fixed = ("vision", "first_forward")
    ar_t, bard_t = ar["total"] / ar["tokens_per_answer"], bard["total"] / bard["tokens_per_answer"]
    no_fixed_ar = sum(ar[p] for p in PARTS if p not in fixed) / ar["tokens_per_answer"]
    no_fixed_bard = sum(bard[p] for p in PARTS if p not in fixed) / bard["tokens_per_answer"]
    no_loop_bard = (bard["total"] - bard["loop"]) / bard["tokens_per_answer"]
    return {"from_split": ar_t / bard_t, "bard_loop_free": ar_t / no_loop_bard,
            "fixed_costs_free": no_fixed_ar / no_fixed_bard if no_fixed_bard else float("inf")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished `bard demo` folder")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threshold", type=float, default=None, help="default: the run's val-chosen threshold")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = measure(args.run, args.prompts, args.repeats, args.threshold, args.max_new_tokens)
    result["bounds"] = bounds(result)
    print(f"{args.prompts} prompts x {args.repeats} repeats, batch 1, threshold {result['threshold']}, "
          f"{result['threads']} thread(s); mean ms per answer:")
    print("| decoder | total | vision | first LM forward | later LM forwards (count x ms) | head + glue | loop | tokens |")
    print("|---|---|---|---|---|---|---|---|")
    for name, s in result["split_ms"].items():
        print(f"| {name} | {s['total']:.2f} | {s['vision']:.2f} | {s['first_forward']:.2f} | {s['later_forwards']:.2f} "
              f"({s['forwards_per_answer'] - 1:.1f} x {s['per_later_forward']:.2f}) | {s['head_and_glue']:.2f} | "
              f"{s['loop']:.2f} | {s['tokens_per_answer']:.1f} |")
    b = result["bounds"]
    print(f"Bard/AR tokens/s: {result['speedup']:.2f}x (median of repeats; {b['from_split']:.2f}x from the mean split); "
          f"if Bard's loop were free: {b['bard_loop_free']:.2f}x; if vision and the first forward were free for "
          f"both (the long-answer limit): {b['fixed_costs_free']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

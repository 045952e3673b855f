"""Evaluate AR and Bard-VL checkpoints on the toy test split: accuracy, TPF, forwards, tokens/s.

Definitions (same for every model, measured in one process on one machine; samples are
decoded in batches, which changes no output or count, only the wall time):

* **exact match**: the decoded answer (up to EOS, special tokens dropped) equals the
  reference word for word;
* **token accuracy**: words equal at the same position, over ``max(len(pred), len(ref))``
  (a missing or extra word counts as wrong);
* **forwards**: model calls spent decoding (AR: one per generated token, the prefill
  included; Bard: every denoising forward, prefill and commit fused, see ``StepStats``);
* **TPF**: generated tokens (EOS included) / forwards (AR = 1 by construction);
* **tokens/s**: generated tokens / wall time of the ``generate`` calls (at the row's batch
  size); speed *ratios* come from :func:`timed_speedups` (AR and Bard interleaved, repeated).

``bard eval --data DIR --ar AR_CKPT --bard b32=CKPT --block-size 32 --out DIR``

Every argument, the data file and each checkpoint folder (``--ar`` a Qwen3-VL, each ``--bard``
a Bard-VL) are checked before any model loads. ``--out`` is locked (``OUT/.bard-eval.lock``)
for the whole run: a second ``bard eval`` on the same folder is refused instead of racing the
first one for ``eval.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = [
    "DecodeResult",
    "Metrics",
    "exact_match",
    "token_accuracy",
    "summarize",
    "load_examples",
    "prompt_batch",
    "Decoder",
    "ar_decoder",
    "bard_decoder",
    "bard_settings",
    "chunked",
    "evaluate",
    "timed_speedups",
    "main",
]

DEFAULT_THRESHOLDS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)


@dataclass
class DecodeResult:
    """What one ``generate`` call produced for one sample."""

    text: str
    tokens: int
    forwards: int
    seconds: float


@dataclass
class Metrics:
    """Aggregate metrics of one decoding configuration over a split."""

    name: str
    exact_match: float
    token_accuracy: float
    tpf: float
    forwards: int
    tokens: int
    tokens_per_s: float
    seconds: float
    samples: int
    settings: dict = field(default_factory=dict)
    per_task: dict = field(default_factory=dict)
    per_task_samples: dict = field(default_factory=dict)
    hits: list = field(default_factory=list)  # per-sample exact match (0/1), for paired intervals


def exact_match(pred: str, ref: str) -> bool:
    """Word-for-word equality (whitespace-insensitive)."""
    return pred.split() == ref.split()


def token_accuracy(pred: str, ref: str) -> float:
    """Fraction of positions where the words agree, over the longer of the two sequences."""
    p, r = pred.split(), ref.split()
    length = max(len(p), len(r))
    if length == 0:
        return 1.0
    return sum(a == b for a, b in zip(p, r)) / length


def summarize(name: str, refs: list[str], results: list[DecodeResult], tasks: list[str] | None = None,
              settings: dict | None = None) -> Metrics:
    """Aggregate per-sample results into :class:`Metrics` (means over samples, sums of counts)."""
    n = len(results)
    em = [exact_match(r.text, ref) for r, ref in zip(results, refs)]
    tokens = sum(r.tokens for r in results)
    forwards = sum(r.forwards for r in results)
    seconds = sum(r.seconds for r in results)
    per_task: dict[str, float] = {}
    per_task_samples: dict[str, int] = {}
    for task in sorted({t for t in tasks or [] if t}):  # rows without a "task" key: no breakdown
        hits = [e for e, t in zip(em, tasks) if t == task]
        per_task[task] = sum(hits) / len(hits)
        per_task_samples[task] = len(hits)
    return Metrics(
        name=name,
        exact_match=sum(em) / n,
        token_accuracy=sum(token_accuracy(r.text, ref) for r, ref in zip(results, refs)) / n,
        tpf=tokens / forwards if forwards else 0.0,
        forwards=forwards,
        tokens=tokens,
        tokens_per_s=tokens / seconds if seconds else 0.0,
        seconds=seconds,
        samples=n,
        settings=settings or {},
        per_task=per_task,
        per_task_samples=per_task_samples,
        hits=[int(e) for e in em],
    )


def load_examples(path: str | Path, limit: int | None = None) -> list[dict]:
    """Records of a toy jsonl split: ``question``, ``answer``, ``task``, ``image`` (absolute path)."""
    path = Path(path)
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        user = record["messages"][0]["content"]
        out.append({
            "question": next(p["text"] for p in user if p["type"] == "text"),
            "image": str(path.parent / next(p["image"] for p in user if p["type"] == "image")),
            "answer": record["answer"],
            "task": record.get("task", ""),
        })
    return out[:limit]


def prompt_batch(processor: Any, examples: dict | list[dict]) -> dict[str, torch.Tensor]:
    """Processor output for the examples' user turns (generation prompt added, left-padded)."""
    from PIL import Image

    examples = [examples] if isinstance(examples, dict) else examples
    if processor.tokenizer.padding_side != "left":
        raise ValueError("batched decoding needs a left-padding tokenizer (processor.tokenizer.padding_side = 'left')")
    texts, images = [], []
    for example in examples:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": example["question"]}]}]
        texts.append(processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        images.append(Image.open(example["image"]).convert("RGB"))
    batch = processor(text=texts, images=images, return_tensors="pt", padding=True)
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    batch["mm_token_type_ids"] = (batch["input_ids"] == image_id).long()
    return batch


def _decode_text(tokenizer: Any, ids: list[int], eos_id: int) -> tuple[str, int]:
    """Text up to (excluding) the first EOS, and the token count including that EOS."""
    if eos_id in ids:
        ids = ids[: ids.index(eos_id) + 1]
    return tokenizer.decode(ids, skip_special_tokens=True).strip(), len(ids)


# A decoder maps a chunk of examples (decoded as one batch) to one result per example. The
# chunk's wall time is shared equally by its samples: per-sample seconds only feed sums.
Decoder = Callable[[list[dict]], list[DecodeResult]]


def ar_decoder(model: Any, processor: Any, max_new_tokens: int) -> Decoder:
    """Greedy AR decoding with transformers' ``generate`` and its KV cache (batched, left-padded)."""
    tokenizer = processor.tokenizer
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def decode(examples: list[dict]) -> list[DecodeResult]:
        batch = prompt_batch(processor, examples)
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                 eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
        seconds = (time.perf_counter() - start) / len(examples)
        results = []
        for row in out[:, batch["input_ids"].shape[1]:].tolist():
            text, tokens = _decode_text(tokenizer, row, eos)
            results.append(DecodeResult(text=text, tokens=tokens, forwards=tokens, seconds=seconds))
        return results

    return decode


def bard_decoder(model: Any, processor: Any, max_new_tokens: int, **gen_kwargs: Any) -> Decoder:
    """Block-diffusion decoding through ``model.generate(..., return_step_stats=True)`` (batched)."""
    tokenizer = processor.tokenizer
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def decode(examples: list[dict]) -> list[DecodeResult]:
        batch = prompt_batch(processor, examples)
        start = time.perf_counter()
        ids, stats = model.generate(batch, max_new_tokens=max_new_tokens, return_step_stats=True, **gen_kwargs)
        seconds = (time.perf_counter() - start) / len(examples)
        return [DecodeResult(text=_decode_text(tokenizer, row, eos)[0], tokens=tokens, forwards=forwards,
                             seconds=seconds)
                for row, tokens, forwards in zip(ids.tolist(), stats.num_tokens, stats.num_forwards)]

    return decode


def bard_settings(block_size: int, threshold: float, revision_threshold: float = 0.0) -> dict:
    """The toy evaluation's decoding options: greedy, dynamic remasking at ``threshold``, at most
    one step per position (``denoising_steps = block_size``); token revision only when asked."""
    settings = dict(block_size=block_size, denoising_steps=block_size, remasking_strategy="low_confidence_dynamic",
                    confidence_threshold=threshold, temperature=0.0)
    if revision_threshold:
        settings["revision_threshold"] = revision_threshold
    return settings


def chunked(examples: list[dict], batch_size: int) -> list[list[dict]]:
    """Consecutive chunks of ``batch_size`` examples (the last may be shorter)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [examples[i: i + batch_size] for i in range(0, len(examples), batch_size)]


def evaluate(name: str, decode: Decoder, examples: list[dict], settings: dict | None = None,
             progress: bool = True, batch_size: int = 16) -> Metrics:
    """Run ``decode`` over ``examples`` in batches of ``batch_size`` and summarize.

    Batching changes neither the outputs nor the forward counts (both ``generate`` paths
    decode a batch exactly as its samples alone; tests/toy/test_evaluate.py checks it), only
    the wall time: tokens/s here is batch-``batch_size`` throughput. Speed ratios come from
    :func:`timed_speedups` instead. One untimed call first: the first forward of a process
    pays one-off set-up costs that would otherwise be charged to whichever model runs first.
    """
    if examples:
        decode(examples[:1])
    chunks = chunked(examples, batch_size)
    results: list[DecodeResult] = []
    for i, chunk in enumerate(chunks):
        results.extend(decode(chunk))
        if progress and (i + 1) % max(1, len(chunks) // 4) == 0:
            print(f"[eval {name}] {len(results)}/{len(examples)}", flush=True)
    settings = {**(settings or {}), "batch_size": batch_size}
    return summarize(name, [e["answer"] for e in examples], results, [e["task"] for e in examples], settings)


def timed_speedups(ar: Decoder, bard: Decoder, examples: list[dict], batch_sizes: tuple[int, ...] = (1, 8),
                   repeats: int = 5) -> dict[str, dict]:
    """Bard / AR tokens/s, both timed interleaved chunk by chunk over the same prompts.

    Only the ``generate`` calls are timed (each decoder's own ``seconds``): building the prompt
    tensors (image loading and preprocessing, ~1 ms a prompt here) is the same work for both
    and would pull the ratio towards 1.

    Returns ``{"batch_<b>": {"speedup": median_iqr, "ar_tokens_per_s": median_iqr,
    "bard_tokens_per_s": median_iqr, "bard_tpf", "prompts", "repeats"}}`` per batch size;
    ``bard_tpf`` is Bard's tokens per forward on the timed prompts (the speed ratio's ceiling).
    """
    from nemo_automodel_bard.toy.stats import interleaved_timing

    def tokens_of(decode: Decoder, counts: list[int]) -> Callable[[list[dict]], tuple[int, float]]:
        def run(chunk: list[dict]) -> tuple[int, float]:
            results = decode(chunk)
            tokens = sum(r.tokens for r in results)
            counts[0] += tokens
            counts[1] += sum(r.forwards for r in results)
            return tokens, sum(r.seconds for r in results)
        return run

    ar(examples[:1]), bard(examples[:1])  # untimed warm-up, as in evaluate()
    out = {}
    for b in batch_sizes:
        bard_counts = [0, 0]  # tokens, forwards over every repetition
        timing = interleaved_timing({"ar": tokens_of(ar, [0, 0]), "bard": tokens_of(bard, bard_counts)},
                                    chunked(examples, b), repeats)
        out[f"batch_{b}"] = {"speedup": timing["ratio"]["bard"], "ar_tokens_per_s": timing["tokens_per_s"]["ar"],
                             "bard_tokens_per_s": timing["tokens_per_s"]["bard"],
                             "bard_tpf": bard_counts[0] / max(bard_counts[1], 1), "prompts": len(examples),
                             "repeats": repeats}
    return out


def load_ar(path: str | Path):
    """The AR Qwen3-VL checkpoint (fp32, eval) and its processor."""
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    model = Qwen3VLForConditionalGeneration.from_pretrained(str(path), dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(str(path))


def load_bard(path: str | Path):
    """A Bard-VL checkpoint (fp32, eval, SDPA)."""
    from nemo_automodel_bard.models.bard_vl import BardVLForConditionalGeneration

    return BardVLForConditionalGeneration.from_pretrained(str(path), dtype=torch.float32,
                                                          attn_implementation="sdpa").eval()


def run(args: argparse.Namespace) -> dict:
    """Evaluate ``args.ar`` and each ``args.bard`` (with the threshold sweep); write JSON + PNG."""
    examples = load_examples(Path(args.data) / f"{args.split}.jsonl", args.limit)
    results: list[Metrics] = []
    ar_model, processor = load_ar(args.ar)
    if args.ar:
        results.append(evaluate("AR", ar_decoder(ar_model, processor, args.max_new_tokens), examples,
                                {"kv_cache": True, "greedy": True}, batch_size=args.batch_size))
    for spec in args.bard:
        label, _, path = spec.partition("=")
        model = load_bard(path)
        block = args.block_size
        for threshold in args.thresholds:
            settings = bard_settings(block, threshold, args.revision_threshold)
            decode = bard_decoder(model, processor, args.max_new_tokens, **settings)
            results.append(evaluate(f"{label}@{threshold}", decode, examples, settings, batch_size=args.batch_size))
    out = {"split": args.split, "samples": len(examples), "results": [asdict(m) for m in results]}
    if args.out:
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "eval.json").write_text(json.dumps(out, indent=1))
        from nemo_automodel_bard.toy.plot import plot_tradeoff

        plot_tradeoff(out["results"], out_dir / "accuracy_vs_throughput.png", split=args.split)
    return out


def format_table(rows: list[dict]) -> str:
    """Markdown table of metric dicts."""
    head = "| model | exact match | token acc | TPF | forwards | tokens/s |\n|---|---|---|---|---|---|"
    lines = [f"| {r['name']} | {100 * r['exact_match']:.1f} | {100 * r['token_accuracy']:.1f} | {r['tpf']:.2f} | "
             f"{r['forwards']} | {r['tokens_per_s']:.1f} |" for r in rows]
    return "\n".join([head, *lines])


def _thresholds(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated numbers in [0, 1], got {text!r}") from None
    if not values or not all(0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"thresholds must lie in [0, 1], got {text!r}")
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bard eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="toy data folder (test.jsonl + images/)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--ar", required=True, help="AR Qwen3-VL checkpoint (also provides the processor)")
    parser.add_argument("--bard", action="append", default=[], help="LABEL=DIR of a Bard-VL checkpoint (repeatable)")
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--thresholds", type=_thresholds, default=list(DEFAULT_THRESHOLDS))
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--revision-threshold", type=float, default=0.0,
                        help="token revision of the Bard rows (generate's revision_threshold; 0 = off)")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16, help="samples decoded per generate call")
    parser.add_argument("--out", default=None, help="folder for eval.json and accuracy_vs_throughput.png")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: batch-1 decoding of a tiny model gains nothing from more, "
                             "and extra threads on a shared machine make timings noisy)")
    return parser


def _checkpoint_type(path: str, argument: str) -> str:
    """``model_type`` of a local checkpoint folder; ValueError naming ``argument`` if it is not one."""
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"{argument}: folder not found")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{argument}: not a checkpoint folder (no config.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{argument}: config.json is not valid JSON ({err})") from None
    return config.get("model_type") if isinstance(config, dict) else None


def check_args(args: argparse.Namespace) -> None:
    """Every check that needs no model: raises ValueError naming the argument."""
    for name in ("block_size", "max_new_tokens", "threads"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if not 0.0 <= args.revision_threshold < 1.0:
        raise ValueError(f"--revision-threshold must be in [0, 1) (0 = off), got {args.revision_threshold}")
    if args.limit is not None and args.limit <= 0:
        raise ValueError(f"--limit must be a positive integer, got {args.limit}")
    data = Path(args.data) / f"{args.split}.jsonl"
    if not data.is_file():
        raise ValueError(f"--data {args.data}: no {args.split}.jsonl there (folder not found or not toy data)")
    if _checkpoint_type(args.ar, f"--ar {args.ar}") != "qwen3_vl":
        raise ValueError(f"--ar {args.ar}: not an autoregressive Qwen3-VL checkpoint (model_type must be qwen3_vl)")
    labels = []
    for spec in args.bard:
        label, eq, path = spec.partition("=")
        if not eq or not label or not path:
            raise ValueError(f"--bard {spec!r}: expected LABEL=DIR (e.g. b32=runs/swd/hf)")
        if label in labels or label == "AR":
            raise ValueError(f"--bard {spec!r}: label {label!r} is used twice")
        labels.append(label)
        kind = _checkpoint_type(path, f"--bard {spec}")
        if kind != "bard_vl":
            raise ValueError(f"--bard {spec}: not a Bard-VL checkpoint (model_type {kind!r}); convert and train it first")
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} exists and is not a folder")


class OutFolderLocked(RuntimeError):
    """Another process holds the ``--out`` folder's lock."""


@contextlib.contextmanager
def out_lock(folder: str | Path | None):
    """Hold ``folder/.bard-eval.lock`` (an OS file lock: released when the process ends, even killed)."""
    if folder is None:
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".bard-eval.lock"
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise OutFolderLocked(
                f"--out {folder} is in use by another bard eval ({holder}); wait for it or choose another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        handle.flush()
        yield
    finally:
        handle.close()


def main(argv: list[str]) -> int:
    """``bard eval`` entry point."""
    args = _parser().parse_args(argv)
    try:
        check_args(args)
        with out_lock(args.out):
            torch.set_num_threads(args.threads)
            out = run(args)
    except (ValueError, OutFolderLocked) as err:
        print(f"bard eval: error: {err}", file=sys.stderr)
        return 2
    print(format_table(out["results"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

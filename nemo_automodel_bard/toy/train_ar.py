"""Stage 0 of the toy: train the tiny autoregressive Qwen3-VL from scratch on the toy task.

A plain PyTorch loop (one process, fp32), because AutoModel's VLM recipe costs more than the
demo budget allows on 2 shared CPU cores (see docs/toy.md). Two things make the from-scratch
model use the image within minutes (toy_feasibility.md): the vision merger's output is
rescaled at init to the scale of the text embeddings, and the vision tower gets a higher
learning rate.

``python -m nemo_automodel_bard.toy.train_ar --data DIR --out CKPT --steps 600``

``--curriculum default`` (or an explicit schedule, see :func:`parse_curriculum`) trains in
phases instead: mixed training on all five tasks stalls at ~0-7% exact match, while the
model learns to read digits within minutes on 1-3 cell rows and then transfers to longer
rows and more tasks (docs/toy.md). One model and one optimizer run through all phases.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nemo_automodel_bard.toy.processor import ar_config, build_processor
from nemo_automodel_bard.toy.task import CELL, MAX_CELLS, MIN_CELLS, TASKS, held_out_keys, sample_rows, write_split

__all__ = [
    "encode_example", "collate", "load_split", "build_model", "Phase", "DEFAULT_CURRICULUM",
    "parse_curriculum", "phase_records", "phase_examples", "train", "main",
]

# Cell range of the rows in a data folder made by toy/task.py (generate_splits' defaults).
DATA_CELLS = (MIN_CELLS, MAX_CELLS)
# Read 1-3 cells, then 4-8 cells, then add colours, then all tasks; colours alone again (they
# do not always click beside reading), then all tasks (docs/toy.md).
DEFAULT_CURRICULUM = ("read:1-3:800,read:4-8:400,read+colours:4-8:1300,all:4-8:2500,"
                      "colours:1-3:500,colours:4-8:500,all:4-8:1200")


def encode_example(processor: Any, record: dict, root: Path) -> dict[str, torch.Tensor]:
    """One jsonl record -> ``input_ids [L]``, ``labels [L]`` (answer + EOS only), pixels."""
    from PIL import Image

    user = record["messages"][0]["content"]
    image = Image.open(root / next(p["image"] for p in user if p["type"] == "image")).convert("RGB")
    question = next(p["text"] for p in user if p["type"] == "text")
    prompt_msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(prompt_msgs, tokenize=False, add_generation_prompt=True)
    text = prompt + record["answer"] + "<|im_end|>"
    enc = processor(text=[text], images=[image], return_tensors="pt")
    ids = enc["input_ids"][0]
    # the answer starts right after the last "<|im_start|> assistant" header
    header = processor.tokenizer.convert_tokens_to_ids("assistant")
    prompt_len = int((ids == header).nonzero()[-1]) + 1
    labels = ids.clone()
    labels[:prompt_len] = -100
    return {"input_ids": ids, "labels": labels, "pixel_values": enc["pixel_values"], "image_grid_thw": enc["image_grid_thw"]}


def collate(examples: list[dict[str, torch.Tensor]], pad_id: int, image_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of encoded examples into a training batch."""
    length = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    attn = torch.zeros_like(ids)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n], labels[i, :n], attn[i, :n] = e["input_ids"], e["labels"], 1
    return {
        "input_ids": ids,
        "labels": labels,
        "attention_mask": attn,
        "mm_token_type_ids": (ids == image_token_id).long(),
        "pixel_values": torch.cat([e["pixel_values"] for e in examples]),
        "image_grid_thw": torch.cat([e["image_grid_thw"] for e in examples]),
    }


def load_split(processor: Any, path: Path, limit: int | None = None) -> list[dict]:
    """Encode a jsonl split (records stay in file order)."""
    lines = path.read_text(encoding="utf-8").splitlines()[:limit]
    return [encode_example(processor, json.loads(line), path.parent) for line in lines if line.strip()]


@torch.no_grad()
def _match_vision_scale(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """Rescale the merger outputs to the text-embedding std; returns the factor used.

    At random init the merged vision features are ~100x larger than the embeddings, and the
    text side learns to ignore them (toy_feasibility.md).
    """
    visual = model.model.visual
    out = visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"])
    feats = out.pooler_output if hasattr(out, "pooler_output") else out[0]
    feats = torch.cat(feats) if isinstance(feats, (list, tuple)) else feats
    factor = float(model.model.language_model.embed_tokens.weight.std() / feats.std())
    mergers = [visual.merger, *visual.deepstack_merger_list]
    for merger in mergers:
        merger.linear_fc2.weight.mul_(factor)
        merger.linear_fc2.bias.mul_(factor)
    return factor


def build_model(seed: int, example_batch: dict[str, torch.Tensor]):
    """Random-init ``Qwen3VLForConditionalGeneration`` (fp32) with the vision scale matched."""
    from transformers import Qwen3VLForConditionalGeneration

    torch.manual_seed(seed)
    config = ar_config()
    config._attn_implementation = "sdpa"
    model = Qwen3VLForConditionalGeneration(config).float()
    _match_vision_scale(model, example_batch)
    return model


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class Phase:
    """One curriculum phase: ``steps`` optimizer steps on ``tasks`` with ``min_cells..max_cells`` cells."""

    tasks: tuple[str, ...]
    min_cells: int
    max_cells: int
    steps: int


def _parse_phase(text: str) -> Phase:
    """``TASKS:LO-HI:STEPS`` with ``TASKS`` = ``all`` or task names joined by ``+``."""
    try:
        tasks_text, cells_text, steps_text = text.strip().split(":")
        lo, hi = (int(x) for x in cells_text.split("-"))
        steps = int(steps_text)
    except ValueError as err:
        raise ValueError(f"curriculum phase {text!r} is not TASKS:LO-HI:STEPS") from err
    tasks = tuple(TASKS) if tasks_text == "all" else tuple(tasks_text.split("+"))
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not 1 <= lo <= hi or steps < 1:
        raise ValueError(f"bad curriculum phase {text!r} (tasks {sorted(TASKS)} or 'all', 1 <= LO <= HI, STEPS >= 1)")
    return Phase(tasks, lo, hi, steps)


def parse_curriculum(spec: str) -> list[Phase]:
    """``"default"`` or comma-separated phases, e.g. ``read:1-3:800,read+colours:4-8:1300,all:4-8:1500``."""
    spec = DEFAULT_CURRICULUM if spec == "default" else spec
    return [_parse_phase(part) for part in spec.split(",") if part.strip()]


def _cells(record: dict, root: Path) -> int:
    """Number of cells of a record's image (each cell is CELL px wide)."""
    from PIL import Image

    image = next(p["image"] for p in record["messages"][0]["content"] if p["type"] == "image")
    with Image.open(root / image) as img:
        return img.width // CELL


def phase_records(phase: Phase, data_dir: Path, work_dir: Path, *, data_seed: int = 0,
                  generated: int = 1000) -> tuple[list[dict], Path]:
    """The jsonl records of one phase and the folder their image paths are relative to.

    Inside the data folder's cell range these are its ``train.jsonl`` records of the phase's
    tasks and cell counts. Other cell counts (e.g. the 1-3 cell warm-up) are not in the data
    folder, so ``generated`` fresh rows are written under ``work_dir``; they exclude the
    standard test/val pools of ``data_seed`` so that no evaluation sample is trained on.
    """
    if DATA_CELLS[0] <= phase.min_cells and phase.max_cells <= DATA_CELLS[1]:
        path = data_dir / "train.jsonl"
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        keep = [r for r in records if r["task"] in phase.tasks
                and phase.min_cells <= _cells(r, data_dir) <= phase.max_cells]
        return keep, data_dir
    exclude = held_out_keys(data_seed) | held_out_keys(data_seed, phase.min_cells, phase.max_cells, phase.tasks)
    seed = f"{data_seed}-curriculum-{'+'.join(phase.tasks)}-{phase.min_cells}-{phase.max_cells}"
    samples = sample_rows(seed, generated, phase.min_cells, phase.max_cells, phase.tasks, exclude=exclude)
    path = write_split(work_dir, "train", samples)
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()], work_dir


def phase_examples(processor: Any, phase: Phase, data_dir: Path, work_dir: Path, *,
                   data_seed: int = 0, generated: int = 1000) -> list[dict]:
    """Encoded training examples of one phase (the records of :func:`phase_records`)."""
    records, root = phase_records(phase, data_dir, work_dir, data_seed=data_seed, generated=generated)
    return [encode_example(processor, r, root) for r in records]


def _train_steps(model: torch.nn.Module, optim: torch.optim.Optimizer, examples: list[dict], steps: int, *,
                 batch_size: int, gen: torch.Generator, pad_id: int, image_id: int, log_every: int,
                 deadline: float | None, tag: str = "") -> list[float]:
    """``steps`` AdamW steps on random batches of ``examples`` with a warmup + cosine LR.

    Each call restarts the schedule from the optimizer groups' ``initial_lr``; stops early
    once ``time.time()`` passes ``deadline``. Returns the loss per step.
    """
    history: list[float] = []
    t0 = time.time()
    for step in range(steps):
        for group in optim.param_groups:
            group["lr"] = group["initial_lr"] * _lr_factor(step, steps, warmup=max(1, steps // 20))
        idx = torch.randint(len(examples), (batch_size,), generator=gen).tolist()
        loss = model(**collate([examples[i] for i in idx], pad_id, image_id)).loss
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        history.append(float(loss.detach()))
        if step % log_every == 0 or step == steps - 1:
            elapsed = time.time() - t0
            print(f"[stage0 AR]{tag} step {step + 1}/{steps} loss {loss.item():.4f} ({elapsed:.0f}s)", flush=True)
        if deadline is not None and time.time() > deadline:
            print(f"[stage0 AR]{tag} time budget reached at step {step + 1}", flush=True)
            break
    return history


def train(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    steps: int = 600,
    batch_size: int = 32,
    lr: float = 2e-3,
    vision_lr_multiplier: float = 2.0,
    seed: int = 0,
    max_train: int | None = None,
    log_every: int = 25,
    time_budget_s: float | None = None,
    init: str | Path | None = None,
    curriculum: list[Phase] | None = None,
    data_seed: int = 0,
) -> dict:
    """Train, save ``out_dir`` (HF safetensors + processor) and return a log dict.

    ``init``: continue from this AR checkpoint's weights (fresh optimizer and schedule)
    instead of a random init. ``curriculum``: train these phases in order (``steps`` and
    ``max_train`` are then unused; ``time_budget_s`` covers all phases); ``data_seed`` is the
    seed the data folder was generated with (see :func:`phase_examples`).
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    processor = build_processor()
    pad_id = processor.tokenizer.pad_token_id
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    t0 = time.time()
    if curriculum:
        # generated rows are only needed until they are encoded (tensors hold the pixels)
        with tempfile.TemporaryDirectory() as tmp:
            phase_data = [phase_examples(processor, ph, data_dir, Path(tmp) / f"phase{i}", data_seed=data_seed)
                          for i, ph in enumerate(curriculum)]
        empty = [ph for ph, data in zip(curriculum, phase_data) if not data]
        if empty:
            raise ValueError(f"no training examples for curriculum phase(s) {empty} in {data_dir}")
        examples = phase_data[0]
    else:
        phase_data, examples = [], load_split(processor, data_dir / "train.jsonl", max_train)
    encode_s = time.time() - t0
    gen = torch.Generator().manual_seed(seed)
    if init is not None:
        from transformers import Qwen3VLForConditionalGeneration

        model = Qwen3VLForConditionalGeneration.from_pretrained(str(init), dtype=torch.float32)
    else:
        model = build_model(seed, collate(examples[:batch_size], pad_id, image_id))
    vision = [p for n, p in model.named_parameters() if "visual" in n]
    other = [p for n, p in model.named_parameters() if "visual" not in n]
    optim = torch.optim.AdamW(
        [{"params": other, "lr": lr}, {"params": vision, "lr": lr * vision_lr_multiplier}],
        betas=(0.9, 0.95), weight_decay=0.0,
    )
    for group in optim.param_groups:
        group["initial_lr"] = group["lr"]
    model.train()
    t_train = time.time()
    deadline = None if time_budget_s is None else t_train + time_budget_s
    common = dict(batch_size=batch_size, gen=gen, pad_id=pad_id, image_id=image_id, log_every=log_every,
                  deadline=deadline)
    phases_log = []
    if curriculum:
        history: list[float] = []
        for i, (phase, data) in enumerate(zip(curriculum, phase_data)):
            if deadline is not None and time.time() > deadline:
                break
            t_phase = time.time()
            cells = f"{phase.min_cells}-{phase.max_cells} cells"
            tag = f" phase {i + 1}/{len(curriculum)} ({'+'.join(phase.tasks)}, {cells})"
            losses = _train_steps(model, optim, data, phase.steps, tag=tag, **common)
            history += losses
            phases_log.append({"tasks": list(phase.tasks), "cells": [phase.min_cells, phase.max_cells],
                               "steps": len(losses), "examples": len(data), "final_loss": losses[-1],
                               "train_s": time.time() - t_phase})
    else:
        history = _train_steps(model, optim, examples, steps, **common)
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(str(out_dir))
    log = {"steps": len(history), "final_loss": history[-1], "encode_s": encode_s, "train_s": time.time() - t_train,
           "loss_history": history[:: max(1, len(history) // 100)]}
    if curriculum:
        log["phases"] = phases_log
    (out_dir / "train_log.json").write_text(json.dumps(log, indent=1))
    return log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder with train.jsonl (toy/task.py)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--vision-lr-multiplier", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-budget-s", type=float, default=None)
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--init", default=None, help="continue from this AR checkpoint instead of a random init")
    parser.add_argument("--curriculum", default=None,
                        help=f"'default' ({DEFAULT_CURRICULUM}) or phases TASKS:LO-HI:STEPS,...; replaces --steps")
    parser.add_argument("--data-seed", type=int, default=0, help="seed the --data folder was generated with")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    log = train(args.data, args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                vision_lr_multiplier=args.vision_lr_multiplier, seed=args.seed, time_budget_s=args.time_budget_s,
                log_every=args.log_every, init=args.init,
                curriculum=parse_curriculum(args.curriculum) if args.curriculum else None, data_seed=args.data_seed)
    # record how the checkpoint was made next to it (train() does not see the command line)
    log_path = Path(args.out) / "train_log.json"
    args_text = " ".join(sys.argv[1:] if argv is None else argv)
    log = {"command": f"python -m nemo_automodel_bard.toy.train_ar {args_text}", **log}
    log_path.write_text(json.dumps(log, indent=1))
    print(json.dumps({k: v for k, v in log.items() if k != "loss_history"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

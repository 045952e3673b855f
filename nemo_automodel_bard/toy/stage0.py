"""Stage 0 of the toy: the AR Qwen3-VL trained by AutoModel's VLM fine-tune recipe.

``FinetuneRecipeForVLM``, driven by the packaged ``recipes/toy_ar.yaml``:

* random init: :func:`~nemo_automodel_bard.toy.ar_model.build_model` (vision-merger scale
  matched on the first batch of phase 1), saved with the processor to ``<work>/init``; the
  processor is the toy's word-level one, or ``--processor DIR`` (one saved by
  :func:`~nemo_automodel_bard.toy.processor.save_processor`, e.g. over a dataset's words);
* one recipe run per curriculum phase (``toy/curriculum.py``; ``step_scheduler.max_steps`` =
  the phase's steps, its own warmup + cosine schedule and a fresh optimizer), the phase's rows
  written to ``<work>/phase_<i>/train.jsonl``; phase ``i > 0`` starts from phase ``i-1``'s
  consolidated HF export, chained like PBM stages (``recipes/pbm.py``:
  ``<work>/ckpt/phase_<i>/hf``; a finished phase is skipped on a re-run);
* data: the project's ``BardChatDataset`` (tokenised once, :func:`build_cached_dataset`) and
  :func:`ar_collate` (AutoModel's pre-shifted next-token labels: the answer and ``<|im_end|>``).

The last export is copied to ``--out`` with the processor and a ``train_log.json``.

``python -m nemo_automodel_bard.toy.stage0 --data DIR --out CKPT --curriculum default``
(``--curriculum train:STEPS`` for any dataset in the ``messages`` schema).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from nemo_automodel_bard.toy.ar_model import build_model, collate
from nemo_automodel_bard.toy.curriculum import (
    DEFAULT_CURRICULUM,
    Phase,
    parse_curriculum,
    phase_records,
)

__all__ = ["YAML_NAME", "ar_collate", "build_cached_dataset", "load_processor", "prepare_phases", "save_init",
           "base_config",
           "phase_config", "run_phase", "train", "main"]

YAML_NAME = "toy_ar.yaml"
# Mergers too: every ``visual`` parameter is in the vision LR group, while
# block_diffusion's VISION_TOWER_PATTERN covers only patch/pos embeddings and blocks.
MERGER_PATTERN = r"(^|\.)model\.visual\.(merger|deepstack_merger_list)\."
_TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")


def ar_collate(examples: list[dict[str, Any]], processor: Any) -> dict[str, torch.Tensor]:
    """``BardChatDataset`` samples -> a next-token batch in AutoModel's VLM convention.

    The recipe's loss (``MaskedCrossEntropy(logits, labels)``) does not shift: like AutoModel's
    own VLM collates, ``labels[t]`` is the target of position ``t`` (token ``t+1``) and the token
    tensors drop their last column. Labels are -100 except the answer and its ``<|im_end|>``.
    """
    tokenizer = processor.tokenizer
    image_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    encoded = []
    for ex in examples:
        prompt, response = ex["prompt_ids"], ex["response_ids"]
        encoded.append({
            "input_ids": torch.cat([prompt, response]),
            "labels": torch.cat([torch.full_like(prompt, -100), response]),
            "pixel_values": ex["pixel_values"],
            "image_grid_thw": ex["image_grid_thw"],
        })
    batch = collate(encoded, tokenizer.pad_token_id, image_id)  # right padding
    shifted = {k: v[:, :-1] for k, v in batch.items() if k in _TOKEN_KEYS}
    shifted["labels"] = batch["labels"][:, 1:].contiguous()
    return {**batch, **shifted}


def build_cached_dataset(path_or_dataset: str | list[str], **kwargs: Any) -> Any:
    """``build_chat_dataset`` whose samples are tokenised once (dataset ``_target_`` of toy_ar.yaml).

    The toy's phases revisit the same few hundred rows for thousands of steps; re-running the
    processor on 16 images per step costs ~0.08 s (~50% of a CPU step). An index always maps to the same sample, so memoising is exact.
    """
    from nemo_automodel_bard.data.dataset import BardChatDataset

    class _Cached(BardChatDataset):
        def __getitem__(self, index: int) -> dict[str, Any]:
            cache = self.__dict__.setdefault("_samples", {})
            if index not in cache:
                cache[index] = super().__getitem__(index)
            return cache[index]

    return _Cached(path_or_dataset, **kwargs)


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def prepare_phases(curriculum: list[Phase], data_dir: Path, work_dir: Path, *, data_seed: int,
                   batch_size: int) -> list[tuple[Path, Path, int]]:
    """Write each phase's records (``curriculum.phase_records``); returns ``(jsonl, image root, rows)``.

    All phases are checked before any training: an empty phase, or one with fewer rows than a
    batch (the loader drops incomplete batches), raises ValueError.
    """
    if not curriculum:
        raise ValueError("empty curriculum: give at least one phase TASKS:LO-HI:STEPS")
    out, bad = [], []
    for i, phase in enumerate(curriculum):
        records, root = phase_records(phase, data_dir, work_dir / f"phase_{i}" / "generated", data_seed=data_seed)
        if len(records) < batch_size:
            bad.append(f"phase {i + 1} {phase}: {len(records)} rows")
        out.append((_write_jsonl(work_dir / f"phase_{i}" / "train.jsonl", records), root, len(records)))
    if bad:
        raise ValueError(f"curriculum phases with fewer training rows than the batch size {batch_size} in "
                         f"{data_dir}: {'; '.join(bad)}")
    return out


def load_processor(processor_dir: str | Path | None = None) -> Any:
    """The toy's word-level processor, or one saved by ``toy.processor.save_processor`` (checked)."""
    from nemo_automodel_bard.toy.processor import SPECIALS, build_processor

    if processor_dir is None:
        return build_processor()
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(processor_dir))
    ids = processor.tokenizer.convert_tokens_to_ids(SPECIALS)
    if ids != list(range(len(SPECIALS))):
        raise ValueError(f"{processor_dir}: not a processor of nemo_automodel_bard.toy.processor (special tokens "
                         f"{SPECIALS} must have ids 0..{len(SPECIALS) - 1}, found {ids})")
    return processor


def save_init(init_dir: Path, jsonl: Path, root: Path, *, seed: int, batch_size: int,
              processor: Any = None) -> Path:
    """The random init (vision scale matched on the first batch) + processor, saved."""
    from nemo_automodel_bard.toy.ar_model import encode_example
    from nemo_automodel_bard.toy.processor import ar_config

    if (init_dir / "config.json").is_file():
        return init_dir  # re-run: keep the init the finished phases started from
    processor = processor if processor is not None else load_processor()
    lines = jsonl.read_text(encoding="utf-8").splitlines()[:batch_size]
    examples = [encode_example(processor, json.loads(line), root) for line in lines]
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    config = ar_config(vocab_size=len(processor.tokenizer))
    model = build_model(seed, collate(examples, processor.tokenizer.pad_token_id, image_id), config)
    model.save_pretrained(init_dir, safe_serialization=True)
    processor.save_pretrained(str(init_dir))
    return init_dir


def base_config(init_dir: Path, ckpt_dir: Path, *, batch_size: int, lr: float, vision_lr_multiplier: float,
                seed: int, yaml_path: Path | None = None) -> dict[str, Any]:
    """The packaged YAML with the run's paths and hyper-parameters filled in."""
    from nemo_automodel_bard.recipes.block_diffusion import _add_vision_lr_group
    from nemo_automodel_bard.recipes.launch import _default_backend, packaged_yaml

    config = yaml.safe_load(Path(yaml_path or packaged_yaml(YAML_NAME)).read_text())
    _default_backend(config)
    config["seed"] = seed
    config["model"]["pretrained_model_name_or_path"] = str(init_dir)
    config["dataset"]["processor"] = str(init_dir)
    config["optimizer"]["lr"] = lr
    config["step_scheduler"].update(global_batch_size=batch_size, local_batch_size=batch_size)
    config["checkpoint"]["checkpoint_dir"] = str(ckpt_dir)
    if vision_lr_multiplier != 1.0:
        _add_vision_lr_group(config, vision_lr_multiplier)
        config["optimizer"]["param_group_overrides"].append({"pattern": MERGER_PATTERN,
                                                             "lr_mult": float(vision_lr_multiplier)})
    return config


def phase_config(base: dict[str, Any], index: int, phase: Phase, jsonl: Path, root: Path,
                 previous: Path | None) -> dict[str, Any]:
    """Phase ``index``'s recipe config: PBM's ``stage_config`` chaining, the phase's data and schedule."""
    from nemo_automodel_bard.recipes.config_check import PBMStage
    from nemo_automodel_bard.recipes.pbm import stage_config

    lr = float(base["optimizer"]["lr"])
    # (step+1)/warmup, then cosine to 10%; AutoModel needs warmup < steps
    warmup = min(max(1, phase.steps // 20), phase.steps - 1)
    overrides = {
        "step_scheduler.max_steps": phase.steps,
        "dataset.path_or_dataset": str(jsonl),
        "dataset.root_dir": str(root),
        "lr_scheduler.lr_warmup_steps": warmup,
        "lr_scheduler.init_lr": lr / max(1, warmup),
        "lr_scheduler.min_lr": 0.1 * lr,
    }
    stage = PBMStage(block_size=1, name=f"phase_{index}", overrides=overrides)
    config = stage_config(base, index, stage, previous)
    config.pop("bard", None)  # stage_config sets bard.block_size; the stock recipe has no bard section
    return config


def run_phase(config: dict[str, Any], directory: Path) -> Any:
    """One in-process recipe run (CPU shims applied by ``run_in_process``); returns the recipe."""
    from nemo_automodel_bard.recipes.launch import run_in_process

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return run_in_process(path, [])


def _phase_metrics(directory: Path, started: float) -> dict[str, Any]:
    """Per-step losses of the recipe's ``training.jsonl``; mean s/step and startup from its timestamps."""
    from datetime import datetime

    path = directory / "training.jsonl"
    rows = [json.loads(line) for line in (path.read_text().splitlines() if path.is_file() else []) if line.strip()]
    starts = [i for i, r in enumerate(rows) if r["step"] == 0]
    rows = rows[starts[-1]:] if starts else rows  # the log appends: keep the last run from scratch
    stamps = [datetime.fromisoformat(r["timestamp"]).timestamp() for r in rows]
    step_s = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else None
    # before the first step's log line: imports already done, recipe setup + the first step
    startup_s = stamps[0] - started - (step_s or 0.0) if stamps and stamps[0] > started else None
    return {"losses": [float(r["loss"]) for r in rows], "step_s": step_s, "startup_s": startup_s}


def train(data_dir: str | Path, out_dir: str | Path, work_dir: str | Path, *, curriculum: list[Phase],
          batch_size: int = 16, lr: float = 3e-3, vision_lr_multiplier: float = 3.0, seed: int = 0,
          data_seed: int = 0, processor_dir: str | Path | None = None) -> dict:
    """Run every phase through the recipe, copy the last export to ``out_dir``; returns the log."""
    from nemo_automodel_bard.recipes.pbm import _export

    data_dir, out_dir, work_dir = Path(data_dir), Path(out_dir), Path(work_dir)
    t0 = time.time()
    processor = load_processor(processor_dir)
    phase_data = prepare_phases(curriculum, data_dir, work_dir, data_seed=data_seed, batch_size=batch_size)
    init = save_init(work_dir / "init", *phase_data[0][:2], seed=seed, batch_size=batch_size, processor=processor)
    base = base_config(init, work_dir / "ckpt", batch_size=batch_size, lr=lr,
                       vision_lr_multiplier=vision_lr_multiplier, seed=seed)
    prepare_s, previous, phases_log, history = time.time() - t0, None, [], []
    for i, (phase, (jsonl, root, rows)) in enumerate(zip(curriculum, phase_data)):
        directory = work_dir / "ckpt" / f"phase_{i}"
        export = directory / "hf"
        t_phase = time.time()
        if not (export / "config.json").is_file():  # a finished phase is not retrained
            print(f"[stage0 recipe] phase {i + 1}/{len(curriculum)} {phase} ({rows} rows) -> {directory}", flush=True)
            run_phase(phase_config(base, i, phase, jsonl, root, previous), directory)
            _export(directory)
        metrics = _phase_metrics(directory, t_phase)
        losses = metrics.pop("losses")
        history += losses
        phases_log.append({"phase": str(phase), "tasks": list(phase.tasks), "cells": [phase.min_cells, phase.max_cells],
                           "steps": len(losses), "examples": rows, "final_loss": losses[-1] if losses else None,
                           "train_s": time.time() - t_phase, **metrics, "export": str(export)})
        previous = export
    shutil.copytree(previous.resolve(), out_dir, dirs_exist_ok=True)
    processor.save_pretrained(str(out_dir))  # the processor files evaluate.load_ar reads
    log = {"steps": len(history), "final_loss": history[-1] if history else None, "prepare_s": prepare_s,
           "train_s": time.time() - t0 - prepare_s, "phases": phases_log,
           "loss_history": history[:: max(1, len(history) // 100)]}
    (out_dir / "train_log.json").write_text(json.dumps(log, indent=1))
    return log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder with train.jsonl (toy/task.py or any messages-schema data)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--curriculum", default="default",
                        help=f"'default' ({DEFAULT_CURRICULUM}), toy phases TASKS:LO-HI:STEPS,... "
                             "or train:STEPS (every train.jsonl row)")
    parser.add_argument("--processor", default=None,
                        help="a processor saved by toy.processor.save_processor (default: the toy task's words)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--vision-lr-multiplier", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-seed", type=int, default=0, help="seed the --data folder was generated with")
    parser.add_argument("--work-dir", default=None, help="phase data, init and recipe checkpoints (default OUT.work)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    work = Path(args.work_dir) if args.work_dir else Path(f"{str(args.out).rstrip('/')}.work")
    log = train(args.data, args.out, work, curriculum=parse_curriculum(args.curriculum), batch_size=args.batch_size,
                lr=args.lr, vision_lr_multiplier=args.vision_lr_multiplier, seed=args.seed, data_seed=args.data_seed,
                processor_dir=args.processor)
    args_text = " ".join(sys.argv[1:] if argv is None else argv)
    log = {"command": f"python -m nemo_automodel_bard.toy.stage0 {args_text}", **log}
    (Path(args.out) / "train_log.json").write_text(json.dumps(log, indent=1))
    print(json.dumps({k: v for k, v in log.items() if k != "loss_history"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

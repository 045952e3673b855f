"""Stage 0 of the toy: train the tiny autoregressive Qwen3-VL from scratch on the toy task.

A plain PyTorch loop (one process, fp32), because AutoModel's VLM recipe costs more than the
demo budget allows on 2 shared CPU cores (see docs/toy.md). Two things make the from-scratch
model use the image within minutes (toy_feasibility.md): the vision merger's output is
rescaled at init to the scale of the text embeddings, and the vision tower gets a higher
learning rate.

``python -m nemo_automodel_bard.toy.train_ar --data DIR --out CKPT --steps 600``
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from nemo_automodel_bard.toy.processor import ar_config, build_processor

__all__ = ["encode_example", "collate", "load_split", "build_model", "train", "main"]


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
) -> dict:
    """Train, save ``out_dir`` (HF safetensors + processor) and return a log dict.

    ``init``: continue from this AR checkpoint's weights (fresh optimizer and schedule)
    instead of a random init.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    processor = build_processor()
    pad_id = processor.tokenizer.pad_token_id
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    t0 = time.time()
    examples = load_split(processor, data_dir / "train.jsonl", max_train)
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
    base = [g["lr"] for g in optim.param_groups]
    model.train()
    history, t_train, step = [], time.time(), 0
    for step in range(steps):
        for group, lr0 in zip(optim.param_groups, base):
            group["lr"] = lr0 * _lr_factor(step, steps, warmup=max(1, steps // 20))
        idx = torch.randint(len(examples), (batch_size,), generator=gen).tolist()
        loss = model(**collate([examples[i] for i in idx], pad_id, image_id)).loss
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        history.append(float(loss.detach()))
        if step % log_every == 0 or step == steps - 1:
            print(f"[stage0 AR] step {step + 1}/{steps} loss {loss.item():.4f} ({time.time() - t_train:.0f}s)", flush=True)
        if time_budget_s is not None and time.time() - t_train > time_budget_s:
            print(f"[stage0 AR] time budget {time_budget_s:.0f}s reached at step {step + 1}", flush=True)
            break
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(str(out_dir))
    log = {"steps": step + 1, "final_loss": history[-1], "encode_s": encode_s, "train_s": time.time() - t_train,
           "loss_history": history[:: max(1, len(history) // 100)]}
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
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    log = train(args.data, args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                vision_lr_multiplier=args.vision_lr_multiplier, seed=args.seed, time_budget_s=args.time_budget_s,
                log_every=args.log_every, init=args.init)
    print(json.dumps({k: v for k, v in log.items() if k != "loss_history"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

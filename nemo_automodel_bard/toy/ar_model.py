"""The toy's tiny autoregressive Qwen3-VL: random init and the reference encoding of a record.

Two things make a from-scratch model use the image within minutes (toy_feasibility.md): the
vision merger's output is rescaled at init to the scale of the text embeddings
(:func:`build_model`), and the vision tower gets a higher learning rate (``toy/stage0.py``).
:func:`encode_example` + :func:`collate` are the plain HF encoding (prompt and answer in one
string, labels on the answer and its ``<|im_end|>``): the stage-0 recipe's collate is tested
against them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = ["encode_example", "collate", "build_model"]


def encode_example(processor: Any, record: dict, root: Path) -> dict[str, torch.Tensor]:
    """One jsonl record -> ``input_ids [L]``, ``labels [L]`` (answer + EOS only), pixels."""
    from PIL import Image

    user = record["messages"][0]["content"]
    image = Image.open(Path(root) / next(p["image"] for p in user if p["type"] == "image")).convert("RGB")
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
    return {"input_ids": ids, "labels": labels, "pixel_values": enc["pixel_values"],
            "image_grid_thw": enc["image_grid_thw"]}


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
    for merger in (visual.merger, *visual.deepstack_merger_list):
        merger.linear_fc2.weight.mul_(factor)
        merger.linear_fc2.bias.mul_(factor)
    return factor


def build_model(seed: int, example_batch: dict[str, torch.Tensor], config: Any = None):
    """Random-init ``Qwen3VLForConditionalGeneration`` (fp32, default ``ar_config()``), vision scale matched."""
    from transformers import Qwen3VLForConditionalGeneration

    from nemo_automodel_bard.toy.processor import ar_config

    torch.manual_seed(seed)
    config = config if config is not None else ar_config()
    config._attn_implementation = "sdpa"
    model = Qwen3VLForConditionalGeneration(config).float()
    _match_vision_scale(model, example_batch)
    return model

"""Training-step cost of the packed shared-prompt layout vs a duplicated-prompt baseline.

Same samples, same loss, one run. The two layouts:

* ``shared`` (ours): ``[prompt | clean | noisy]`` per sample, the prompt and its vision tokens
  encoded once and attended by both copies;
* ``naive``: clean and noisy fed as two sequences that each carry the prompt,
  ``[prompt | clean] + [prompt' | noisy]`` (the vanilla layout: vision encoded twice); the
  noisy sequence attends its own prompt copy and the clean blocks before its own. Its
  mask is the shared layout's mask re-indexed (no new rules), so the noisy logits are
  identical, which the script checks.

Reports tokens/s (real prompt + response tokens of the samples per second of
forward+backward) and peak memory: ``torch.cuda.max_memory_allocated`` on GPU; on CPU the
peak of autograd-saved activations plus the attention mask (a deterministic proxy, CPU has
no allocator statistics). ``--quick`` keeps it to seconds on a laptop CPU.

    python benchmarks/train_layout.py --quick
    python benchmarks/train_layout.py --samples 32 --vision 256 --device cuda
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from nemo_automodel_bard.diffusion.layout import apply_noise, collate_layout, layout_attention_mask, layout_position_ids
from nemo_automodel_bard.diffusion.loss import weighted_cross_entropy
from nemo_automodel_bard.diffusion.masks import NOISY, PREFIX
from nemo_automodel_bard.testing import TINY_IDS, tiny_config

MASK_ID, PAD_ID = TINY_IDS["mask"], TINY_IDS["eos"]


def make_samples(n: int, vision_tokens: int, text: int, response: int, seed: int = 0) -> list[dict]:
    """Synthetic tokenized samples: one image of ``vision_tokens`` merged tokens + text prompt."""
    gen = torch.Generator().manual_seed(seed)
    side = int(vision_tokens**0.5)
    samples = []
    for _ in range(n):
        grid = torch.tensor([[1, 2 * side, 2 * side]])  # merge 2 -> side*side tokens
        prompt = torch.cat([
            torch.tensor([TINY_IDS["im_start"], 20, TINY_IDS["vision_start"]]),
            torch.full((side * side,), TINY_IDS["image"]),
            torch.tensor([TINY_IDS["vision_end"]]),
            torch.randint(20, 100, (text,), generator=gen),
        ])
        samples.append({
            "prompt_ids": prompt,
            "response_ids": torch.randint(20, 100, (response,), generator=gen),
            "mm_token_type_ids": (prompt == TINY_IDS["image"]).long(),
            "pixel_values": torch.randn(int(grid.prod()), 3 * 2 * 4 * 4, generator=gen),
            "image_grid_thw": grid,
        })
    return samples


def shared_inputs(model, batch: dict, block_size: int) -> dict:
    return {
        "input_ids": batch["input_ids"],
        "position_ids": layout_position_ids(batch, model.rope_positions),
        "attention_mask": layout_attention_mask(batch, block_size),
        "pixel_values": batch["pixel_values"],
        "image_grid_thw": batch["image_grid_thw"],
    }


def naive_inputs(model, batch: dict, block_size: int) -> tuple[dict, torch.Tensor]:
    """``[P | C | P' | N]`` rows gathered from the shared layout (one sample per row)."""
    shared = shared_inputs(model, batch, block_size)
    rows, index, copy = [], [], []
    for row, start, p, r in batch["samples"].tolist():
        prompt = torch.arange(start, start + p)
        idx = torch.cat([prompt, torch.arange(start + p, start + p + r), prompt, torch.arange(start + p + r, start + p + 2 * r)])
        index.append(idx)
        copy.append(torch.cat([torch.zeros(p + r), torch.ones(p + r)]).bool())
        rows.append(row)
    width = max(len(i) for i in index)
    B = len(index)
    gather = torch.zeros(B, width, dtype=torch.long)
    valid = torch.zeros(B, width, dtype=torch.bool)
    copies = torch.zeros(B, width, dtype=torch.bool)
    for b, (idx, cp) in enumerate(zip(index, copy)):
        gather[b, : len(idx)], valid[b, : len(idx)], copies[b, : len(idx)] = idx, True, cp
    src = torch.tensor(rows)[:, None]
    segment = torch.where(valid, batch["segment"][src, gather], torch.full_like(gather, -1))
    allowed = shared["attention_mask"][src[:, :, None], 0, gather[:, :, None], gather[:, None, :]] == 0
    # a prompt key is visible only to its own copy (P, C see P; P', N see P')
    same_copy = copies[:, :, None] == copies[:, None, :]
    allowed &= ~((segment[:, None, :] == PREFIX) & ~same_copy)
    allowed &= valid[:, :, None] & valid[:, None, :]
    allowed |= torch.eye(width, dtype=torch.bool) & ~valid[:, :, None]
    mask = torch.zeros(allowed.shape).masked_fill_(~allowed, torch.finfo(torch.float32).min)[:, None]
    input_ids = torch.where(valid, batch["input_ids"][src, gather], PAD_ID)
    positions = torch.where(valid, shared["position_ids"][:, src, gather], 0)
    # every prompt copy carries its image: the vision tower runs twice
    per_sample = [int(g.prod()) for g in batch["image_grid_thw"]]
    chunks = torch.split(batch["pixel_values"], per_sample)
    pixel_values = torch.cat([c for chunk in chunks for c in (chunk, chunk)])
    grids = batch["image_grid_thw"].repeat_interleave(2, dim=0)
    noisy_map = torch.where(valid & (segment == NOISY), gather, -1)
    return {"input_ids": input_ids, "position_ids": positions, "attention_mask": mask,
            "pixel_values": pixel_values, "image_grid_thw": grids}, noisy_map


class SavedBytes:
    """Peak bytes held by autograd's saved tensors (CPU memory proxy)."""

    def __init__(self) -> None:
        self.current = self.peak = 0

    def pack(self, tensor):
        self.current += tensor.numel() * tensor.element_size()
        self.peak = max(self.peak, self.current)
        return tensor

    def unpack(self, tensor):
        return tensor


def make_step(model, batch, inputs, keep, device):
    """A closure running one forward+backward; returns the CPU memory proxy in bytes."""
    inputs = {k: v.to(device) for k, v in inputs.items()}
    labels, weights = batch["labels"].to(device), batch["loss_weight"].to(device)
    keep_logits, keep_labels = keep[0].to(device), keep[1].to(device)
    mask_bytes = inputs["attention_mask"].numel() * inputs["attention_mask"].element_size()

    def step() -> int:
        saved = SavedBytes()
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
            logits = model(**inputs, logits_to_keep=keep_logits).logits
            loss = weighted_cross_entropy(logits, labels[keep_labels], weights[keep_labels], batch["num_samples"])
        loss.backward()
        model.zero_grad(set_to_none=True)
        return saved.peak + mask_bytes

    return step


def measure(steps: dict, rounds: int, device) -> dict:
    """Interleaved timing (robust to a shared, noisy machine): min seconds and peak memory per variant."""
    best = {name: float("inf") for name in steps}
    memory = {}
    for step in steps.values():
        step()  # warm-up
    for name, step in steps.items():
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        proxy = step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        memory[name] = torch.cuda.max_memory_allocated() if device.type == "cuda" else proxy
    for _ in range(rounds):
        for name, step in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: (best[name], memory[name]) for name in steps}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a few seconds on CPU")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--vision", type=int, default=144, help="merged vision tokens per image")
    parser.add_argument("--text", type=int, default=48, help="text tokens in the prompt")
    parser.add_argument("--response", type=int, default=64)
    parser.add_argument("--block-size", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="timed rounds (min is reported)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.vision, args.text, args.response, args.hidden, args.layers, args.steps = 4, 64, 32, 32, 128, 2, 3
    device = torch.device(args.device)
    torch.manual_seed(0)

    from nemo_automodel_bard.models.bard_vl import BardVLForConditionalGeneration

    config = tiny_config(text={"hidden_size": args.hidden, "intermediate_size": 4 * args.hidden,
                               "num_hidden_layers": args.layers, "num_attention_heads": args.hidden // 32,
                               "num_key_value_heads": max(1, args.hidden // 64), "head_dim": 32},
                         vision={"out_hidden_size": args.hidden, "num_position_embeddings": 1024})
    config._attn_implementation = "sdpa"
    model = BardVLForConditionalGeneration(config).to(device).train()

    samples = make_samples(args.samples, args.vision, args.text, args.response)
    batch = collate_layout(samples, block_size=args.block_size, pad_token_id=PAD_ID)
    batch = apply_noise(batch, block_size=args.block_size, mask_token_id=MASK_ID, generator=torch.Generator().manual_seed(0))
    loss_mask = batch["loss_mask"]

    shared = shared_inputs(model, batch, args.block_size)
    naive, noisy_map = naive_inputs(model, batch, args.block_size)
    # the naive row's loss positions, in the same order as the shared layout's
    naive_keep = torch.zeros_like(noisy_map, dtype=torch.bool)
    order = []
    for b in range(noisy_map.shape[0]):
        for j in range(noisy_map.shape[1]):
            src = int(noisy_map[b, j])
            if src >= 0 and bool(loss_mask[b, src]):
                naive_keep[b, j] = True
                order.append((b, src))
    assert order == [tuple(x) for x in loss_mask.nonzero().tolist()]

    with torch.no_grad():  # same samples, same loss: the noisy logits must agree
        model.eval()
        a = model(**{k: v.to(device) for k, v in shared.items()}, logits_to_keep=loss_mask.to(device)).logits
        b = model(**{k: v.to(device) for k, v in naive.items()}, logits_to_keep=naive_keep.to(device)).logits
        model.train()
        assert torch.allclose(a, b, atol=1e-3), float((a - b).abs().max())

    tokens = sum(int(s["prompt_ids"].numel() + s["response_ids"].numel()) for s in samples)
    steps = {
        "shared": make_step(model, batch, shared, (loss_mask, loss_mask), device),
        "naive": make_step(model, batch, naive, (naive_keep, loss_mask), device),
    }
    measured = measure(steps, args.steps, device)
    results = {}
    for name, inputs in (("shared", shared), ("naive", naive)):
        seconds, memory = measured[name]
        results[name] = {"seq_len": int(inputs["input_ids"].shape[1]), "tokens_per_s": tokens / seconds,
                         "step_s": seconds, "peak_memory_mb": memory / 2**20}
    results["speedup"] = results["shared"]["tokens_per_s"] / results["naive"]["tokens_per_s"]
    results["memory_ratio"] = results["shared"]["peak_memory_mb"] / results["naive"]["peak_memory_mb"]
    results["setup"] = {k: v for k, v in vars(args).items()} | {"device": str(device), "tokens": tokens,
                                                                "memory": "cuda max_memory_allocated" if device.type == "cuda" else "saved activations + mask"}
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()

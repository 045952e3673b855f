"""``bard generate``: decode one image + prompt with a Bard-VL checkpoint.

    bard generate --model DIR --image cat.jpg --prompt "Describe the image." \
        [--max-new-tokens 256] [--block-size B] [--denoising-steps S] [--prompt-attention block|causal] \
        [--remasking-strategy low_confidence_dynamic] [--confidence-threshold 0.5] \
        [--temperature 0] [--top-k 0] [--top-p 1] [--seed 0] [--dtype auto] [--compile] [--stream] [--stats]

``--block-size`` and ``--prompt-attention`` default to the checkpoint's config (what it was
trained with), ``--denoising-steps`` to the block size; ``--dtype auto`` loads bf16 on CUDA
and fp32 on CPU.

Follows upstream's inference snippet: the processor's chat template with the system prompt
"You are a helpful assistant." and ``add_generation_prompt=True``, then ``model.generate``
and ``batch_decode(..., skip_special_tokens=True)``.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from nemo_automodel_bard.generation.sampling import REMASKING_STRATEGIES
from nemo_automodel_bard.models.bard_vl.configuration import PROMPT_ATTENTION_CHOICES

__all__ = ["main", "build_batch", "resolve_dtype"]

SYSTEM_PROMPT = "You are a helpful assistant."


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bard generate", description="Block-diffusion decoding with a Bard-VL checkpoint.")
    p.add_argument("--model", required=True, help="Bard-VL checkpoint directory (weights + processor)")
    p.add_argument("--image", action="append", default=[], help="image path (repeatable)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--system-prompt", default=SYSTEM_PROMPT)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--block-size", type=int, default=None, help="default: the checkpoint's config.block_size")
    p.add_argument("--denoising-steps", type=int, default=None, help="default: the block size")
    p.add_argument("--prompt-attention", choices=PROMPT_ATTENTION_CHOICES, default=None,
                   help="default: the checkpoint's config.prompt_attention")
    p.add_argument("--remasking-strategy", choices=REMASKING_STRATEGIES, default="low_confidence_dynamic")
    p.add_argument("--confidence-threshold", type=float, default=0.5)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="RNG seed for sampling (temperature > 0)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                   help="auto: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--attn-implementation", choices=("sdpa", "eager"), default="sdpa")
    p.add_argument("--compile", action="store_true", help="torch.compile the denoising steps (CUDA graphs on CUDA)")
    p.add_argument("--stream", action="store_true", help="print each block as it is committed")
    p.add_argument("--stats", action="store_true", help="print decoding statistics as JSON")
    return p


def build_batch(processor, prompt: str, images: list, system_prompt: str = SYSTEM_PROMPT):
    """Processor batch for one user turn with ``images`` then ``prompt``."""
    content = [{"type": "image", "image": image} for image in images] + [{"type": "text", "text": prompt}]
    messages = [
        {"role": "system", "content": [{"type": "text", "text": system_prompt}]},
        {"role": "user", "content": content},
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return processor(text=[text], images=images or None, padding=True, return_tensors="pt")


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """``auto``: bf16 on CUDA (what the checkpoints are served in), fp32 elsewhere (CPU bf16 is slow)."""
    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return getattr(torch, name)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``bard generate``; returns the exit status."""
    args = _parser().parse_args(argv)
    from PIL import Image
    from transformers import AutoProcessor, TextStreamer

    from nemo_automodel_bard.models.bard_vl import BardVLForConditionalGeneration

    try:
        images = [Image.open(path).convert("RGB") for path in args.image]
    except OSError as err:
        print(f"bard generate: error: cannot read image: {err}", file=sys.stderr)
        return 2
    processor = AutoProcessor.from_pretrained(args.model)
    model = BardVLForConditionalGeneration.from_pretrained(
        args.model, dtype=resolve_dtype(args.dtype, args.device), attn_implementation=args.attn_implementation
    )
    model = model.to(args.device).eval()
    batch = build_batch(processor, args.prompt, images, args.system_prompt)
    streamer = TextStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True) if args.stream else None
    try:
        ids, stats = model.generate(
            batch,
            max_new_tokens=args.max_new_tokens,
            block_size=args.block_size,
            denoising_steps=args.denoising_steps,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            remasking_strategy=args.remasking_strategy,
            confidence_threshold=args.confidence_threshold,
            return_step_stats=True,
            generator=torch.Generator(device=args.device).manual_seed(args.seed),
            streamer=streamer,
            prompt_attention=args.prompt_attention,
            compile=args.compile,
        )
    except ValueError as err:
        print(f"bard generate: error: {err}", file=sys.stderr)
        return 2
    if not args.stream:
        print(processor.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)[0])
    if args.stats:
        print(json.dumps(stats.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

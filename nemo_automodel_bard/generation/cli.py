"""``bard generate``: decode one image + prompt with a Bard-VL checkpoint.

    bard generate --model DIR --image cat.jpg --prompt "Describe the image." \
        [--video clip.mp4] [--mask-token-id N] [--max-new-tokens 256] [--block-size B] [--denoising-steps S] [--prompt-attention block|causal] \
        [--remasking-strategy low_confidence_dynamic] [--confidence-threshold 0.5] \
        [--temperature 0] [--top-k 0] [--top-p 1] [--seed 0] [--dtype auto] [--compile] [--stream] [--stats]

``--block-size`` and ``--prompt-attention`` default to the checkpoint's config (what it was
trained with), ``--denoising-steps`` to the block size; ``--dtype auto`` loads bf16 on CUDA
and fp32 on CPU.

Follows upstream's inference snippet: the processor's chat template with the system prompt
"You are a helpful assistant." and ``add_generation_prompt=True``, then ``model.generate``
and ``batch_decode(..., skip_special_tokens=True)``.

Every argument, the checkpoint's ``config.json`` (a Bard-VL, not an unconverted Qwen3-VL), the
mask id against the tokenizer, the prompt (no typed vision placeholders), the device and the
image/video files are checked before the weights load; each problem is one ``error:`` line
and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

from nemo_automodel_bard.generation.sampling import REMASKING_STRATEGIES
from nemo_automodel_bard.generation.validation import (
    check_checkpoint_config,
    check_decode_arguments,
    check_mask_id_in_config_json,
    check_mask_token_unused,
)
from nemo_automodel_bard.models.bard_vl.configuration import DEFAULT_MASK_TOKEN_ID, PROMPT_ATTENTION_CHOICES

__all__ = ["main", "build_batch", "resolve_dtype"]

SYSTEM_PROMPT = "You are a helpful assistant."


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bard generate", description="Block-diffusion decoding with a Bard-VL checkpoint.")
    p.add_argument("--model", required=True, help="Bard-VL checkpoint directory (weights + processor)")
    p.add_argument("--image", action="append", default=[], help="image path (repeatable)")
    p.add_argument("--video", action="append", default=[], help="video file (.mp4, .webm, ...; repeatable)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--system-prompt", default=SYSTEM_PROMPT)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--block-size", type=int, default=None, help="default: the checkpoint's config.block_size")
    p.add_argument("--denoising-steps", type=int, default=None, help="default: the block size")
    p.add_argument("--prompt-attention", choices=PROMPT_ATTENTION_CHOICES, default=None,
                   help="default: the checkpoint's config.prompt_attention")
    p.add_argument("--remasking-strategy", choices=REMASKING_STRATEGIES, default="low_confidence_dynamic")
    p.add_argument("--confidence-threshold", type=float, default=0.5)
    p.add_argument("--revision-threshold", type=float, default=0.0,
                   help="re-mask committed tokens of the current block whose probability fell below this "
                        "(0 = off; dynamic strategy; for mixed-noise-trained checkpoints)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="RNG seed for sampling (temperature > 0)")
    p.add_argument("--mask-token-id", type=int, default=None, help="override config.json's mask_token_id")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                   help="auto: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--attn-implementation", choices=("sdpa", "eager"), default="sdpa")
    p.add_argument("--compile", action="store_true", help="torch.compile the denoising steps (CUDA graphs on CUDA)")
    p.add_argument("--stream", action="store_true", help="print each block as it is committed")
    p.add_argument("--stats", action="store_true", help="print decoding statistics as JSON")
    return p


def build_batch(processor, prompt: str, images: list, system_prompt: str = SYSTEM_PROMPT, videos: list | None = None):
    """Processor batch for one user turn with ``images``, then ``videos``, then ``prompt``.

    ``videos`` are ``(frames, metadata)`` pairs from ``nemo_automodel_bard.data.chat.load_video``
    (qwen-vl-utils sampling and resizing, as in training).
    """
    from nemo_automodel_bard.data.chat import video_processor_kwargs

    videos = videos or []
    content = [{"type": "image", "image": image} for image in images] + [{"type": "video"} for _ in videos]
    content.append({"type": "text", "text": prompt})
    messages = [
        {"role": "system", "content": [{"type": "text", "text": system_prompt}]},
        {"role": "user", "content": content},
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return processor(text=[text], images=images or None, padding=True, return_tensors="pt",
                     **video_processor_kwargs(videos))


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _decode_options(args: argparse.Namespace) -> dict:
    """The decoding options: checked before the weights load, then passed to ``generate``."""
    return dict(
        max_new_tokens=args.max_new_tokens,
        block_size=args.block_size,
        denoising_steps=args.denoising_steps,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        remasking_strategy=args.remasking_strategy,
        confidence_threshold=args.confidence_threshold,
        revision_threshold=args.revision_threshold,
    )


def _check_arguments(args: argparse.Namespace) -> dict | None:
    """Model-free checks; returns the local config.json (None for a Hub id)."""
    check_decode_arguments(**_decode_options(args))
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise ValueError(f"--device {args.device!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {args.device}: no CUDA GPU is available here (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {args.device}: only {torch.cuda.device_count()} CUDA device(s)")
    for kind, paths in (("image", args.image), ("video", args.video)):
        for path in paths:
            if not Path(path).is_file():
                raise ValueError(f"--{kind} {path}: file not found")
    if not Path(args.model).exists() and _HUB_ID.match(args.model):
        return None  # a Hub id: transformers resolves it (or says why not) at load
    return check_checkpoint_config(args.model)


def _check_prompt_text(processor, *texts: str) -> None:
    """Vision placeholders typed into a prompt would not match the images (the template adds them)."""
    placeholders = {getattr(processor, "image_token", None), getattr(processor, "video_token", None),
                    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"}
    for text in texts:
        for token in sorted(t for t in placeholders if t and t in text):
            raise ValueError(
                f"the prompt contains {token!r}: vision placeholders are added by the chat template for each "
                "--image/--video; remove it from the text"
            )


def _prepare(args: argparse.Namespace):
    """Everything before the weights: checks, processor, images and videos; raises ValueError/OSError."""
    from PIL import Image
    from transformers import AutoProcessor

    from nemo_automodel_bard.data.chat import BadSampleError, load_video

    config = _check_arguments(args)
    try:
        processor = AutoProcessor.from_pretrained(args.model)
    except OSError as err:
        if config is None:  # neither a local folder nor (it turns out) a Hub model
            raise ValueError(f"model folder not found: {args.model} (nor a Hub model of that name: {err})") from None
        raise
    _check_prompt_text(processor, args.prompt, args.system_prompt)
    mask_id = args.mask_token_id
    if mask_id is None and config is not None:
        mask_id = config.get("mask_token_id", DEFAULT_MASK_TOKEN_ID)
    if mask_id is not None:
        if config is not None:
            check_mask_id_in_config_json(config, mask_id)
        check_mask_token_unused(processor.tokenizer, mask_id)
    try:
        images = [Image.open(path).convert("RGB") for path in args.image]
    except OSError as err:
        raise ValueError(f"cannot read image: {err}") from None
    patch = processor.video_processor.patch_size
    try:
        videos = [load_video({"type": "video", "video": str(Path(path).resolve())}, Path("."), path, patch)
                  for path in args.video]
    except BadSampleError as err:
        raise ValueError(str(err)) from None
    return processor, images, videos


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """``auto``: bf16 on CUDA (what the checkpoints are served in), fp32 elsewhere (CPU bf16 is slow)."""
    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return getattr(torch, name)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``bard generate``; returns the exit status."""
    args = _parser().parse_args(argv)
    from transformers import TextStreamer

    from nemo_automodel_bard.models.bard_vl import BardVLForConditionalGeneration
    from nemo_automodel_bard.models.bard_vl.processor_files import stock_processor_expected

    try:
        processor, images, videos = _prepare(args)
        with stock_processor_expected():  # the stock processor serves this command (no fps list)
            model = BardVLForConditionalGeneration.from_pretrained(
                args.model, dtype=resolve_dtype(args.dtype, args.device), attn_implementation=args.attn_implementation
            )
    except (ValueError, OSError) as err:
        print(f"bard generate: error: {err}", file=sys.stderr)
        return 2
    model = model.to(args.device).eval()
    batch = build_batch(processor, args.prompt, images, args.system_prompt, videos)
    streamer = TextStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True) if args.stream else None
    try:
        ids, stats = model.generate(
            batch,
            **_decode_options(args),
            return_step_stats=True,
            generator=torch.Generator(device=args.device).manual_seed(args.seed),
            streamer=streamer,
            mask_token_id=args.mask_token_id,
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

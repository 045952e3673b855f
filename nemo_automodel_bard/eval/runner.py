"""Decoding one lmms-eval style request with a Bard-VL checkpoint, without lmms-eval itself.

:class:`BardVLRunner` holds the model and processor and turns ``(context, visuals,
gen_kwargs)`` into an answer string; the lmms-eval adapter (:mod:`.lmms_model`) only unpacks
requests and delegates here, so this part is testable where lmms-eval is not installed.

Defaults differ from upstream's wrapper on purpose (bard_spec.md section 10, item 8): there,
``block_size`` and ``denoising_steps`` fell back to ``max_new_tokens`` and the threshold to 1.0,
which decodes one token per forward. Here ``denoising_steps`` defaults to ``block_size`` and
the dynamic threshold to 0.9; pass all three explicitly for a paper-comparable run.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["DEFAULT_SYSTEM_PROMPT", "BardVLRunner", "ThroughputLog", "to_bool", "truncate_at_stops"]

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


def to_bool(value: Any) -> bool:
    """``model_args`` arrive as strings (``key=value``); accept the usual spellings."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def truncate_at_stops(text: str, stops: Iterable[str]) -> str:
    """Cut ``text`` at the earliest of the stop strings (lmms-eval's ``until``)."""
    cut = len(text)
    for stop in stops:
        if stop:
            index = text.find(stop)
            if index != -1:
                cut = min(cut, index)
    return text[:cut]


@dataclass
class ThroughputLog:
    """Running totals over requests: generated tokens, forwards and ``generate`` wall time."""

    requests: int = 0
    tokens: int = 0
    forwards: int = 0
    seconds: float = 0.0

    def add(self, tokens: int, forwards: int, seconds: float) -> None:
        self.requests += 1
        self.tokens += tokens
        self.forwards += forwards
        self.seconds += seconds

    def summary(self) -> dict[str, float]:
        return {
            "requests": self.requests,
            "tokens": self.tokens,
            "forwards": self.forwards,
            "tpf": self.tokens / self.forwards if self.forwards else 0.0,
            "tokens_per_s": self.tokens / self.seconds if self.seconds else 0.0,
        }


def _dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


class BardVLRunner:
    """A loaded Bard-VL checkpoint + processor that answers image/text requests.

    Args:
        pretrained: Bard-VL checkpoint folder (``model_type: bard_vl``, processor files).
        block_size, denoising_steps, remasking_strategy, confidence_threshold: passed to
            ``model.generate`` (``denoising_steps`` defaults to ``block_size``).
        max_new_tokens: used when a request's ``gen_kwargs`` has none.
        system_prompt: prepended as a system turn ("" for none).
        min_pixels, max_pixels: override the image processor's resize bounds.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
        dtype: ``"auto"`` (bf16 on CUDA, fp32 on CPU), ``"float32"``, ``"bfloat16"``.
    """

    def __init__(
        self,
        pretrained: str,
        block_size: int = 32,
        denoising_steps: int | None = None,
        remasking_strategy: str = "low_confidence_dynamic",
        confidence_threshold: float = 0.9,
        max_new_tokens: int = 1024,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        device: str = "auto",
        dtype: str = "auto",
        attn_implementation: str = "sdpa",
    ) -> None:
        from transformers import AutoProcessor

        from nemo_automodel_bard.models.bard_vl import BardVLForConditionalGeneration

        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.model = BardVLForConditionalGeneration.from_pretrained(
            str(Path(pretrained)), dtype=_dtype(dtype, self.device), attn_implementation=attn_implementation
        ).to(self.device).eval()
        self.processor = AutoProcessor.from_pretrained(str(pretrained))
        if min_pixels is not None or max_pixels is not None:
            size = dict(self.processor.image_processor.size)
            size.update({k: int(v) for k, v in (("shortest_edge", min_pixels), ("longest_edge", max_pixels)) if v is not None})
            self.processor.image_processor.size = size
        self.block_size = int(block_size)
        self.denoising_steps = int(denoising_steps) if denoising_steps is not None else self.block_size
        self.remasking_strategy = remasking_strategy
        self.confidence_threshold = float(confidence_threshold)
        self.max_new_tokens = int(max_new_tokens)
        self.system_prompt = system_prompt
        self.eos_token_id = self.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.log = ThroughputLog()

    def messages(self, context: str, images: list[Any], num_videos: int = 0) -> list[dict]:
        """Chat turns: optional system prompt, then the images, videos and the text in one user turn.

        lmms-eval contexts may carry an ``<image>`` placeholder; the chat template places the
        vision tokens itself, so the placeholder is dropped.
        """
        content = [{"type": "image"} for _ in images] + [{"type": "video"} for _ in range(num_videos)]
        content.append({"type": "text", "text": context.replace("<image>", "").strip()})
        turns = [{"role": "system", "content": [{"type": "text", "text": self.system_prompt}]}] if self.system_prompt else []
        return turns + [{"role": "user", "content": content}]

    @staticmethod
    def load_images(visuals: Iterable[Any] | None) -> list[Any]:
        """PIL images (or image paths) as RGB PIL images; video files are left to :meth:`load_visuals`."""
        return BardVLRunner.load_visuals(visuals, video_patch_size=None)[0]

    @staticmethod
    def load_visuals(visuals: Iterable[Any] | None, video_patch_size: int | None) -> tuple[list[Any], list[tuple]]:
        """``(images, videos)``: RGB PIL images, and video files decoded by qwen-vl-utils as in training.

        A video is ``(frames, metadata)`` from :func:`nemo_automodel_bard.data.chat.load_video`.
        """
        from PIL import Image

        from nemo_automodel_bard.data.chat import load_video

        images, videos = [], []
        for visual in visuals or []:
            if visual is None:
                continue
            if isinstance(visual, (str, Path)) and str(visual).lower().endswith(VIDEO_SUFFIXES):
                if video_patch_size is None:
                    raise ValueError(f"video input {visual!r}: use load_visuals with the video processor's patch size")
                item = {"type": "video", "video": str(Path(visual).resolve())}
                videos.append(load_video(item, Path("."), str(visual), video_patch_size))
                continue
            if isinstance(visual, (str, Path)):
                visual = Image.open(visual)
            images.append(visual.convert("RGB"))
        return images, videos

    @torch.inference_mode()
    def answer(self, context: str, visuals: Iterable[Any] | None = None, gen_kwargs: dict | None = None) -> str:
        """Greedy (or sampled, if ``temperature > 0``) block-diffusion answer to one request."""
        gen_kwargs = dict(gen_kwargs or {})
        images, videos = self.load_visuals(visuals, self.processor.video_processor.patch_size)
        messages = self.messages(context, images, len(videos))
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        video_kwargs = {}
        if videos:  # frames already sampled and resized by qwen-vl-utils; metadata gives the timestamps
            video_kwargs = {"videos": [frames for frames, _ in videos], "videos_kwargs": {
                "video_metadata": [meta for _, meta in videos], "do_sample_frames": False, "do_resize": False}}
        batch = self.processor(text=[text], images=images or None, return_tensors="pt", **video_kwargs).to(self.device)
        start = time.perf_counter()
        ids, stats = self.model.generate(
            batch,
            int(gen_kwargs.get("max_new_tokens") or self.max_new_tokens),
            block_size=self.block_size,
            denoising_steps=self.denoising_steps,
            temperature=float(gen_kwargs.get("temperature") or 0.0),
            top_p=float(gen_kwargs.get("top_p") or 1.0),
            remasking_strategy=self.remasking_strategy,
            confidence_threshold=self.confidence_threshold,
            return_step_stats=True,
            eos_token_id=self.eos_token_id,
        )
        self.log.add(stats.num_tokens[0], stats.num_forwards[0], time.perf_counter() - start)
        answer = self.processor.tokenizer.decode(ids[0].tolist(), skip_special_tokens=True)
        until = gen_kwargs.get("until") or []
        return truncate_at_stops(answer, [until] if isinstance(until, str) else until)

"""Answering lmms-eval style requests with a checkpoint, without lmms-eval itself.

:class:`BardVLRunner` holds a model and its processor and turns ``(context, visuals,
gen_kwargs)`` requests into answers, a left-padded batch at a time: block diffusion through
``BardVLForConditionalGeneration.generate`` (``decoding="bard"``), or autoregressive decoding of
the Qwen3-VL source through transformers' ``generate`` with the same prompts (``decoding="ar"``),
so a Bard-VL and its source are compared on equal footing. The lmms-eval adapter
(:mod:`.lmms_model`) only unpacks requests and delegates here.

Prompts and answers are built exactly as ``bard eval`` (:mod:`nemo_automodel_bard.toy.evaluate`)
builds them: one user turn (images, then videos, then the text), the checkpoint's chat template with the
generation prompt, no system turn unless ``system_prompt`` is given; the answer is the text up
to the first EOS with special tokens dropped, stripped.

Defaults differ from upstream's wrapper on purpose (bard_spec.md section 10, item 8): there,
``block_size`` and ``denoising_steps`` fell back to ``max_new_tokens`` and the threshold to 1.0,
which decodes one token per forward. Here ``denoising_steps`` defaults to ``block_size`` and
the dynamic threshold to 0.9; pass all three explicitly for a paper-comparable run.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nemo_automodel_bard.eval.model_args import EvalSettings, parse_model_args

__all__ = ["Answer", "BardVLRunner", "ThroughputLog", "to_bool", "truncate_at_stops"]

_VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


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
class Answer:
    """One request's answer and what it cost (tokens up to and including EOS)."""

    text: str
    input_tokens: int
    output_tokens: int
    forwards: int


@dataclass
class ThroughputLog:
    """Running totals: generated tokens, per-sample forwards, batched forwards, ``generate`` wall time."""

    requests: int = 0
    tokens: int = 0
    forwards: int = 0
    batch_forwards: int = 0
    seconds: float = 0.0

    def add(self, tokens: int, forwards: int, seconds: float, requests: int = 1, batch_forwards: int | None = None) -> None:
        self.requests += requests
        self.tokens += tokens
        self.forwards += forwards
        self.batch_forwards += forwards if batch_forwards is None else batch_forwards
        self.seconds += seconds

    def summary(self) -> dict[str, float]:
        """``tpf`` = tokens / per-sample forwards (batch-independent); ``tokens_per_s`` over ``generate`` time."""
        return {
            "requests": self.requests,
            "tokens": self.tokens,
            "forwards": self.forwards,
            "batch_forwards": self.batch_forwards,
            "tpf": self.tokens / self.forwards if self.forwards else 0.0,
            "tokens_per_s": self.tokens / self.seconds if self.seconds else 0.0,
            "seconds": self.seconds,
        }


def _is_video(visual: Any) -> bool:
    """A video file path, or a non-empty list of frame-image paths (one video)."""
    if isinstance(visual, (str, Path)):
        return str(visual).lower().endswith(_VIDEO_SUFFIXES)
    return isinstance(visual, (list, tuple)) and bool(visual) and all(isinstance(f, (str, Path)) for f in visual)


def _dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


def _load_model(settings: EvalSettings, device: str) -> torch.nn.Module:
    dtype = _dtype(settings.dtype, device)
    if settings.decoding == "bard":
        from nemo_automodel_bard.models.bard_vl import BardVLForConditionalGeneration as model_class
    else:
        from transformers import AutoModelForImageTextToText as model_class
    from nemo_automodel_bard.models.bard_vl.processor_files import stock_processor_expected

    with stock_processor_expected():  # the runner calls the processor itself (no qwen-vl-utils fps list)
        model = model_class.from_pretrained(
            settings.pretrained, dtype=dtype, attn_implementation=settings.attn_implementation
        )
    return model.to(device).eval()


class BardVLRunner:
    """A loaded checkpoint + processor that answers image/video/text requests in left-padded batches.

    Args:
        pretrained: checkpoint folder: Bard-VL for ``decoding="bard"``, the AR source for ``"ar"``.
        **model_args: the other ``model_args`` keys (:class:`EvalSettings`), strings or typed;
            all are checked here, before any weights load.
    """

    def __init__(self, pretrained: str, **model_args: Any) -> None:
        from transformers import AutoProcessor

        self.settings = parse_model_args({"pretrained": pretrained, **model_args})
        s = self.settings
        if s.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"model_args device={s.device!r} but CUDA is not available here")
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if s.device == "auto" else s.device
        self.processor = AutoProcessor.from_pretrained(s.pretrained)
        self.processor.tokenizer.padding_side = "left"  # generate() of both decoders needs left padding
        if s.min_pixels is not None or s.max_pixels is not None:
            size = dict(self.processor.image_processor.size)
            size.update({k: v for k, v in (("shortest_edge", s.min_pixels), ("longest_edge", s.max_pixels)) if v is not None})
            self.processor.image_processor.size = size
        self.model = _load_model(s, self.device)
        self.decoding = s.decoding
        self.block_size = s.block_size
        self.denoising_steps = s.denoising_steps or s.block_size
        self.max_new_tokens = s.max_new_tokens
        self.system_prompt = s.system_prompt
        self.eos_token_id = self.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.log = ThroughputLog()

    def messages(self, context: str, images: list[Any], num_videos: int = 0) -> list[dict]:
        """Chat turns: a system turn only if ``system_prompt`` is set, then one user turn with the
        images, the videos and the text, in that order (as ``bard generate`` and training build it).

        lmms-eval contexts may carry an ``<image>`` placeholder; the chat template places the
        vision tokens itself, so the placeholder is dropped.
        """
        content = [{"type": "image"} for _ in images] + [{"type": "video"} for _ in range(num_videos)]
        content.append({"type": "text", "text": context.replace("<image>", "").strip()})
        turns = [{"role": "system", "content": [{"type": "text", "text": self.system_prompt}]}] if self.system_prompt else []
        return turns + [{"role": "user", "content": content}]

    def load_visuals(self, visuals: Iterable[Any] | None) -> tuple[list[Any], list[tuple[Any, dict]]]:
        """``(images, videos)`` of one request, in the order given.

        Images: PIL images or image paths, as RGB PIL images. Videos: video file paths
        (``.mp4``, ``.webm``, ...) or a list of frame-image paths, decoded by qwen-vl-utils exactly
        as in training (:func:`~nemo_automodel_bard.data.chat.load_video`): ``(frames, metadata)``.
        """
        from PIL import Image

        from nemo_automodel_bard.data.chat import BadSampleError, load_video

        images, videos = [], []
        for visual in visuals or []:
            if visual is None:
                continue
            if _is_video(visual):
                ref = [str(Path(f).resolve()) for f in visual] if isinstance(visual, (list, tuple)) else str(Path(visual).resolve())
                try:
                    videos.append(load_video({"type": "video", "video": ref}, Path("."), str(visual),
                                             self.processor.video_processor.patch_size))
                except BadSampleError as err:
                    raise ValueError(f"video input {err}") from None
                continue
            if isinstance(visual, (str, Path)):
                visual = Image.open(visual)
            if not isinstance(visual, Image.Image):
                raise ValueError(f"visual of type {type(visual).__name__}: expected a PIL image, an image path, "
                                 f"a video file ({', '.join(_VIDEO_SUFFIXES)}) or a list of frame-image paths")
            images.append(visual.convert("RGB"))
        return images, videos

    def encode(self, contexts: Sequence[str], visuals: Sequence[Iterable[Any] | None]) -> dict[str, torch.Tensor]:
        """Left-padded processor output for the requests' chats (generation prompt added)."""
        from nemo_automodel_bard.data.chat import video_processor_kwargs

        texts, images, videos = [], [], []
        for context, request_visuals in zip(contexts, visuals):
            request_images, request_videos = self.load_visuals(request_visuals)
            images += request_images
            videos += request_videos
            messages = self.messages(context, request_images, len(request_videos))
            texts.append(self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        return self.processor(text=texts, images=images or None, padding=True, return_tensors="pt",
                              **video_processor_kwargs(videos)).to(self.device)

    def _cut_at_eos(self, ids: list[int]) -> list[int]:
        return ids[: ids.index(self.eos_token_id) + 1] if self.eos_token_id in ids else ids

    def _generate(self, batch: dict, gen_kwargs: dict) -> tuple[list[list[int]], list[int], int]:
        """Response ids per row (up to and including EOS), per-row forwards, batched forwards."""
        max_new = int(gen_kwargs.get("max_new_tokens") or self.max_new_tokens)
        temperature = float(gen_kwargs.get("temperature") or 0.0)
        top_p = float(gen_kwargs.get("top_p") or 1.0)
        if self.decoding == "bard":
            s = self.settings
            ids, stats = self.model.generate(
                batch, max_new, block_size=self.block_size, denoising_steps=self.denoising_steps,
                temperature=temperature, top_p=top_p, remasking_strategy=s.remasking_strategy,
                confidence_threshold=s.confidence_threshold, revision_threshold=s.revision_threshold,
                return_step_stats=True, eos_token_id=self.eos_token_id,
            )
            rows = [self._cut_at_eos(row) for row in ids.tolist()]
            return rows, list(stats.num_forwards), stats.batch_forwards
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
        out = self.model.generate(**batch, max_new_tokens=max_new, use_cache=True, eos_token_id=self.eos_token_id,
                                  pad_token_id=self.processor.tokenizer.pad_token_id, **sampling)
        new = out[:, batch["input_ids"].shape[1]:]
        rows = [self._cut_at_eos(row) for row in new.tolist()]
        # AR: one forward per generated token (the prefill produces the first), as bard eval counts.
        return rows, [len(row) for row in rows], int(new.shape[1])

    @torch.inference_mode()
    def answer_batch(self, contexts: Sequence[str], visuals: Sequence[Iterable[Any] | None], gen_kwargs: dict | None = None) -> list[Answer]:
        """Answers to requests sharing ``gen_kwargs``, decoded as one left-padded batch."""
        gen_kwargs = dict(gen_kwargs or {})
        batch = self.encode(contexts, visuals)
        start = time.perf_counter()
        rows, forwards, batch_forwards = self._generate(batch, gen_kwargs)
        seconds = time.perf_counter() - start
        self.log.add(sum(map(len, rows)), sum(forwards), seconds, requests=len(rows), batch_forwards=batch_forwards)
        until = gen_kwargs.get("until") or []
        stops = [until] if isinstance(until, str) else list(until)
        prompt_lengths = batch["attention_mask"].sum(1).tolist()
        return [
            Answer(
                text=truncate_at_stops(self.processor.tokenizer.decode(row, skip_special_tokens=True).strip(), stops),
                input_tokens=int(prompt), output_tokens=len(row), forwards=int(f),
            )
            for row, f, prompt in zip(rows, forwards, prompt_lengths)
        ]

    def answer(self, context: str, visuals: Iterable[Any] | None = None, gen_kwargs: dict | None = None) -> str:
        """One request's answer (a batch of one)."""
        return self.answer_batch([context], [visuals], gen_kwargs)[0].text

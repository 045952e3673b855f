"""``BardVLProcessor``: Qwen3-VL's processor, accepting the video kwargs qwen-vl-utils returns.

The Bard-VL model card (and Qwen2.5-VL-era code) calls::

    images, videos, video_kwargs = process_vision_info(messages, return_video_kwargs=True,
                                                       return_video_metadata=False, image_patch_size=...)
    inputs = processor(text=[text], images=images, videos=videos, padding=False, return_tensors="pt",
                       **video_kwargs)

qwen-vl-utils 0.0.14 then returns ``video_kwargs = {"do_sample_frames": False, "fps": [...]}``
with one sampling rate per video (an empty list without videos). transformers 4.57 typed
``fps`` loosely and ignored it here; 5.18 types it as one number (the rate to sample at when
``do_sample_frames``) and rejects the list. This class accepts the list and, as it describes
frames that are already sampled, turns it into the frame timestamps Qwen3-VL's prompt needs
(``video_metadata``), instead of the 24 fps fallback transformers uses without metadata.
Everything else is ``Qwen3VLProcessor``'s.
"""

from __future__ import annotations

from typing import Any

from transformers import Qwen3VLProcessor
from transformers.video_utils import VideoMetadata, make_batched_videos

__all__ = ["BardVLProcessor", "as_bard_processor"]


class BardVLProcessor(Qwen3VLProcessor):
    """``Qwen3VLProcessor`` that also takes qwen-vl-utils' per-video ``fps`` list."""

    def __call__(self, images: Any = None, text: Any = None, videos: Any = None, audio: Any = None, **kwargs: Any):
        kwargs = _per_video_fps_to_metadata(videos, kwargs)
        return super().__call__(images=images, text=text, videos=videos, audio=audio, **kwargs)


def as_bard_processor(processor: Qwen3VLProcessor) -> BardVLProcessor:
    """The same tokenizer, image and video processors and chat template, as a ``BardVLProcessor``."""
    return BardVLProcessor(
        image_processor=processor.image_processor,
        tokenizer=processor.tokenizer,
        video_processor=processor.video_processor,
        chat_template=processor.chat_template,
    )


def _per_video_fps_to_metadata(videos: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Replace a list-valued ``fps`` (qwen-vl-utils: one sampling rate per video) by what 5.18 takes."""
    fps = kwargs.get("fps")
    if not isinstance(fps, (list, tuple)):
        return kwargs  # a single rate (or none) is transformers' own argument
    kwargs = dict(kwargs)
    del kwargs["fps"]
    videos = _as_video_list(videos)
    if len(fps) != len(videos):
        raise ValueError(
            f"fps is a list of {len(fps)} per-video frame rates (qwen-vl-utils' video_kwargs) but {len(videos)} "
            "videos were given; pass one rate per video, or a single number"
        )
    if not videos:
        return kwargs  # qwen-vl-utils' {"fps": []} for image-only messages
    if kwargs.get("do_sample_frames"):
        raise ValueError(
            "a per-video fps list describes frames that are already sampled; it cannot be combined with "
            "do_sample_frames=True (pass a single fps to sample at)"
        )
    if any(isinstance(video, str) for video in videos):
        raise ValueError("a per-video fps list describes decoded frames; got a video path (decode it first)")
    if kwargs.get("video_metadata") is None:
        # The frames were sampled at these rates from time 0, so frame i sits at i / fps seconds.
        kwargs["video_metadata"] = [
            VideoMetadata(total_num_frames=len(video), fps=float(rate), frames_indices=list(range(len(video))))
            for video, rate in zip(videos, fps)
        ]
    return kwargs


def _as_video_list(videos: Any) -> list:
    """One entry (frames first) per video, as transformers batches them; ``None`` is no video."""
    return [] if videos is None else make_batched_videos(videos)

"""The data-loader collate function: tokenized samples -> packed ``[prompt | clean | noisy]`` rows.

Configured by the recipe (it sets ``dataloader.collate_fn`` from the ``bard:`` section) and
called by AutoModel's VLM dataloader as ``collate(examples, processor=...)``. Noise is *not*
applied here: the train step applies it with a step-seeded generator (resume-exact).

Under FSDP2 every rank must run the vision tower in every micro-batch (its blocks are
sharded units whose all-gathers are collectives): a micro-batch without an image gets a
fake one (:func:`fake_media_sample`, AutoModel's ``fake_image.py`` idea), placed as its own
packed sample with no loss and no attention to or from real tokens.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from nemo_automodel_bard.diffusion.layout import collate_layout

__all__ = ["bard_collate", "fake_media_sample", "response_pad_token_id"]


def response_pad_token_id(processor: Any) -> int:
    """The id responses are block-padded with: ``<|im_end|>`` (upstream configs), else EOS."""
    tokenizer = getattr(processor, "tokenizer", processor)
    token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if token_id is None or token_id == getattr(tokenizer, "unk_token_id", None):
        token_id = tokenizer.eos_token_id
    if token_id is None:
        raise ValueError("the tokenizer has neither <|im_end|> nor an EOS token to pad responses with")
    return int(token_id)


def fake_media_sample(processor: Any, kind: Literal["image", "video"] = "image") -> dict[str, Any]:
    """The smallest image (or video) the vision tower accepts, as a prompt-only sample.

    ``<|vision_start|> <|image_pad|> <|vision_end|>``: one merged token from a
    ``merge_size x merge_size`` patch grid of zero pixels (about mid-grey after the
    processor's normalisation), built directly (the processor would upscale a tiny image to
    its ``min_pixels``). Its tokens carry no loss; the collator gives it its own ``doc`` so
    that no real token attends it.
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    media_processor = getattr(processor, "image_processor" if kind == "image" else "video_processor", None)
    if media_processor is None:
        raise ValueError(f"a fake {kind} needs a processor with an {kind} processor")
    pad_token = "<|image_pad|>" if kind == "image" else "<|video_pad|>"
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|vision_start|>", pad_token, "<|vision_end|>")]
    if any(i is None or i == getattr(tokenizer, "unk_token_id", None) for i in ids):
        raise ValueError(f"the tokenizer lacks <|vision_start|>, {pad_token} or <|vision_end|> for a fake {kind}")
    merge = int(media_processor.merge_size)
    patch_dim = 3 * int(media_processor.temporal_patch_size) * int(media_processor.patch_size) ** 2
    pixels, grid = ("pixel_values", "image_grid_thw") if kind == "image" else ("pixel_values_videos", "video_grid_thw")
    return {
        "prompt_ids": torch.tensor(ids, dtype=torch.long),
        "mm_token_type_ids": torch.tensor([0, 1 if kind == "image" else 2, 0], dtype=torch.long),
        pixels: torch.zeros(merge * merge, patch_dim),
        grid: torch.tensor([[1, merge, merge]], dtype=torch.long),
        "source": f"<fake {kind}>",
    }


def bard_collate(
    examples: list[dict[str, Any]],
    processor: Any = None,
    *,
    block_size: int,
    pack_size: int | None = None,
    pad_to_multiple_of: int = 1,
    pad_token_id: int | None = None,
    fake_images: bool = True,
    fake_videos: bool = False,
) -> dict[str, Any]:
    """Collate :class:`~nemo_automodel_bard.data.dataset.BardChatDataset` items.

    Args:
        examples: tokenized samples.
        processor: supplies the response pad id when ``pad_token_id`` is None.
        block_size: responses are padded to a multiple of it.
        pack_size: pack several samples per row up to this many tokens (None: one per row).
        pad_to_multiple_of: right-pad rows to a multiple of this (e.g. 8 or 64 on GPU).
        fake_images: add a fake image to a micro-batch without images (FSDP2: every rank
            must run the vision tower every micro-batch).
        fake_videos: the same for videos (images and videos are separate vision-tower
            calls): turn on for datasets where some micro-batches hold videos.

    Returns:
        The layout batch described in :mod:`nemo_automodel_bard.diffusion.layout`.
    """
    if pad_token_id is None:
        if processor is None:
            raise ValueError("bard_collate needs pad_token_id or a processor")
        pad_token_id = response_pad_token_id(processor)
    fake = []
    for kind, wanted, key in (("image", fake_images, "pixel_values"), ("video", fake_videos, "pixel_values_videos")):
        if wanted and not any(e.get(key) is not None and e[key].numel() > 0 for e in examples):
            if processor is None:
                raise ValueError(f"bard_collate needs the processor to build a fake {kind} for a micro-batch without one")
            fake.append(fake_media_sample(processor, kind))
    return collate_layout(
        examples,
        block_size=block_size,
        pad_token_id=pad_token_id,
        pack_size=pack_size,
        pad_to_multiple_of=pad_to_multiple_of,
        fake_media=fake,
    )

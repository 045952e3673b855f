"""Tiny word-level tokenizer + Qwen3-VL processor and the tiny AR Qwen3-VL config of the toy task.

Everything is built locally (no hub). The words are the toy task's, or those of a dataset's
training split (:func:`words_of`, ``bard demo --data DIR``); the specials always take ids 0..8. The tokenizer is a ``tokenizers`` WordLevel model
split on whitespace, wrapped in ``PreTrainedTokenizerFast``, with the Qwen chat specials,
a mask token and a Qwen-style chat template. The image processor uses patch 16 / merge 2 and
``image_mean=1, image_std=0.5``: white maps to 0, which keeps the mostly-white toy images
from collapsing to one vision feature (toy_feasibility.md, "What failed").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from nemo_automodel_bard.toy.task import COLOURS, SEPARATOR, STOP, TASKS

__all__ = ["SPECIALS", "MASK_TOKEN", "ROLE_WORDS", "vocabulary", "words_of", "build_tokenizer", "build_processor",
           "ar_config", "save_processor"]

MASK_TOKEN = "<|mask|>"
SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    MASK_TOKEN,
    "<unk>",
]

# Qwen3-VL's template shape, with the default system prompt omitted (it only costs tokens).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

PATCH, MERGE = 16, 2


ROLE_WORDS = ("system", "user", "assistant")  # the chat template's role names


def _toy_words() -> list[str]:
    words = [str(d) for d in range(10)] + list(COLOURS) + [SEPARATOR, STOP]
    for question in TASKS.values():
        words += [w for w in question.split() if w not in words]
    return words


def words_of(texts: Iterable[str]) -> list[str]:
    """The distinct whitespace-separated words of ``texts``, in order of first appearance."""
    return list(dict.fromkeys(w for text in texts for w in text.split()))


def vocabulary(words: Sequence[str] | None = None) -> list[str]:
    """All tokens: specials first (ids 0..8), the role names, then ``words`` (default: the toy task's)."""
    words = _toy_words() if words is None else words
    return list(dict.fromkeys([*SPECIALS, *ROLE_WORDS, *words]))


def build_tokenizer(words: Sequence[str] | None = None):
    """``PreTrainedTokenizerFast`` over :func:`vocabulary`; whitespace separates words."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(vocabulary(words))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        additional_special_tokens=[t for t in SPECIALS if t not in ("<unk>", "<|endoftext|>", "<|im_end|>")],
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
    )


def build_processor(words: Sequence[str] | None = None):
    """``Qwen3VLProcessor``: the word tokenizer + patch-16/merge-2 image and video processors."""
    from transformers import Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import (
        Qwen2VLImageProcessor,
    )
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import (
        Qwen3VLVideoProcessor,
    )

    unit = PATCH * MERGE
    # min = one cell; max = 16 cells: the toy images (32 x 32n px) are never resized.
    size = {"shortest_edge": unit * unit, "longest_edge": 16 * unit * unit}
    norm = dict(image_mean=[1.0, 1.0, 1.0], image_std=[0.5, 0.5, 0.5])
    image_processor = Qwen2VLImageProcessor(patch_size=PATCH, temporal_patch_size=2, merge_size=MERGE, size=size, **norm)
    video_processor = Qwen3VLVideoProcessor(
        patch_size=PATCH, temporal_patch_size=2, merge_size=MERGE, size=size, min_frames=2, max_frames=4, **norm
    )
    return Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(words),
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def save_processor(path: str | Path, words: Sequence[str] | None = None):
    """Build the processor, ``save_pretrained`` it to ``path``, return it."""
    processor = build_processor(words)
    processor.save_pretrained(str(path))
    return processor


def ar_config(vocab_size: int | None = None, **text_overrides: Any):
    """The tiny autoregressive ``Qwen3VLConfig`` of the toy (about 3 M parameters).

    ``vocab_size``: the tokenizer's length (default: the toy vocabulary's); special ids are
    fixed by :data:`SPECIALS`, whatever the words.

    Text: hidden 192, 3 layers, 3 heads x 64 (no GQA), interleaved
    mRoPE ``[8, 12, 12]``. Vision: depth 2, hidden 128, patch 16, merge 2, DeepStack ``[0]``.
    """
    from transformers import Qwen3VLConfig

    tokenizer_ids = {tok: i for i, tok in enumerate(SPECIALS)}
    text = dict(
        vocab_size=vocab_size or len(vocabulary()),
        hidden_size=192,
        intermediate_size=512,
        num_hidden_layers=3,
        num_attention_heads=3,
        num_key_value_heads=3,
        head_dim=64,
        max_position_embeddings=1024,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12], "mrope_interleaved": True},
        eos_token_id=tokenizer_ids["<|im_end|>"],
        bos_token_id=tokenizer_ids["<|im_start|>"],
        pad_token_id=tokenizer_ids["<|endoftext|>"],
    )
    text.update(text_overrides)
    vision = dict(
        depth=2,
        hidden_size=128,
        intermediate_size=256,
        num_heads=2,
        patch_size=PATCH,
        temporal_patch_size=2,
        spatial_merge_size=MERGE,
        out_hidden_size=text["hidden_size"],
        num_position_embeddings=64,
        deepstack_visual_indexes=[0],
    )
    return Qwen3VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=tokenizer_ids["<|image_pad|>"],
        video_token_id=tokenizer_ids["<|video_pad|>"],
        vision_start_token_id=tokenizer_ids["<|vision_start|>"],
        vision_end_token_id=tokenizer_ids["<|vision_end|>"],
        eos_token_id=tokenizer_ids["<|im_end|>"],
        pad_token_id=tokenizer_ids["<|endoftext|>"],
        tie_word_embeddings=False,
        architectures=["Qwen3VLForConditionalGeneration"],
    )

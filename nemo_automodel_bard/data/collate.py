"""The data-loader collate function: tokenized samples -> packed ``[prompt | clean | noisy]`` rows.

Configured by the recipe (it sets ``dataloader.collate_fn`` from the ``bard:`` section) and
called by AutoModel's VLM dataloader as ``collate(examples, processor=...)``. Noise is *not*
applied here: the train step applies it with a step-seeded generator (resume-exact).
"""

from __future__ import annotations

from typing import Any

from nemo_automodel_bard.diffusion.layout import collate_layout

__all__ = ["bard_collate", "response_pad_token_id"]


def response_pad_token_id(processor: Any) -> int:
    """The id responses are block-padded with: ``<|im_end|>`` (upstream configs), else EOS."""
    tokenizer = getattr(processor, "tokenizer", processor)
    token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if token_id is None or token_id == getattr(tokenizer, "unk_token_id", None):
        token_id = tokenizer.eos_token_id
    if token_id is None:
        raise ValueError("the tokenizer has neither <|im_end|> nor an EOS token to pad responses with")
    return int(token_id)


def bard_collate(
    examples: list[dict[str, Any]],
    processor: Any = None,
    *,
    block_size: int,
    pack_size: int | None = None,
    pad_to_multiple_of: int = 1,
    pad_token_id: int | None = None,
) -> dict[str, Any]:
    """Collate :class:`~nemo_automodel_bard.data.dataset.BardChatDataset` items.

    Args:
        examples: tokenized samples.
        processor: supplies the response pad id when ``pad_token_id`` is None.
        block_size: responses are padded to a multiple of it.
        pack_size: pack several samples per row up to this many tokens (None: one per row).
        pad_to_multiple_of: right-pad rows to a multiple of this (e.g. 8 or 64 on GPU).

    Returns:
        The layout batch described in :mod:`nemo_automodel_bard.diffusion.layout`.
    """
    if pad_token_id is None:
        if processor is None:
            raise ValueError("bard_collate needs pad_token_id or a processor")
        pad_token_id = response_pad_token_id(processor)
    return collate_layout(
        examples,
        block_size=block_size,
        pad_token_id=pad_token_id,
        pack_size=pack_size,
        pad_to_multiple_of=pad_to_multiple_of,
    )

"""AutoModel's VLM conversation datasets as BARD training samples.

AutoModel's VLM dataset builders (``nemo_automodel.components.datasets.vlm``: ``make_rdr_dataset``,
``make_cord_v2_dataset``, ``make_medpix_dataset``, ``make_llava_onevision_dataset``,
``make_meta_dataset``, the offline ``mock.build_mock_vlm_dataset``, ...) and a user's own function
in that format return items ``{"conversation": [{"role": ..., "content": [...]}, ...]}`` with
``{"type": "image", "image": PIL.Image | path}``, ``{"type": "video", "video": path | [frame
paths]}`` and ``{"type": "text", "text": ...}`` content items. That is the upstream ``messages``
schema (bard_spec.md section 8) under another key, so each item becomes the same
:class:`~nemo_automodel_bard.data.chat.ChatRow` the jsonl reader produces, and
:class:`~nemo_automodel_bard.data.dataset.BardChatDataset` tokenizes it: the prompt is every turn
before the last assistant turn, the response that turn; layout, masks and loss are those of a
jsonl row. Items holding ``messages`` instead are read the same way.

The recipe rewrites a stock ``dataset:`` section into :func:`build_conversation_dataset` with the
user's section as ``source`` (``recipes/block_diffusion.py``), so AutoModel's own dataset config
resolution builds the source exactly as its VLM recipe would.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nemo_automodel_bard.data.chat import BadSampleError, ChatRow
from nemo_automodel_bard.data.dataset import BardChatDataset

__all__ = ["CONVERSATION_DATASET_TARGET", "ConversationRows", "build_conversation_dataset", "build_source"]

CONVERSATION_DATASET_TARGET = "nemo_automodel_bard.data.conversation.build_conversation_dataset"


class ConversationRows(Sequence):
    """A lazy ``Sequence[ChatRow]`` over conversation items (an HF dataset decodes images on access).

    Args:
        items: a list, HF ``Dataset`` or any sized, indexable collection of conversation items.
        name: names the source in errors (``name[item i]``).
        root_dir: folder relative image and video paths are resolved against.
    """

    def __init__(self, items: Any, name: str, root_dir: str | Path | None = None) -> None:
        if not hasattr(items, "__len__") or not hasattr(items, "__getitem__"):
            raise TypeError(f"dataset source {name} returned {type(items).__name__}; a sized, indexable dataset is needed")
        self.items = items
        self.name = name
        self.root_dir = Path(root_dir).expanduser() if root_dir else Path(".")

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        source = f"{self.name}[item {index}]"
        item = self.items[index]
        messages = item.get("conversation", item.get("messages")) if isinstance(item, Mapping) else None
        if messages is None:
            keys = sorted(item) if isinstance(item, Mapping) else type(item).__name__
            messages = BadSampleError(source, f"no 'conversation' (or 'messages') list in the item ({keys})")
        return ChatRow(messages=messages, source=source, root_dir=self.root_dir)


def _target_name(target: Any) -> str:
    if isinstance(target, str):
        return target.rsplit(".", 1)[-1]
    return getattr(target, "__name__", type(target).__name__)


def build_source(source: Any) -> tuple[Any, str]:
    """``(items, name)`` from a ``_target_`` mapping (built as AutoModel's VLM recipe builds it) or items.

    A mapping goes through AutoModel's ``make_dataset_config`` (typed configs for its own
    builders, validating their fields; any other callable with its keyword arguments).
    """
    if not isinstance(source, Mapping):
        return source, type(source).__name__
    from nemo_automodel.components.datasets.loader import make_dataset_config

    kwargs = dict(source)
    target = kwargs.pop("_target_", None)
    if target is None:
        raise ValueError("dataset.source needs a _target_ (the conversation dataset builder)")
    config = make_dataset_config(target, kwargs)
    # Rank-aware builders (make_meta_dataset) infer the rank from torch.distributed themselves.
    return config.build(), _target_name(target)


def build_conversation_dataset(
    source: Any,
    *,
    root_dir: str | None = None,
    max_length: int | None = None,
    **kwargs: Any,
) -> BardChatDataset:
    """YAML factory: a :class:`BardChatDataset` over AutoModel conversation items.

    Args:
        source: the conversation dataset, as a ``{_target_: builder, **kwargs}`` section or the items.
        root_dir: folder relative media paths are resolved against (default: the working
            directory, as AutoModel resolves them).
        max_length: bound on a sample's ``P + R`` (default 8192; the layout holds ``P + 2R``).
        **kwargs: the other :class:`BardChatDataset` options (``on_bad_sample``, ``too_long``,
            ``validate``, ``block_size``, ``processor``).
    """
    items, name = build_source(source)
    if max_length is not None:
        kwargs["max_length"] = max_length
    return BardChatDataset(rows=ConversationRows(items, name, root_dir), **kwargs)

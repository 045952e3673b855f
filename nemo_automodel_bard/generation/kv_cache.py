"""Preallocated KV cache for block decoding, written in place at explicit positions.

transformers' ``DynamicCache`` concatenates every forward (and the decoder then cropped the
noisy block off again); its ``StaticCache`` is append-only (``cumulative_length``), so it
cannot overwrite the still-noisy block. Block decoding needs "write the queries' K/V at
positions ``[start, end)``": the fused commit rewrites the previous block at its final
tokens, and every denoising step rewrites the current block, so stale noisy K/V never
survive a step (decision D7's exact-cache semantics).

One ``[N, kv_heads, max_length, head_dim]`` tensor pair per layer, allocated on the first
write (dtype, device and head count come from the model). Before each forward the decoder
calls :meth:`BlockKVCache.set_window`; the attention layers then write their K/V in place
with ``index_copy_`` (graph-safe: the index is a tensor, the buffers keep their address) and
read keys ``[0, view)``:

* ``view = end`` (the exact prefix): no column beyond the current queries, so a steady step
  of an unpadded batch needs no mask at all (SDPA may pick flash and GQA needs no K/V repeat);
* ``view = max_length`` (fixed shapes for ``torch.compile`` / CUDA graphs): every steady step
  has identical shapes; the mask hides the columns not written yet.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

__all__ = ["BlockKVCache"]


class _Window:
    """Where the next forward writes (``index``, device tensor) and how many keys it reads."""

    def __init__(self) -> None:
        self.index: torch.Tensor | None = None
        self.start = 0
        self.view = 0


class _BlockKVLayer(CacheLayerMixin):
    is_compileable = True
    is_sliding = False

    def __init__(self, window: _Window, batch_size: int, max_length: int) -> None:
        super().__init__()
        self.window, self.batch_size, self.max_length = window, batch_size, max_length

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        n, heads, _, k_dim = key_states.shape
        if n != self.batch_size:
            raise ValueError(f"BlockKVCache was built for batch {self.batch_size}, the forward has {n} rows")
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = key_states.new_zeros(n, heads, self.max_length, k_dim)
        self.values = value_states.new_zeros(n, heads, self.max_length, value_states.shape[-1])
        if not torch.compiler.is_compiling():
            # Fixed addresses: compiled steps (and CUDA graphs) read and write them in place.
            torch._dynamo.mark_static_address(self.keys)
            torch._dynamo.mark_static_address(self.values)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        index = self.window.index
        if index is None or index.shape[0] != key_states.shape[-2]:
            raise ValueError("BlockKVCache.set_window(start, end) must cover the forward's queries before each forward")
        self.keys.index_copy_(2, index, key_states)
        self.values.index_copy_(2, index, value_states)
        view = self.window.view
        return self.keys[:, :, :view], self.values[:, :, :view]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.window.view, 0

    def get_seq_length(self) -> int:
        return self.window.start

    def get_max_length(self) -> int:
        return self.max_length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self.keys, self.values = self.keys[indices], self.values[indices]
        self.batch_size = int(indices.shape[0])


class BlockKVCache(Cache):
    """Static per-layer K/V for ``[prompt | n blocks]`` rows, written at explicit positions.

    Args:
        num_layers: text decoder layers.
        batch_size: rows (the decoder may later drop finished rows with ``batch_select_indices``).
        max_length: ``prompt width + n_blocks * block_size``.
    """

    is_block_kv_cache = True  # lets the model accept a mask-free step without importing this module

    def __init__(self, num_layers: int, batch_size: int, max_length: int) -> None:
        self.window = _Window()
        super().__init__(layers=[_BlockKVLayer(self.window, batch_size, max_length) for _ in range(num_layers)])
        self.max_length = max_length

    def set_window(self, start: int, end: int, *, full_view: bool, device: torch.device) -> None:
        """The next forward's queries are positions ``[start, end)``; it reads keys ``[0, end)``
        (``full_view=False``) or ``[0, max_length)`` (fixed shape, the mask hides the rest)."""
        if not 0 <= start < end <= self.max_length:
            raise ValueError(f"window [{start}, {end}) outside the cache [0, {self.max_length})")
        if self.window.index is None or (self.window.start, self.window.index.shape[0]) != (start, end - start):
            self.window.index = torch.arange(start, end, device=device)  # reused by a block's steps
        self.window.start = start
        self.window.view = self.max_length if full_view else end

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        for layer in self.layers:
            layer.batch_select_indices(indices)

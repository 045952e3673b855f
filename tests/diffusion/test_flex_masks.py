"""FlexAttention masks against the dense block-diffusion mask (same per-token ids, CPU)."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask, create_mask

from nemo_automodel_bard.diffusion import flex_masks
from nemo_automodel_bard.diffusion.flex_masks import (
    block_diffusion_block_mask,
    block_diffusion_mask_mod,
    block_mask_bytes,
    empty_tile_fraction,
    layout_mask,
)
from nemo_automodel_bard.diffusion.layout import layout_attention_mask
from nemo_automodel_bard.diffusion.masks import CLEAN, NOISY, PAD, PREFIX, block_diffusion_mask, layout_block_ids


def _packed_layout(rows: list[list[tuple[int, int]]], width: int) -> dict[str, torch.Tensor]:
    """``segment, offset, prompt_len, doc`` of rows of (prompt_len, padded response_len) samples + padding."""
    columns = {k: [] for k in ("segment", "offset", "prompt_len", "doc")}
    for samples in rows:
        seg, off, plen, doc = [], [], [], []
        for d, (p, r) in enumerate(samples):
            seg += [PREFIX] * p + [CLEAN] * r + [NOISY] * r
            off += list(range(p)) + list(range(r)) * 2
            plen += [p] * (p + 2 * r)
            doc += [d] * (p + 2 * r)
        pad = width - len(seg)
        for key, values, fill in (("segment", seg, PAD), ("offset", off, 0), ("prompt_len", plen, 0), ("doc", doc, -1)):
            columns[key].append(values + [fill] * pad)
    return {k: torch.tensor(v) for k, v in columns.items()}


# Two rows: three packed samples (prompts not a multiple of the block size) and one long one;
# both end in padding, and the width (300) is not a multiple of the tile.
LAYOUT = _packed_layout([[(37, 16), (50, 40), (9, 8)], [(120, 64)]], width=300)


def _ids(block_size):
    return LAYOUT["segment"], layout_block_ids(LAYOUT["segment"], LAYOUT["offset"], LAYOUT["prompt_len"], block_size)


def _dense_tiles(mask: torch.Tensor, tile: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(any visible, all visible) per tile of a dense ``[B, S, S]`` mask; out-of-range counts as masked."""
    b, s, _ = mask.shape
    n = -(-s // tile)
    padded = torch.zeros(b, n * tile, n * tile, dtype=torch.bool)
    padded[:, :s, :s] = mask
    tiles = padded.view(b, n, tile, n, tile)
    return tiles.any(dim=(2, 4)), tiles.all(dim=(2, 4))


@pytest.mark.parametrize("causal_prompt", [False, True])
@pytest.mark.parametrize("block_size", [2, 4])
def test_mask_mod_equals_dense_mask(block_size, causal_prompt):
    segment, block = _ids(block_size)
    dense = block_diffusion_mask(segment, block, LAYOUT["doc"], causal_prompt=causal_prompt)
    mask_mod = block_diffusion_mask_mod(segment, block, LAYOUT["doc"], causal_prompt=causal_prompt)
    from_mod = create_mask(mask_mod, 2, 1, 300, 300, device="cpu")[:, 0]
    assert torch.equal(from_mod, dense)


@pytest.mark.parametrize("causal_prompt", [False, True])
@pytest.mark.parametrize("tile", [32, 128])
def test_block_mask_tiles_equal_dense_mask_tiles(monkeypatch, tile, causal_prompt):
    # Small row chunks: the tile counts are assembled from several chunks.
    monkeypatch.setattr(flex_masks, "_CHUNK_ELEMENTS", 2 * tile * 300)
    segment, block = _ids(4)
    dense = block_diffusion_mask(segment, block, LAYOUT["doc"], causal_prompt=causal_prompt)
    block_mask = block_diffusion_block_mask(segment, block, LAYOUT["doc"], causal_prompt=causal_prompt, tile=tile)
    any_visible, all_visible = _dense_tiles(dense, tile)
    assert block_mask.shape == (2, 1, 300, 300)
    # to_dense() is the tile map the kernel reads (partial + full); full tiles skip the mask_mod.
    assert torch.equal(block_mask.to_dense()[:, 0].bool(), any_visible)
    full = torch.zeros_like(any_visible)
    for b in range(2):
        for q in range(any_visible.shape[1]):
            n = int(block_mask.full_kv_num_blocks[b, 0, q])
            full[b, q, block_mask.full_kv_indices[b, 0, q, :n].long()] = True
    assert torch.equal(full, all_visible)
    assert empty_tile_fraction(block_mask) == pytest.approx(1.0 - any_visible.float().mean().item())
    # ... and it is exactly what torch's own (dense, eager) create_block_mask gives.
    mask_mod = block_diffusion_mask_mod(segment, block, LAYOUT["doc"], causal_prompt=causal_prompt)
    reference = create_block_mask(mask_mod, 2, None, 300, 300, device="cpu", BLOCK_SIZE=tile)
    for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices"):
        assert torch.equal(getattr(block_mask, name), getattr(reference, name)), name


def test_tile_counting_never_builds_an_s_by_s_tensor(monkeypatch):
    seen = []
    real = flex_masks.token_attends

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append(out.shape)
        return out

    monkeypatch.setattr(flex_masks, "token_attends", spy)
    monkeypatch.setattr(flex_masks, "block_diffusion_mask", lambda *a, **k: pytest.fail("dense mask built"))
    monkeypatch.setattr(flex_masks, "_CHUNK_ELEMENTS", 128 * 300)
    block_mask = layout_mask(LAYOUT, 4, backend="flex")
    assert block_mask.shape == (2, 1, 300, 300)
    assert seen and all(shape[1] < 300 for shape in seen)  # query-row chunks only


@pytest.mark.parametrize("causal_prompt", [False, True])
def test_sdpa_layout_mask_is_bool_and_equals_the_additive_mask(causal_prompt):
    mask = layout_mask(LAYOUT, 4, causal_prompt=causal_prompt, backend="sdpa")
    assert mask.dtype == torch.bool and mask.shape == (2, 1, 300, 300)
    assert torch.equal(mask, layout_attention_mask(LAYOUT, 4, causal_prompt=causal_prompt) == 0)
    with pytest.raises(ValueError, match="flash"):
        layout_mask(LAYOUT, 4, backend="flash")


def test_block_mask_is_smaller_than_the_dense_mask_and_mostly_empty():
    # One 8k-like sample scaled down: P=1536, R=512 (P + 2R = 2560), tiles of 128.
    layout = _packed_layout([[(1536, 512)]], width=2560)
    block_mask = layout_mask(layout, 4, backend="flex")
    dense = layout_mask(layout, 4, backend="sdpa")
    assert block_mask_bytes(block_mask) < dense.numel() * dense.element_size() / 10
    any_visible, _ = _dense_tiles(dense[:, 0], 128)
    assert empty_tile_fraction(block_mask) == pytest.approx(1.0 - any_visible.float().mean().item())
    assert empty_tile_fraction(block_mask) > 0.3


@pytest.mark.slow
def test_compiled_builder_equals_the_chunked_one():
    """The CUDA path (torch.compile(create_block_mask)), compiled here for CPU: about a minute."""
    segment, block = _ids(4)
    compiled = block_diffusion_block_mask(segment, block, LAYOUT["doc"], tile=32, compiled=True)
    chunked = block_diffusion_block_mask(segment, block, LAYOUT["doc"], tile=32, compiled=False)
    for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices"):
        assert torch.equal(getattr(compiled, name), getattr(chunked, name)), name

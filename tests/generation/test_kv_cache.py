"""BlockKVCache: in-place writes at explicit positions, same attention as a DynamicCache."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from nemo_automodel_bard.generation.kv_cache import BlockKVCache
from nemo_automodel_bard.testing import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0)


def _forward(model, ids, start, cache, mask=None):
    n, q = ids.shape
    positions = torch.arange(start, start + q).expand(3, n, -1)
    if mask is None and not getattr(cache, "is_block_kv_cache", False):
        mask = torch.ones(n, 1, q, start + q, dtype=torch.bool)
    return model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True).logits


def test_overwritten_window_equals_a_clean_dynamic_cache(model):
    """Write a noisy block, then overwrite the same positions with other tokens: the result equals
    a DynamicCache that only ever saw the final tokens (stale K/V never survive), and the buffers
    keep their address (written in place)."""
    torch.manual_seed(0)
    prompt, noisy, final, nxt = (torch.randint(10, 200, (2, q)) for q in (6, 4, 4, 4))
    cache = BlockKVCache(model.config.text_config.num_hidden_layers, batch_size=2, max_length=14)
    full = torch.ones(2, 1, 6, 6, dtype=torch.bool)
    cache.set_window(0, 6, full_view=False, device=torch.device("cpu"))
    _forward(model, prompt, 0, cache, mask=full)
    address = cache.layers[0].keys.data_ptr()
    cache.set_window(6, 10, full_view=False, device=torch.device("cpu"))
    _forward(model, noisy, 6, cache)
    cache.set_window(6, 10, full_view=False, device=torch.device("cpu"))
    _forward(model, final, 6, cache)
    cache.set_window(10, 14, full_view=False, device=torch.device("cpu"))
    got = _forward(model, nxt, 10, cache)
    assert cache.layers[0].keys.data_ptr() == address

    reference = DynamicCache(config=model.config.get_text_config())
    for ids, start in ((prompt, 0), (final, 6)):
        _forward(model, ids, start, reference)
    expected = _forward(model, nxt, 10, reference)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_full_view_with_mask_equals_exact_view(model):
    """The fixed-shape view (whole buffer, unwritten columns masked) gives the exact view's logits."""
    torch.manual_seed(1)
    prompt, block = torch.randint(10, 200, (1, 5)), torch.randint(10, 200, (1, 3))
    results = []
    for full_view in (False, True):
        cache = BlockKVCache(model.config.text_config.num_hidden_layers, batch_size=1, max_length=12)
        cache.set_window(0, 5, full_view=False, device=torch.device("cpu"))
        _forward(model, prompt, 0, cache, mask=torch.ones(1, 1, 5, 5, dtype=torch.bool))
        cache.set_window(5, 8, full_view=full_view, device=torch.device("cpu"))
        mask = None
        if full_view:
            mask = torch.zeros(1, 1, 3, 12, dtype=torch.bool)
            mask[..., :8] = True
        results.append(_forward(model, block, 5, cache, mask=mask))
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-5)


def test_window_errors(model):
    cache = BlockKVCache(model.config.text_config.num_hidden_layers, batch_size=1, max_length=8)
    with pytest.raises(ValueError, match="outside the cache"):
        cache.set_window(4, 9, full_view=False, device=torch.device("cpu"))
    cache.set_window(0, 2, full_view=False, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="set_window"):
        _forward(model, torch.randint(10, 200, (1, 3)), 0, cache, mask=torch.ones(1, 1, 3, 2, dtype=torch.bool))

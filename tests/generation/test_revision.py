"""Token revision (``revision_threshold``): the rule checked step by step against the logits,
the exact cache, batch == alone, the step bound and argument errors.

The rule reference is written here from the definition (block_decode's module docstring): at
each step after a block's first, a committed output token of the block, not yet revised in
that block, whose probability under the step's logits is below the threshold is re-masked.
"""

from __future__ import annotations

import pytest
import torch

from nemo_automodel_bard.generation.block_decode import block_generate
from nemo_automodel_bard.generation.forward import BlockForward
from nemo_automodel_bard.testing import TINY_IDS, chat_batch, tiny_image, tiny_model, tiny_processor

MASK, EOS = TINY_IDS["mask"], TINY_IDS["eos"]
B = 4


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0)


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


def _run(model, batch, **kw):
    kw = {"max_new_tokens": 12, "block_size": B, "denoising_steps": B, "eos_token_id": EOS,
          # 0.15: this random model commits one to three of four positions per step
          "remasking_strategy": "low_confidence_dynamic", "confidence_threshold": 0.15, **kw}
    return block_generate(model, batch, return_step_stats=True, **kw)


def _spy(monkeypatch) -> list[dict]:
    """Every forward: the block's tokens as the forward saw them, its logits, block index."""
    calls = []
    original = BlockForward.__call__

    def spy(self, query_start, end, first_step):
        tokens = self.rows.tokens[:, end - B:end].clone()
        logits = original(self, query_start, end, first_step)
        calls.append({"end": end, "first": first_step, "tokens": tokens, "logits": logits.float().clone()})
        return logits

    monkeypatch.setattr(BlockForward, "__call__", spy)
    return calls


def _outputs(tokens: list[int], limit: int) -> list[bool]:
    """Positions before the budget and up to the first committed EOS."""
    out, seen_eos = [], False
    for i, t in enumerate(tokens):
        out.append(i < limit and not seen_eos)
        seen_eos = seen_eos or t == EOS
    return out


def test_remasks_follow_the_rule_step_by_step(model, processor, monkeypatch):
    batch = chat_batch(processor, ["describe it"], images=[tiny_image(4)])
    threshold = 5e-4  # committed tokens of this random model sit at 1e-4 to 8e-4: some are revised, some kept
    calls = _spy(monkeypatch)
    out, stats = _run(model, batch, revision_threshold=threshold)
    revisions, kept = 0, 0
    blocks = [[c for c in calls if c["end"] == end] for end in sorted({c["end"] for c in calls})]
    for b, steps in enumerate(blocks):
        assert steps[0]["first"] and not any(c["first"] for c in steps[1:])
        revised = [False] * B
        for s, (now, nxt) in enumerate(zip(steps, steps[1:] + [None])):
            tokens = now["tokens"][0].tolist()
            probs = now["logits"][0].softmax(-1)
            expected = [s > 0 and t != MASK and not revised[i] and o and float(probs[i, t]) < threshold
                        for i, (t, o) in enumerate(zip(tokens, _outputs(tokens, 12 - b * B)))]
            if nxt is None:  # the block's last step re-masks nothing (else the block would go on)
                assert not any(expected)
                continue
            after = nxt["tokens"][0].tolist()
            remasked = [t != MASK and a == MASK for t, a in zip(tokens, after)]
            assert remasked == expected, (b, s)
            committed = [t == MASK and a != MASK for t, a in zip(tokens, after)]
            greedy = now["logits"][0].argmax(-1).tolist()  # no banned id wins on this model
            assert all(after[i] == greedy[i] for i in range(B) if committed[i])
            revised = [r or e for r, e in zip(revised, expected)]
            revisions += sum(expected)
            kept += sum(s > 0 and t != MASK and not e for t, e in zip(tokens, expected))
    assert revisions > 0 and kept > 0  # the threshold splits this model's committed tokens
    assert stats.num_forwards[0] == len(calls)
    assert MASK not in out[0].tolist()


@pytest.mark.parametrize("threshold", [5e-4, 0.5])
def test_padded_batch_cached_equals_uncached_and_each_alone(model, processor, threshold):
    prompts, images = ["hi there", "describe the picture please", "x"], [None, tiny_image(1), tiny_image(2, size=24)]
    batch = chat_batch(processor, prompts, images=images)
    kw = {"revision_threshold": threshold, "max_new_tokens": 13}
    cached, cached_stats = _run(model, batch, **kw)
    uncached, uncached_stats = _run(model, batch, use_cache=False, **kw)
    assert torch.equal(cached, uncached)
    assert cached_stats.block_steps == uncached_stats.block_steps
    for i, (prompt, image) in enumerate(zip(prompts, images)):
        alone, alone_stats = _run(model, chat_batch(processor, [prompt], images=[image]), **kw)
        n = alone.shape[1]
        assert cached[i, :n].tolist() == alone[0].tolist() and (cached[i, n:] == EOS).all()
        assert cached_stats.block_steps[i] == alone_stats.block_steps[0]


def test_revision_costs_steps_within_twice_the_block(model, processor):
    batch = chat_batch(processor, ["describe it"], images=[tiny_image(4)])
    plain, plain_stats = _run(model, batch)
    off, off_stats = _run(model, batch, revision_threshold=0.0)
    assert torch.equal(plain, off) and plain_stats.block_steps == off_stats.block_steps
    # 0.5: every committed token of this random model is below it, so each is revised once
    _, stats = _run(model, batch, revision_threshold=0.5)
    assert all(s <= 2 * B for s in stats.block_steps[0])
    assert sum(stats.block_steps[0]) > sum(plain_stats.block_steps[0])


@pytest.mark.parametrize("kw, match", [
    ({"revision_threshold": 0.5, "remasking_strategy": "low_confidence_static"}, "needs remasking_strategy"),
    ({"revision_threshold": 1.0}, r"revision_threshold must be in \[0, 1\)"),
    ({"revision_threshold": -0.1}, r"revision_threshold must be in \[0, 1\)"),
    ({"revision_threshold": True}, r"revision_threshold must be in \[0, 1\)"),
])
def test_bad_revision_arguments_are_refused(model, processor, kw, match):
    with pytest.raises(ValueError, match=match):
        _run(model, chat_batch(processor, ["hi"]), **kw)


def test_generate_passes_revision_through(model, processor):
    batch = chat_batch(processor, ["describe it"], images=[tiny_image(4)])
    direct, _ = _run(model, batch, revision_threshold=0.5)
    via_model = model.generate(batch, max_new_tokens=12, block_size=B, denoising_steps=B, confidence_threshold=0.15,
                               eos_token_id=EOS, revision_threshold=0.5)
    assert torch.equal(direct, via_model)

"""Block-diffusion decoding: exact cache, batching, remasking, EOS, stats, argument errors.

References are independent of the code under test: the uncached decode recomputes the whole
sequence every step, batch results are compared with batch-1 runs, and the decode mask with
a pair-by-pair statement of the rules.
"""

from __future__ import annotations

import pytest
import torch

from nemo_automodel_bard.generation.block_decode import _initial_rows, block_generate, decode_attention_mask
from nemo_automodel_bard.generation.validation import resolve_options
from nemo_automodel_bard.testing import TINY_IDS, chat_batch, tiny_image, tiny_model, tiny_processor

PROMPTS = ["hi there", "describe the picture please", "x"]
IMAGES = [None, tiny_image(1), tiny_image(2, size=24)]


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0)


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


@pytest.fixture(scope="module")
def batch(processor):
    return chat_batch(processor, PROMPTS, images=IMAGES)


def _run(model, batch, **kw):
    kw.setdefault("max_new_tokens", 10)
    kw.setdefault("block_size", 4)
    kw.setdefault("denoising_steps", 4)
    kw.setdefault("eos_token_id", TINY_IDS["eos"])
    return block_generate(model, batch, return_step_stats=True, **kw)


def test_decode_mask_matches_brute_force(model, batch):
    B = 4
    opts = resolve_options(
        model, max_new_tokens=12, block_size=B, denoising_steps=4, temperature=0.0, top_k=0, top_p=1.0,
        remasking_strategy="low_confidence_static", confidence_threshold=0.5, mask_token_id=None, eos_token_id=None,
    )
    rows, P = _initial_rows(model, dict(batch), opts)
    lengths = batch["attention_mask"].sum(1).tolist()
    for b, start in [(0, 0), (1, P), (2, P + 2 * B)]:  # fused prefill, fused commit, later step
        end = P + (b + 1) * B
        mask = decode_attention_mask(rows.segment, rows.block, start=start, end=end, block_size=B)
        for i, L in enumerate(lengths):
            pad = P - L

            def kind(t):  # ("pad"|"prompt"|"resp", index)
                return ("pad", t) if t < pad else ("prompt", t - pad) if t < P else ("resp", t - P)

            for q in range(start, end):
                for k in range(end):
                    (kq, iq), (kk, ik) = kind(q), kind(k)
                    if kq == "pad":
                        expected = q == k
                    elif kk == "pad":
                        expected = False
                    elif kq == "prompt":  # block-causal prompt from the first real token (D3)
                        expected = kk == "prompt" and ik // B <= iq // B
                    elif iq // B < b:  # committed (clean) response block: never sees the noisy block
                        expected = kk == "prompt" or ik // B <= iq // B
                    else:  # the noisy block b: prompt, committed blocks, itself
                        expected = kk == "prompt" or ik // B <= b
                    assert bool(mask[i, q - start, k]) == expected, (i, b, q, k)


@pytest.mark.parametrize("strategy, threshold", [("low_confidence_static", 0.5), ("low_confidence_dynamic", 0.02)])
@pytest.mark.parametrize("with_image", [False, True])
def test_cached_equals_uncached(model, processor, strategy, threshold, with_image):
    batch = chat_batch(processor, ["describe it"], images=[tiny_image(4)] if with_image else None)
    kw = dict(remasking_strategy=strategy, confidence_threshold=threshold, max_new_tokens=14, block_size=4)
    cached, cached_stats = _run(model, batch, **kw)
    uncached, uncached_stats = _run(model, batch, use_cache=False, **kw)
    assert torch.equal(cached, uncached)
    assert cached_stats.block_steps == uncached_stats.block_steps
    if strategy == "low_confidence_dynamic":  # the dynamic path must actually commit several tokens at once
        assert max(max(f) for f in cached_stats.tokens_per_forward) > 1


def test_batch_of_three_equals_each_alone(model, processor, batch):
    out, stats = _run(model, batch, remasking_strategy="low_confidence_dynamic", confidence_threshold=0.02)
    for i, (prompt, image) in enumerate(zip(PROMPTS, IMAGES)):
        alone, alone_stats = _run(
            model, chat_batch(processor, [prompt], images=[image]),
            remasking_strategy="low_confidence_dynamic", confidence_threshold=0.02,
        )
        n = alone.shape[1]
        assert out[i, :n].tolist() == alone[0].tolist()
        assert (out[i, n:] == TINY_IDS["eos"]).all()
        assert stats.block_steps[i] == alone_stats.block_steps[0]
        assert stats.tokens_per_forward[i] == alone_stats.tokens_per_forward[0]


def test_static_one_token_per_forward(model, batch):
    out, stats = _run(model, batch, remasking_strategy="low_confidence_static", block_size=4, denoising_steps=4)
    for i in range(len(PROMPTS)):
        # every block takes all 4 steps, except that a block holding EOS may stop early
        assert all(steps == 4 for steps in stats.block_steps[i][:-1]) and stats.block_steps[i][-1] <= 4
        assert set(stats.tokens_per_forward[i]) <= {0, 1}
        assert stats.num_tokens[i] == sum(stats.tokens_per_forward[i])


def test_dynamic_threshold_zero_commits_a_block_per_forward(model, batch):
    out, stats = _run(model, batch, remasking_strategy="low_confidence_dynamic", confidence_threshold=0.0, max_new_tokens=12)
    assert all(steps == [1, 1, 1] for steps in stats.block_steps)
    assert stats.batch_forwards == 3 and out.shape == (3, 12)
    assert all(t == [4, 4, 4] for t in stats.tokens_per_forward)


def test_eos_truncation_and_stats(model, batch):
    free, _ = _run(model, batch, max_new_tokens=12)
    # Use the token the model produces at position 5 of sample 0 as EOS: that sample must stop there.
    eos = int(free[0, 5])
    first = free[0].tolist().index(eos)
    out, stats = _run(model, batch, max_new_tokens=12, eos_token_id=eos)
    assert out[0, : first + 1].tolist() == free[0, : first + 1].tolist()
    assert (out[0, first + 1 :] == eos).all()
    assert stats.num_tokens[0] == first + 1
    assert len(stats.block_steps[0]) == first // 4 + 1
    for i in range(len(PROMPTS)):
        row = out[i].tolist()
        length = row.index(eos) + 1 if eos in row else len(row)
        assert stats.num_tokens[i] == length == sum(stats.tokens_per_forward[i])
        assert stats.num_forwards[i] == sum(stats.block_steps[i]) == len(stats.tokens_per_forward[i])


def test_max_new_tokens_not_a_multiple_of_block_size(model, batch):
    out, stats = _run(model, batch, max_new_tokens=6, block_size=4)
    assert out.shape == (3, 6)
    assert [len(s) for s in stats.block_steps] == [2, 2, 2]
    assert stats.num_tokens == [6, 6, 6]


def test_mask_token_never_committed(model, batch):
    out, _ = _run(model, batch, temperature=1.5, generator=torch.Generator().manual_seed(0), max_new_tokens=16)
    assert not (out == model.config.mask_token_id).any()


def test_sampling_is_reproducible_with_a_generator(model, batch):
    def sample(seed):
        out, _ = _run(model, batch, temperature=1.0, top_k=50, top_p=0.9, generator=torch.Generator().manual_seed(seed))
        return out

    assert torch.equal(sample(1), sample(1))
    assert not torch.equal(sample(1), sample(2))


def test_streaming_callable_and_text_streamer(model, processor, batch):
    from transformers import TextStreamer

    received = {}
    out, _ = _run(model, batch, streamer=lambda b, toks: received.setdefault(b, toks))
    for i in range(len(PROMPTS)):
        streamed = [t for b in sorted(received) for t in received[b][i]]
        assert streamed == out[i, : len(streamed)].tolist() and len(streamed) >= 1

    class Capture(TextStreamer):
        text = ""

        def on_finalized_text(self, text, stream_end=False):
            Capture.text += text

    single = chat_batch(processor, ["hello"])
    out, _ = _run(model, single, streamer=Capture(processor.tokenizer, skip_prompt=True))
    assert Capture.text == processor.tokenizer.decode(out[0])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(block_size=0), "block_size"),
        (dict(denoising_steps=0), "denoising_steps"),
        (dict(remasking_strategy="low_confidence_static", denoising_steps=5, block_size=4), "denoising_steps"),
        (dict(confidence_threshold=1.5), "confidence_threshold"),
        (dict(confidence_threshold=-0.1), "confidence_threshold"),
        (dict(remasking_strategy="random"), "remasking_strategy"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(temperature=-1.0), "temperature"),
        (dict(mask_token_id=10_000), "mask_token_id"),
        (dict(mask_token_id=TINY_IDS["eos"]), "mask_token_id"),
    ],
)
def test_bad_arguments_raise(model, batch, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _run(model, batch, **kwargs)


def test_missing_mask_token_in_config_raises(batch):
    model = tiny_model(mask_token_id=None)
    with pytest.raises(ValueError, match="mask_token_id"):
        _run(model, batch)
    out, _ = _run(model, batch, mask_token_id=TINY_IDS["mask"], max_new_tokens=4)  # the override works
    assert out.shape[0] == 3


def test_image_count_mismatch_raises(model, processor):
    batch = dict(chat_batch(processor, ["a", "b"], images=[tiny_image(1), tiny_image(2)]))
    batch["image_grid_thw"] = batch["image_grid_thw"][:1]
    with pytest.raises(ValueError, match="image tokens"):
        _run(model, batch)
    batch.pop("image_grid_thw"), batch.pop("pixel_values")
    with pytest.raises(ValueError, match="image tokens"):
        _run(model, batch)


def test_right_padding_raises(model, processor):
    processor.tokenizer.padding_side = "right"
    try:
        batch = processor(text=["ab", "abcdef"], padding=True, return_tensors="pt")
    finally:
        processor.tokenizer.padding_side = "left"
    with pytest.raises(ValueError, match="left-padded"):
        _run(model, batch)


def test_video_prompt_cached_equals_uncached(model, processor):
    import numpy as np

    frames = (np.random.RandomState(0).rand(4, 16, 16, 3) * 255).astype("uint8")
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "what happens"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    batch = processor(text=[text], videos=[frames], return_tensors="pt", videos_kwargs={"do_sample_frames": False})
    assert int((batch["input_ids"] == TINY_IDS["video"]).sum()) > 0
    cached, _ = _run(model, batch, max_new_tokens=8, denoising_steps=2, remasking_strategy="low_confidence_static")
    uncached, _ = _run(model, batch, max_new_tokens=8, denoising_steps=2, remasking_strategy="low_confidence_static",
                       use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("strategy", ["low_confidence_static", "low_confidence_dynamic"])
def test_block_stops_once_the_output_is_final(model, processor, batch, monkeypatch, strategy):
    """After EOS (or the token budget) inside a block, the rest of the block is not denoised:
    same output as denoising every position; the dynamic strategy runs fewer forwards, and a
    sample's step count ends when its output is final (static runs its fixed step budget)."""
    import nemo_automodel_bard.generation.block_decode as block_decode

    free, _ = _run(model, batch, max_new_tokens=12, block_size=8, denoising_steps=8)
    eos = int(free[0, 1])  # an early token of sample 0, so EOS lands early in its first block
    kw = dict(max_new_tokens=10, block_size=8, denoising_steps=8, eos_token_id=eos, remasking_strategy=strategy)
    alone = chat_batch(processor, PROMPTS[:1], images=IMAGES[:1])
    out, stats = _run(model, alone, **kw)
    every_position = lambda tokens, eos_ids, limit: torch.ones_like(tokens, dtype=torch.bool)  # noqa: E731
    monkeypatch.setattr(block_decode, "_output_positions", every_position)
    full_out, full_stats = _run(model, alone, **kw)
    assert torch.equal(out, full_out)
    assert stats.num_tokens == full_stats.num_tokens
    assert stats.num_forwards[0] < 8  # one block (EOS in it), final before the last step
    if strategy == "low_confidence_dynamic":
        assert stats.batch_forwards == stats.num_forwards[0] < full_stats.batch_forwards
    else:
        assert stats.batch_forwards == full_stats.batch_forwards == 8


@pytest.mark.parametrize("block_size, steps", [(2, 2), (8, 4)])
@pytest.mark.parametrize("strategy, threshold", [("low_confidence_static", 0.5), ("low_confidence_dynamic", 0.02)])
def test_padded_mixed_batch_cached_equals_uncached(model, batch, block_size, steps, strategy, threshold):
    """Left-padded batch mixing text-only and image prompts: the static cache, the fused commit
    and the masked steady steps against the uncached reference."""
    kw = dict(max_new_tokens=13, block_size=block_size, denoising_steps=steps, remasking_strategy=strategy,
              confidence_threshold=threshold)
    cached, cached_stats = _run(model, batch, **kw)
    uncached, uncached_stats = _run(model, batch, use_cache=False, **kw)
    assert torch.equal(cached, uncached)
    assert cached_stats.block_steps == uncached_stats.block_steps
    assert cached_stats.tokens_per_forward == uncached_stats.tokens_per_forward


def _count_syncs(model, batch, n_blocks, strategy):
    from nemo_automodel_bard.generation.syncs import HostSyncCounter

    with HostSyncCounter() as counter:
        _, stats = _run(model, batch, max_new_tokens=4 * n_blocks, block_size=4, denoising_steps=4,
                        remasking_strategy=strategy, confidence_threshold=0.02, eos_token_id=TINY_IDS["vision_end"])
    assert stats.num_tokens == [4 * n_blocks] * len(stats.num_tokens)  # every block decoded (no EOS)
    return counter.total, stats.batch_forwards


def test_static_decoding_reads_the_device_once_per_block(model, batch):
    """Setup (prompt checks, mRoPE, vision) costs a constant; each further block exactly one read."""
    few, few_forwards = _count_syncs(model, batch, 2, "low_confidence_static")
    many, many_forwards = _count_syncs(model, batch, 6, "low_confidence_static")
    assert many_forwards - few_forwards == 16  # 4 more blocks x 4 steps: no sync among them
    assert many - few == 4


def test_dynamic_decoding_reads_once_per_step(model, batch):
    few, few_forwards = _count_syncs(model, batch, 2, "low_confidence_dynamic")
    many, many_forwards = _count_syncs(model, batch, 6, "low_confidence_dynamic")
    extra_steps = many_forwards - few_forwards
    # one "any row still working?" flag per step (plus the final one that ends each block) and one read per block
    assert many - few <= extra_steps + 2 * 4


def test_steady_step_passes_no_mask_without_padding(model, processor, batch, monkeypatch):
    """Unpadded rows: only the prefill and fused-commit forwards carry a mask (so SDPA may use
    flash and GQA needs no K/V repeat); padded rows need one every step."""
    masks = []
    original = type(model).forward

    def spy(self, *args, **kwargs):
        masks.append(kwargs.get("attention_mask") is None)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", spy)
    _run(model, chat_batch(processor, ["describe it"]), max_new_tokens=8, block_size=4, denoising_steps=4,
         remasking_strategy="low_confidence_static")
    assert masks == [False, True, True, True, False, True, True, True]
    masks.clear()
    _run(model, batch, max_new_tokens=8, block_size=4, denoising_steps=4, remasking_strategy="low_confidence_static")
    assert masks == [False] * 8


def test_compiled_steps_match_eager(model, batch):
    """The fused-commit and steady steps trace as single graphs (fullgraph: no data-dependent
    Python inside) over the fixed-shape cache view, and decode exactly as eager."""
    kw = dict(max_new_tokens=10, block_size=4, denoising_steps=4, remasking_strategy="low_confidence_dynamic",
              confidence_threshold=0.02)
    eager, eager_stats = _run(model, batch, **kw)
    compiled, compiled_stats = _run(model, batch, compile={"backend": "eager", "fullgraph": True}, **kw)
    assert torch.equal(eager, compiled)
    assert eager_stats.tokens_per_forward == compiled_stats.tokens_per_forward


@pytest.mark.slow
def test_inductor_compiled_decode_matches_eager(model, batch):
    """generate(compile=True) with inductor on CPU (minutes of compilation on a small machine)."""
    kw = dict(max_new_tokens=10, block_size=4, denoising_steps=4, remasking_strategy="low_confidence_static")
    eager, _ = _run(model, batch, **kw)
    compiled, _ = _run(model, batch, compile=True, **kw)
    assert torch.equal(eager, compiled)


def test_block_size_and_prompt_attention_default_to_the_config(processor, batch):
    causal = tiny_model(block_size=2, prompt_attention="causal")
    block = tiny_model(block_size=2, prompt_attention="block")
    kw = dict(max_new_tokens=6, denoising_steps=2, eos_token_id=TINY_IDS["eos"], return_step_stats=True)
    out, stats = block_generate(causal, batch, **kw)
    assert all(len(s) == 3 for s in stats.block_steps)  # block 2 from the config: 3 blocks of 6 tokens
    explicit, _ = block_generate(block, batch, prompt_attention="causal", block_size=2, **kw)
    assert torch.equal(out, explicit)  # same weights (seed 0): the override picks the causal prompt
    default_block, _ = block_generate(block, batch, **kw)
    assert not torch.equal(default_block, out)  # and the prompt mode matters on these prompts
    with pytest.raises(ValueError, match="prompt_attention"):
        block_generate(block, batch, prompt_attention="full", **kw)


def test_unpadded_fast_mask_equals_layout_mask(model, processor):
    """The directly built mask of unpadded fused-commit / steady forwards (with and without the
    fixed-shape extra columns) equals the general layout mask."""
    from nemo_automodel_bard.generation.forward import BlockForward, decode_attention_mask

    batch = dict(chat_batch(processor, ["describe it", "describe it"]))
    assert bool(batch["attention_mask"].bool().all())
    opts = resolve_options(
        model, max_new_tokens=12, block_size=4, denoising_steps=4, temperature=0.0, top_k=0, top_p=1.0,
        remasking_strategy="low_confidence_static", confidence_threshold=0.5, mask_token_id=None, eos_token_id=None,
    )
    rows, P = _initial_rows(model, batch, opts)
    forward = BlockForward(model, rows, batch, opts, P + 12, use_cache=True, compiled=None)
    for start, end in [(P, P + 8), (P + 4, P + 8), (P + 4, P + 12), (P + 8, P + 12)]:
        expected = decode_attention_mask(rows.segment, rows.block, start=start, end=end, block_size=4)[:, None]
        assert torch.equal(forward._mask(start, end, end), expected)
        padded = forward._mask(start, end, P + 12)
        assert torch.equal(padded[..., :end], expected) and not padded[..., end:].any()


@pytest.mark.parametrize("strategy", ["low_confidence_static", "low_confidence_dynamic"])
def test_output_without_stats_equals_output_with_stats(model, batch, strategy):
    """Commit steps are only recorded for the statistics; the tokens do not depend on it."""
    kw = dict(max_new_tokens=10, block_size=4, denoising_steps=4, eos_token_id=TINY_IDS["eos"],
              remasking_strategy=strategy)
    with_stats, _ = block_generate(model, batch, return_step_stats=True, **kw)
    assert torch.equal(block_generate(model, batch, **kw), with_stats)


def test_dynamic_threshold_one_falls_back_to_the_static_commits(model, batch):
    """No confidence exceeds 1.0, so every dynamic step takes the static count: the same tokens
    and forwards as the static strategy (what benchmarks/decode.py uses to time the flag read)."""
    kw = dict(max_new_tokens=12, block_size=4, denoising_steps=2, eos_token_id=TINY_IDS["eos"])
    static, static_stats = block_generate(model, batch, remasking_strategy="low_confidence_static",
                                          return_step_stats=True, **kw)
    dynamic, dynamic_stats = block_generate(model, batch, remasking_strategy="low_confidence_dynamic",
                                            confidence_threshold=1.0, return_step_stats=True, **kw)
    assert torch.equal(static, dynamic)
    assert static_stats.tokens_per_forward == dynamic_stats.tokens_per_forward

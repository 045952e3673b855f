"""Toy evaluation metrics against a hand-computed example, and the AR decoder's counting."""

from __future__ import annotations

import pytest

from nemo_automodel_bard.toy.evaluate import DecodeResult, exact_match, summarize, token_accuracy


def test_exact_match_is_word_level():
    assert exact_match(" 1  2 3 ", "1 2 3")
    assert not exact_match("1 2", "1 2 3")
    assert not exact_match("1 3 2", "1 2 3")


def test_token_accuracy_counts_missing_and_extra_words():
    assert token_accuracy("1 2 3", "1 2 3") == 1.0
    assert token_accuracy("1 9 3", "1 2 3") == pytest.approx(2 / 3)
    assert token_accuracy("1 2", "1 2 3 4") == pytest.approx(2 / 4)  # two missing
    assert token_accuracy("1 2 3 4 5", "1 2 3 4") == pytest.approx(4 / 5)  # one extra
    assert token_accuracy("", "") == 1.0
    assert token_accuracy("", "1") == 0.0


def test_summarize_hand_computed_example():
    refs = ["1 2 3", "red blue", "4 4"]
    tasks = ["read", "colours", "read"]
    results = [
        DecodeResult(text="1 2 3", tokens=4, forwards=2, seconds=0.5),   # exact; 3 words + EOS
        DecodeResult(text="red red", tokens=3, forwards=3, seconds=0.25),  # token acc 1/2
        DecodeResult(text="4", tokens=2, forwards=1, seconds=0.25),       # token acc 1/2
    ]
    m = summarize("x", refs, results, tasks, settings={"block_size": 4})
    assert m.samples == 3
    assert m.exact_match == pytest.approx(1 / 3)
    assert m.token_accuracy == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert (m.tokens, m.forwards) == (9, 6)
    assert m.tpf == pytest.approx(1.5)
    assert m.seconds == pytest.approx(1.0)
    assert m.tokens_per_s == pytest.approx(9.0)
    assert m.per_task == {"colours": 0.0, "read": 0.5}
    assert m.settings == {"block_size": 4}


@pytest.fixture(scope="module")
def shipped_models(tmp_path_factory):
    """The shipped AR checkpoint, a Bard-VL converted from it, its processor, and 6 test prompts."""
    from nemo_automodel_bard.models.bard_vl.convert import convert
    from nemo_automodel_bard.toy.evaluate import load_ar, load_bard, load_examples
    from nemo_automodel_bard.toy.pipeline import ASSET_AR
    from nemo_automodel_bard.toy.task import generate_splits

    root = tmp_path_factory.mktemp("toy_eval")
    generate_splits(root / "data", seed=0, sizes={"train": 0, "val": 0, "test": 6})
    ar, processor = load_ar(ASSET_AR)
    bard_path = convert(ASSET_AR, root / "bard", mask_token_id=7, mask_token="<|mask|>", block_size=4)
    return ar, load_bard(bard_path), processor, load_examples(root / "data" / "test.jsonl")


def test_batched_decoding_equals_batch_1(shipped_models):
    """evaluate() batches prompts (left-padded); outputs, tokens and forwards must not change."""
    from nemo_automodel_bard.toy.evaluate import ar_decoder, bard_decoder, evaluate

    ar, bard, processor, examples = shipped_models
    settings = dict(block_size=4, denoising_steps=4, confidence_threshold=0.5, temperature=0.0)
    for decode in (ar_decoder(ar, processor, 24), bard_decoder(bard, processor, 24, **settings)):
        alone = [decode([e])[0] for e in examples]
        batched = decode(examples)
        assert [r.text for r in batched] == [r.text for r in alone]
        assert [(r.tokens, r.forwards) for r in batched] == [(r.tokens, r.forwards) for r in alone]
        m = evaluate("x", decode, examples, batch_size=4, progress=False)
        assert m.hits == [int(exact_match(r.text, e["answer"])) for r, e in zip(alone, examples)]
        assert m.settings["batch_size"] == 4 and m.samples == 6


def test_timed_speedups_reports_both_batch_sizes(shipped_models):
    from nemo_automodel_bard.toy.evaluate import ar_decoder, bard_decoder, timed_speedups

    ar, bard, processor, examples = shipped_models
    settings = dict(block_size=4, denoising_steps=4, confidence_threshold=0.5, temperature=0.0)
    out = timed_speedups(ar_decoder(ar, processor, 16), bard_decoder(bard, processor, 16, **settings), examples[:4],
                         batch_sizes=(1, 2), repeats=2)
    assert set(out) == {"batch_1", "batch_2"}
    for entry in out.values():
        assert len(entry["speedup"]["values"]) == 2 and entry["speedup"]["median"] > 0
        assert entry["ar_tokens_per_s"]["median"] > 0 and entry["prompts"] == 4

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

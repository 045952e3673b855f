"""Toy evaluation statistics against exact references: the bootstrap against full enumeration
of all resamples and against the normal approximation, threshold choice on val rows, and
interleaved timing with fake decoders on a fake clock."""

from __future__ import annotations

import itertools
import math

import pytest

from nemo_automodel_bard.toy.stats import (
    choose_threshold,
    interleaved_timing,
    median_iqr,
    paired_bootstrap_diff,
    quantiles,
)


def _exact_bootstrap_quantiles(d: list[float], qs: list[float]) -> list[float]:
    """Quantiles of the mean over ALL n^n equally likely resamples (the bootstrap distribution itself)."""
    n = len(d)
    means = sorted(sum(d[i] for i in idx) / n for idx in itertools.product(range(n), repeat=n))
    return quantiles(means, qs)


def test_bootstrap_matches_full_enumeration_of_resamples():
    bard = [1, 1, 0, 1, 0, 1, 1]
    ar = [1, 0, 1, 1, 1, 1, 1]  # differences: 0, +1, -1, 0, -1, 0, 0
    d = [b - a for b, a in zip(bard, ar)]
    low, high = _exact_bootstrap_quantiles(d, [0.025, 0.975])  # 7^7 = 823,543 resamples
    ci = paired_bootstrap_diff(bard, ar, resamples=100_000, seed=1)
    assert ci["diff"] == pytest.approx(-1 / 7)
    # the sample mean moves in steps of 1/7; Monte Carlo quantiles land on the exact step
    assert ci["low"] == pytest.approx(low, abs=1e-9)
    assert ci["high"] == pytest.approx(high, abs=1e-9)
    assert ci["half_width"] == pytest.approx((high - low) / 2)


def test_bootstrap_half_width_matches_normal_approximation_and_pairing_matters():
    n = 1000
    # 80 samples only Bard gets right, 120 only AR, 700 both, 100 neither: diff -4 points
    bard = [1] * 80 + [0] * 120 + [1] * 700 + [0] * 100
    ar = [0] * 80 + [1] * 120 + [1] * 700 + [0] * 100
    ci = paired_bootstrap_diff(bard, ar, resamples=20_000, seed=0)
    d = [b - a for b, a in zip(bard, ar)]
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / n)  # the bootstrap uses the empirical (1/n) variance
    half = 1.959964 * sd / math.sqrt(n)
    assert ci["diff"] == pytest.approx(-0.04)
    assert ci["half_width"] == pytest.approx(half, rel=0.05)
    assert ci["low"] < -0.04 < ci["high"]
    # unpaired resampling ignores that the models agree on 80% of samples and is wider
    assert half < 0.85 * 1.96 * math.sqrt(0.78 * 0.22 + 0.82 * 0.18) / math.sqrt(n)


def test_bootstrap_rejects_unpaired_input():
    with pytest.raises(ValueError, match="same samples"):
        paired_bootstrap_diff([1, 0], [1])
    with pytest.raises(ValueError, match="at least one"):
        paired_bootstrap_diff([], [])


def test_median_iqr_against_numpy_style_interpolation():
    out = median_iqr([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (out["median"], out["q1"], out["q3"], out["iqr"]) == (3.0, 2.0, 4.0, 2.0)
    out = median_iqr([1.0, 2.0, 3.0, 10.0])
    assert out["median"] == pytest.approx(2.5)
    assert out["q1"] == pytest.approx(1.75) and out["q3"] == pytest.approx(4.75)


def _val_row(threshold, em, tpf):
    return {"exact_match": em, "tpf": tpf, "settings": {"confidence_threshold": threshold}}


def test_threshold_is_the_most_parallel_within_tolerance_of_the_best_val_accuracy():
    rows = [_val_row(0.3, 0.60, 9.0), _val_row(0.5, 0.695, 6.0), _val_row(0.7, 0.70, 5.0),
            _val_row(0.9, 0.705, 3.5), _val_row(0.95, 0.70, 3.0)]
    chosen = choose_threshold(rows, tolerance_points=1.0)
    assert chosen["threshold"] == 0.5  # 0.695 is within 1 point of 0.705; 0.3 is not
    assert chosen["val_best_exact_match"] == 0.705
    assert choose_threshold(rows, tolerance_points=0.0)["threshold"] == 0.9
    assert choose_threshold(rows, tolerance_points=20.0)["threshold"] == 0.3


def test_threshold_choice_reads_only_the_rows_it_is_given():
    """The val rows decide; a test row that would favour another threshold is never consulted."""
    val = [_val_row(0.5, 0.50, 6.0), _val_row(0.9, 0.70, 3.0)]
    assert choose_threshold(val)["threshold"] == 0.9
    with pytest.raises(ValueError):
        choose_threshold([])


class _FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_interleaved_timing_order_and_medians():
    clock = _FakeClock()
    calls = []
    # per-repeat extra load: repeat 1 is slow for both (a loaded machine) but the ratio holds
    load = {0: 1.0, 1: 3.0, 2: 1.0}
    state = {"rep": 0}

    def fake(name, seconds_per_prompt, tokens_per_prompt):
        def decode(chunk):
            calls.append((name, tuple(chunk)))
            clock.now += seconds_per_prompt * len(chunk) * load[state["rep"]]
            return tokens_per_prompt * len(chunk)
        return decode

    chunks = [[0, 1], [2, 3], [4]]
    decoders = {"ar": fake("ar", 0.5, 10), "bard": fake("bard", 0.25, 10)}

    class _Chunks(list):  # advances the fake load when a new repeat starts iterating
        def __iter__(self):
            it = super().__iter__()
            yield from it
            state["rep"] += 1

    timing = interleaved_timing(decoders, _Chunks(chunks), repeats=3, clock=clock)
    # the order alternates which decoder runs first, chunk after chunk
    expected = [(r, c, n) for r in range(3) for c, pair in enumerate([("ar", "bard"), ("bard", "ar"), ("ar", "bard")])
                for n in pair]
    assert timing["order"] == expected
    assert [name for name, _ in calls] == [n for _, _, n in expected]
    # both decoders see the same chunks
    assert [c for n, c in calls if n == "ar"] == [c for n, c in calls if n == "bard"]
    ar = timing["tokens_per_s"]["ar"]
    assert ar["values"] == pytest.approx([20.0, 20.0 / 3, 20.0])
    assert ar["median"] == pytest.approx(20.0)
    assert timing["tokens_per_s"]["bard"]["median"] == pytest.approx(40.0)
    assert timing["ratio"]["bard"]["values"] == pytest.approx([2.0, 2.0, 2.0])
    assert timing["ratio"]["bard"]["median"] == pytest.approx(2.0) and timing["ratio"]["bard"]["iqr"] == pytest.approx(0)


def test_interleaved_timing_uses_the_seconds_a_decoder_measured_itself():
    clock = _FakeClock()

    def self_timed(prepare: float, generate: float):
        def decode(chunk):
            clock.now += (prepare + generate) * len(chunk)  # the wall clock sees both
            return 10 * len(chunk), generate * len(chunk)  # only generate is reported
        return decode

    # same generate time, very different preparation: the ratio is the generate ratio only
    timing = interleaved_timing({"ar": self_timed(1.0, 0.5), "bard": self_timed(0.0, 0.25)}, [[0], [1, 2]],
                                repeats=2, clock=clock)
    assert timing["tokens_per_s"]["ar"]["median"] == pytest.approx(20.0)
    assert timing["ratio"]["bard"]["median"] == pytest.approx(2.0)
    # plain int answers keep the wall clock
    def wall_timed(chunk):
        clock.now += 1.0
        return 10

    plain = interleaved_timing({"ar": wall_timed}, [[0]], repeats=1, clock=clock)
    assert plain["tokens_per_s"]["ar"]["median"] == pytest.approx(10.0)

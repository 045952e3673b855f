"""Statistics of the toy evaluation: paired bootstrap of an accuracy difference, threshold
choice on val, and interleaved timing of two decoders.

* ``paired_bootstrap_diff``: both models answered the same samples, so the difference of
  their exact match is resampled *per sample* (one index draw serves both models); this
  keeps the correlation between the two models' errors, which an unpaired interval ignores
  and which makes the paired interval much narrower when the models agree on most samples.
* ``choose_threshold``: the operating threshold is picked on the val split only; the test
  split then reports it once, so the reported accuracy is not the best of several tries.
* ``interleaved_timing``: on a shared machine the load changes over seconds, so timing one
  model for a minute and then the other measures the load as much as the models. Timing
  them alternately on the same chunk of prompts exposes both to the same load; repeating
  the whole pass and taking medians (with the interquartile range as spread) keeps one
  noisy repeat from deciding the ratio.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["choose_threshold", "interleaved_timing", "median_iqr", "paired_bootstrap_diff", "quantiles"]


def paired_bootstrap_diff(a: Sequence[float], b: Sequence[float], resamples: int = 10_000, level: float = 0.95,
                          seed: int = 0) -> dict[str, float]:
    """Mean of ``a - b`` over samples with its percentile bootstrap interval.

    Args:
        a, b: per-sample scores of two models on the same samples (e.g. 0/1 exact match).
        resamples: bootstrap draws (each draws ``n`` sample indices with replacement).
        level: two-sided coverage of the interval.

    Returns:
        ``{"diff", "low", "high", "half_width", "samples", "resamples", "level"}`` (fractions, not points).
    """
    if len(a) != len(b):
        raise ValueError(f"paired bootstrap needs the same samples for both models, got {len(a)} and {len(b)} scores")
    if len(a) == 0:
        raise ValueError("paired bootstrap needs at least one sample")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    d = torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)
    n = d.numel()
    gen = torch.Generator().manual_seed(seed)
    means = []
    # chunks bound memory at ~8 MB of indices whatever n and resamples are
    per_chunk = max(1, 1_000_000 // n)
    for start in range(0, resamples, per_chunk):
        idx = torch.randint(0, n, (min(per_chunk, resamples - start), n), generator=gen)
        means.append(d[idx].mean(dim=1))
    low, high = quantiles(torch.cat(means).tolist(), [(1 - level) / 2, (1 + level) / 2])
    return {"diff": d.mean().item(), "low": low, "high": high, "half_width": (high - low) / 2,
            "samples": n, "resamples": resamples, "level": level}


def quantiles(values: Sequence[float], qs: Sequence[float]) -> list[float]:
    """Quantiles with linear interpolation between order statistics (numpy's default)."""
    if len(values) == 0:
        raise ValueError("quantiles of an empty sequence")
    t = torch.tensor(values, dtype=torch.float64)
    return torch.quantile(t, torch.tensor(list(qs), dtype=torch.float64)).tolist()


def median_iqr(values: Sequence[float]) -> dict[str, Any]:
    """``{"median", "q1", "q3", "iqr", "values"}`` of repeated measurements."""
    q1, median, q3 = quantiles(values, [0.25, 0.5, 0.75])
    return {"median": median, "q1": q1, "q3": q3, "iqr": q3 - q1, "values": list(values)}


def choose_threshold(val_rows: Sequence[dict], tolerance_points: float = 1.0) -> dict:
    """The operating point of a threshold sweep, chosen on val.

    The most parallel setting (highest TPF; ties: higher exact match) among those whose val
    exact match is within ``tolerance_points`` of the sweep's best val exact match. TPF, not
    tokens/s, ranks speed: it is a count, so the choice does not depend on the machine's load.

    Args:
        val_rows: metric dicts with ``exact_match``, ``tpf`` and ``settings["confidence_threshold"]``.
    """
    if not val_rows:
        raise ValueError("choose_threshold needs at least one val row")
    best = max(r["exact_match"] for r in val_rows)
    eligible = [r for r in val_rows if 100 * (best - r["exact_match"]) <= tolerance_points + 1e-9]
    chosen = max(eligible, key=lambda r: (r["tpf"], r["exact_match"]))
    return {"threshold": chosen["settings"]["confidence_threshold"], "val_exact_match": chosen["exact_match"],
            "val_tpf": chosen["tpf"], "val_best_exact_match": best, "tolerance_points": tolerance_points}


def interleaved_timing(decoders: dict[str, Callable[[Any], int]], chunks: Sequence[Any], repeats: int,
                       clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Time several decoders alternately over the same chunks, ``repeats`` times.

    For every chunk each decoder runs once, back to back; the order rotates by one position
    from chunk to chunk so that no decoder always runs first after the previous chunk.

    Args:
        decoders: name -> callable decoding one chunk and returning the tokens it generated, or
            ``(tokens, seconds)`` when it times itself (e.g. the ``generate`` call only, without
            building the prompt tensors); otherwise the clock times the whole call.
        chunks: the prompt chunks (e.g. lists of examples of the batch size being timed).
        repeats: passes over all chunks; each pass gives one tokens/s per decoder.
        clock: seconds (injectable for tests).

    Returns:
        ``{"order": [(repeat, chunk, name), ...], "tokens_per_s": {name: median_iqr},
        "ratio": {name: median_iqr of name's / the first decoder's tokens/s per repeat}}``.
    """
    if repeats < 1 or not chunks or not decoders:
        raise ValueError("interleaved_timing needs decoders, chunks and repeats >= 1")
    names = list(decoders)
    order: list[tuple[int, int, str]] = []
    rates: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(repeats):
        tokens = dict.fromkeys(names, 0)
        seconds = dict.fromkeys(names, 0.0)
        for c, chunk in enumerate(chunks):
            shift = c % len(names)
            for name in names[shift:] + names[:shift]:
                order.append((rep, c, name))
                start = clock()
                out = decoders[name](chunk)
                elapsed = clock() - start
                if isinstance(out, tuple):
                    out, elapsed = out
                tokens[name] += out
                seconds[name] += elapsed
        for name in names:
            rates[name].append(tokens[name] / seconds[name] if seconds[name] > 0 else 0.0)
    base = names[0]
    ratio = {name: median_iqr([r / b if b else 0.0 for r, b in zip(rates[name], rates[base])]) for name in names[1:]}
    return {"order": order, "tokens_per_s": {name: median_iqr(v) for name, v in rates.items()}, "ratio": ratio}

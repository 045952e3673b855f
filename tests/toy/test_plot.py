"""toy/plot.py: the axes name the split and the batch size the rows were measured at."""

from __future__ import annotations

import pytest

from nemo_automodel_bard.toy.plot import _batch_label, plot_tradeoff


def _row(name: str, batch_size: int, threshold: float | None = None) -> dict:
    settings = {"batch_size": batch_size}
    if threshold is not None:
        settings["confidence_threshold"] = threshold
    return {"name": name, "tokens_per_s": 10.0 * batch_size, "exact_match": 0.5, "settings": settings}


def test_batch_label_reads_the_rows_settings():
    assert _batch_label([_row("AR", 16), _row("b32@0.9", 16, 0.9)]) == "batch 16"
    assert _batch_label([_row("AR", 1), _row("b32@0.9", 8, 0.9)]) == "batch 1/8"
    assert _batch_label([{"name": "AR", "tokens_per_s": 1.0, "exact_match": 1.0, "settings": {}}]) == "batch 1"


def test_axis_labels_name_split_and_batch(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.figure

    labels = {}
    original = matplotlib.figure.Figure.savefig

    def spy(fig, *args, **kwargs):
        ax = fig.axes[0]
        labels.update(x=ax.get_xlabel(), y=ax.get_ylabel())
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    path = plot_tradeoff([_row("AR", 16), _row("b32@0.9", 16, 0.9), _row("b32@0.5", 16, 0.5)],
                         tmp_path / "plot.png", split="val")
    assert path.stat().st_size > 0
    assert labels == {"x": "decode tokens/s (batch 16, CPU)", "y": "exact match on val (%)"}

"""``accuracy_vs_throughput.png``: exact match against decode tokens/s, one curve per Bard checkpoint."""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

__all__ = ["plot_tradeoff"]


def plot_tradeoff(results: list[dict], path: str | Path, split: str = "test") -> Path | None:
    """Plot metric dicts (``name`` ``LABEL@THRESHOLD`` or ``AR``) of ``split``; the AR point is a star.

    The x axis names the decoding batch size the rows were measured at (their ``settings``).

    Without matplotlib (it is only in the ``dev`` extra) the plot is skipped with a warning
    and None is returned: the numbers (eval.json, the table) are the result, the plot a view.
    """
    try:
        import matplotlib
    except ImportError:
        print(f"warning: matplotlib is not installed; skipped the plot {path} (pip install matplotlib)", file=sys.stderr)
        return None

    matplotlib.use("Agg")  # headless: no display on CI machines
    import matplotlib.pyplot as plt

    curves: dict[str, list[dict]] = defaultdict(list)
    for row in results:
        label = row["name"].split("@")[0]
        curves[label].append(row)
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, rows in curves.items():
        xs = [r["tokens_per_s"] for r in rows]
        ys = [100 * r["exact_match"] for r in rows]
        if label == "AR":
            ax.scatter(xs, ys, marker="*", s=200, color="black", zorder=3, label="AR (KV cache)")
            continue
        order = sorted(range(len(rows)), key=lambda i: xs[i])
        ax.plot([xs[i] for i in order], [ys[i] for i in order], marker="o", label=label)
        for r, x, y in zip(rows, xs, ys):
            ax.annotate(f"{r['settings'].get('confidence_threshold', '')}", (x, y), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel(f"decode tokens/s ({_batch_label(results)}, CPU)")
    ax.set_ylabel(f"exact match on {split} (%)")
    ax.set_title("toy task: accuracy vs throughput (labels: confidence threshold)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _batch_label(results: list[dict]) -> str:
    sizes = sorted({(r.get("settings") or {}).get("batch_size", 1) for r in results})
    return f"batch {sizes[0]}" if len(sizes) == 1 else "batch " + "/".join(map(str, sizes))

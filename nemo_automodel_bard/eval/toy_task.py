"""An lmms-eval task over the toy test split, for running ``--model bard_vl`` offline.

``write_task(data_dir, out_dir)`` writes ``out_dir/bard_toy.yaml`` and ``out_dir/bard_toy_utils.py``
(a task that reads ``data_dir/test.jsonl`` through the ``datasets`` json loader and scores
word-level exact match); then::

    python -m nemo_automodel_bard.eval --model bard_vl --include_path OUT_DIR --tasks bard_toy \\
        --model_args pretrained=CKPT,block_size=32,confidence_threshold=0.9,device=cpu --batch_size 1

No network is used: the data are local files and the model is a local checkpoint.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["TASK_NAME", "main", "write_task"]

TASK_NAME = "bard_toy"

_UTILS = '''"""Document hooks of the bard_toy lmms-eval task (written by nemo_automodel_bard.eval.toy_task)."""
from pathlib import Path

from PIL import Image

DATA_DIR = Path({data_dir!r})


def _user(doc):
    return next(m for m in doc["messages"] if m["role"] == "user")["content"]


def doc_to_visual(doc):
    return [Image.open(DATA_DIR / p["image"]).convert("RGB") for p in _user(doc) if p.get("image")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return " ".join(p["text"] for p in _user(doc) if p.get("text"))


def process_results(doc, results):
    return {{"exact_match": float(results[0].split() == doc["answer"].split())}}
'''


def _yaml(data_dir: Path, max_new_tokens: int) -> str:
    # JSON is valid YAML, except for lmms-eval's "!function" tags, which are added as plain lines.
    head = {
        "task": TASK_NAME,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_dir / "test.jsonl")}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_target": "answer",
        # Greedy, no stop strings: the answer ends at EOS, exactly as `bard eval` decodes it.
        "generation_kwargs": {"max_new_tokens": max_new_tokens, "temperature": 0, "until": []},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
    }
    lines = [f"{key}: {json.dumps(value)}" for key, value in head.items()]
    lines += [f"{hook}: !function bard_toy_utils.{hook}" for hook in ("doc_to_visual", "doc_to_text", "process_results")]
    return "\n".join(lines) + "\n"


def write_task(data_dir: str | Path, out_dir: str | Path, max_new_tokens: int = 32) -> Path:
    """Write the task YAML + hooks for ``data_dir/test.jsonl``; returns the YAML path."""
    data_dir, out_dir = Path(data_dir).resolve(), Path(out_dir)
    if not (data_dir / "test.jsonl").is_file():
        raise FileNotFoundError(f"{data_dir / 'test.jsonl'} not found (write it with nemo_automodel_bard.toy.task)")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bard_toy_utils.py").write_text(_UTILS.format(data_dir=str(data_dir)))
    path = out_dir / f"{TASK_NAME}.yaml"
    path.write_text(_yaml(data_dir, max_new_tokens))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write the bard_toy lmms-eval task for a toy data folder")
    parser.add_argument("--data", required=True, help="folder with test.jsonl + images/")
    parser.add_argument("--out", required=True, help="folder to pass as lmms-eval's --include_path")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="as `bard eval --max-new-tokens`")
    args = parser.parse_args(argv)
    print(write_task(args.data, args.out, args.max_new_tokens))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

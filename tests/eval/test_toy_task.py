"""The bard_toy lmms-eval task files: hooks read the toy split (lmms-eval runs them in test_lmms_eval_run.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from nemo_automodel_bard.eval.toy_task import write_task
from nemo_automodel_bard.toy.task import generate_splits


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy_data")
    generate_splits(out, seed=3, sizes={"train": 2, "val": 2, "test": 3})
    return out


def _load_hooks(task_dir: Path):
    spec = importlib.util.spec_from_file_location("bard_toy_utils", task_dir / "bard_toy_utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hooks_read_the_split(data_dir, tmp_path):
    yaml_path = write_task(data_dir, tmp_path / "task", max_new_tokens=12)
    text = yaml_path.read_text()
    assert "task: \"bard_toy\"" in text and str(data_dir.resolve() / "test.jsonl") in text
    assert '"max_new_tokens": 12' in text
    hooks = _load_hooks(tmp_path / "task")
    doc = json.loads((data_dir / "test.jsonl").read_text().splitlines()[0])
    (image,) = hooks.doc_to_visual(doc)
    user = doc["messages"][0]["content"]
    assert image.size[0] == 32 * len(doc["answer"].split()) or image.size[1] == 32
    assert hooks.doc_to_text(doc) == next(p["text"] for p in user if p["type"] == "text")
    assert hooks.process_results(doc, [f"  {doc['answer']} "]) == {"exact_match": 1.0}
    assert hooks.process_results(doc, ["wrong"]) == {"exact_match": 0.0}


def test_write_task_needs_test_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="test.jsonl"):
        write_task(tmp_path, tmp_path / "task")

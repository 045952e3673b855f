"""examples/digits_dataset.py: scikit-learn's scanned digits in the messages schema, and `bard demo --data` on them."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
digits_dataset = pytest.importorskip("digits_dataset")
pytest.importorskip("sklearn")


def test_rows_are_the_scans_and_their_labels(tmp_path):
    from sklearn.datasets import load_digits

    data = load_digits()
    paths = digits_dataset.write_dataset(tmp_path, test=97, limit=20)
    train = [json.loads(line) for line in paths["train"].read_text().splitlines()]
    test = [json.loads(line) for line in paths["test"].read_text().splitlines()]
    assert len(train) == len(test) == 20
    for row in train + test:
        user, assistant = row["messages"]
        index = int(Path(user["content"][0]["image"]).stem)
        digit = int(data.target[index])
        expected = digits_dataset.WORDS[digit] if row["task"] == "digit" else ("odd" if digit % 2 else "even")
        assert assistant["content"][0]["text"] == expected
        # the image is the scan: 4 x 4 px per scan pixel, darker where there is more ink
        pixels = np.asarray(Image.open(tmp_path / user["content"][0]["image"]).convert("L"), dtype=float)
        assert pixels.shape == (32, 32)
        np.testing.assert_allclose(pixels[::4, ::4], np.round(255 - data.images[index] * 255 / 16), atol=1)
    assert int(Path(test[0]["messages"][0]["content"][0]["image"]).stem) == len(data.images) - 97
    with pytest.raises(ValueError, match="--test"):
        digits_dataset.write_dataset(tmp_path / "bad", test=0)


def test_quick_demo_runs_on_the_scanned_digits(tmp_path):
    digits_dataset.write_dataset(tmp_path / "digits", limit=64)
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "nemo_automodel_bard.cli", "demo", "--quick", "--data",
                           str(tmp_path / "digits"), "--out", str(out)], capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["tasks"] == ["digit", "parity"] and summary["data"]["val_from_train"]
    assert set(summary["per_type_exact_match"]) == {"digit", "parity"}
    for key in ("accuracy_gap_points", "accuracy_gap_interval_points", "bard_tpf", "speedup_tokens_per_s"):
        assert key in summary, key

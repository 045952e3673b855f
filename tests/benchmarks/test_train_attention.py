"""Smoke test of benchmarks/train_attention.py --quick: flex equals sdpa and the JSON has its keys."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "train_attention.py"


def test_quick_benchmark_writes_its_json(tmp_path):
    spec = importlib.util.spec_from_file_location("train_attention", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "attn.json"
    module.main(["--quick", "--device", "cpu", "--lengths", "256", "--repeats", "1", "--json", str(out)])
    results = json.loads(out.read_text())
    for key in ("max_abs_logit_diff", "dense_mask_bytes", "block_mask_bytes", "empty_tile_fraction", "runs"):
        assert key in results, key
    assert results["max_abs_logit_diff"] < 1e-5  # fp32 on CPU
    assert results["dense_mask_bytes"] == 256 * 256  # one bool [1, 1, S, S]
    assert 0 < results["block_mask_bytes"] < results["dense_mask_bytes"]
    # S=256 is 2x2 tiles of 128: a single sample with P = S/2 leaves one tile (prompt -> response) empty.
    assert results["empty_tile_fraction"] == 0.25
    assert {r["layout"] for r in results["runs"]} == {"single", "packed4"}
    assert all(r["flex_ms"] > 0 and r["sdpa_ms"] > 0 and not r["train_step"] for r in results["runs"])

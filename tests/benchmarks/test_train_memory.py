"""``benchmarks/train_memory.py``: the live-bytes tracker against known tensor sizes, and the
prediction for every shipped 4B/8B YAML (fits 0.94 x 80 GiB on 8 GPUs, activations measured).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import train_memory  # noqa: E402

SHIPPED = sorted(p.name for p in (ROOT / "recipes").glob("bard_*_qwen3vl_*b.yaml"))


def test_tracker_counts_what_the_step_holds_and_its_backward_peak():
    x = torch.randn(100, 10, requires_grad=True)
    square = 7

    def forward():
        y = x.exp()                      # saves its output: 100*10*4 bytes, held until backward
        mask = torch.ones(1, square, square, dtype=torch.bool)  # square: two sequence-long dims
        return (y * mask.sum()).sum()

    measured = train_memory._run_step(forward, square, [x])
    assert measured.held["square"] == 0  # the mask was freed inside forward
    assert measured.held["linear"] >= 100 * 10 * 4
    assert measured.extra_linear >= 100 * 10 * 4  # the gradient of y, then of x, in backward

    tracker = train_memory.LiveBytes(square, [x])
    with tracker:
        kept = torch.zeros(2, square, square)  # 392 bytes, square
        view = x.t()                           # a view of an existing storage: no new memory
    assert tracker.live == {"linear": 0, "square": 2 * square * square * 4}
    del kept, view


def test_chunked_loss_head_holds_nothing_per_token_and_peaks_per_chunk():
    """The measured head: all logits at once hold 6 x V bytes a loss token (PBM) until backward;
    in 8-row chunks nothing grows with the tokens, and the backward peak follows the chunk."""
    vocab = train_memory.PRESETS["qwen3vl-4b"]["text"]["vocab_size"]
    run = lambda tokens, chunk: train_memory.measure_loss_head("qwen3vl-4b", tokens, "pbm", chunk_tokens=chunk)  # noqa: E731
    full16, full32 = run(16, 0), run(32, 0)
    assert sum(full32.held.values()) - sum(full16.held.values()) == pytest.approx(16 * 6 * vocab, rel=0.01)
    chunk16, chunk32, wide32 = run(16, 8), run(32, 8), run(32, 16)
    # a few bytes a chunk (its saved loss terms), nothing of vocabulary size
    assert abs(sum(chunk32.held.values()) - sum(chunk16.held.values())) < 1024
    assert chunk32.extra_linear == pytest.approx(chunk16.extra_linear, rel=0.01)  # more tokens, same chunk peak
    assert wide32.extra_linear - chunk32.extra_linear == pytest.approx(8 * 12 * vocab, rel=0.05)  # 12 x V a chunk row
    assert chunk32.extra_linear < full32.extra_linear + sum(full32.held.values()) - sum(full16.held.values())


@pytest.mark.slow  # a meta-device build at real width: ~30-80 s on the shared 2-core machine
def test_param_counts_match_a_full_meta_build():
    # 1-layer build scaled vs the whole 36-layer builds (scale_facts.md: 4.438B, 8.767B).
    assert train_memory.param_counts("qwen3vl-4b").total == 4_437_815_808
    assert abs(train_memory.param_counts("qwen3vl-8b").total - 8.767e9) < 0.5e6


@pytest.mark.slow  # measures every shipped YAML's model at real width on CPU (minutes)
@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_yaml_is_predicted_to_fit_80_gib_on_8_gpus(name, tmp_path):
    out = tmp_path / "memory.json"
    rc = train_memory.main(["--config", str(ROOT / "recipes" / name), "--gpus", "8", "--gpu-gib", "80",
                            "--json", str(out)])
    result = json.loads(out.read_text())
    assert rc == 0 and result["fits"], result
    assert result["gpu_gib"] == 80 and result["predicted_peak_gib"] <= 0.94 * 80
    measured = result["measured"]
    hidden = train_memory.PRESETS[result["model"]]["text"]["hidden_size"]
    if result["activation_checkpointing"]:
        # AutoModel checkpoints each layer's norms, attention and MLP: their four bf16 inputs stay.
        assert measured["text_layer_bytes_per_token"] == pytest.approx(4 * 2 * hidden, rel=0.05)
    assert measured["loss_head_bytes_per_loss_token"] > 0 and measured["vision_block_bytes_per_patch"] > 0


def test_shipped_yamls_are_the_four_4b_8b_recipes():
    assert SHIPPED == ["bard_pbm_qwen3vl_4b.yaml", "bard_pbm_qwen3vl_8b.yaml", "bard_swd_qwen3vl_4b.yaml",
                       "bard_swd_qwen3vl_8b.yaml"]

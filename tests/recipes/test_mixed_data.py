"""Mixed image / text-only data at world size 2 (torchrun, gloo, FSDP2, CPU) for PBM and SWD.

The dataset alternates image rows and text-only rows and is read unshuffled, so rank 0 gets
only image rows and rank 1 only text-only rows. Without the collator's fake image this
crashes at the first step with gloo's "collective mismatch" (a hang on NCCL): rank 1 never
runs the FSDP2-sharded vision tower. The logged ``fake_media`` count (summed over ranks)
shows that exactly one micro-batch per step, rank 1's, ran on a fake image.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_automodel_bard.data.synthetic import write_tiny_assets

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = write_tiny_assets(tmp_path_factory.mktemp("mixed"), num_samples=8)
    rows = []
    for line in (root / "data" / "train.jsonl").read_text().splitlines():
        rows.append(line)  # even index: an image row -> rank 0
        answer = json.loads(line)["messages"][1]["content"][0]["text"]
        rows.append(json.dumps({"messages": [{"role": "user", "content": f"Repeat: {answer}"},
                                             {"role": "assistant", "content": answer}]}))  # odd -> rank 1
    (root / "data" / "mixed.jsonl").write_text("\n".join(rows) + "\n")
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(assets: Path, ckpt: Path, *args: str) -> list[dict]:
    env = dict(os.environ, BARD_TINY_DIR=str(assets), OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    command = [
        sys.executable, "-m", "nemo_automodel_bard.cli", "finetune", "--nproc-per-node", "2", *args,
        f"--dataset.path_or_dataset={assets / 'data' / 'mixed.jsonl'}", "--dataloader.shuffle=false",
        "--step_scheduler.global_batch_size=8", "--step_scheduler.local_batch_size=4",
        "--step_scheduler.max_steps=2", "--step_scheduler.ckpt_every_steps=100", "--lr_scheduler.lr_warmup_steps=1",
        f"--checkpoint.checkpoint_dir={ckpt}",
    ]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    logs = sorted(ckpt.rglob("training.jsonl"))
    assert len(logs) == 1, logs
    return [json.loads(line) for line in logs[0].read_text().splitlines()]


def test_pbm_two_ranks_one_seeing_only_text_rows(assets, tmp_path):
    lines = _run(assets, tmp_path / "pbm", "--recipe", "bard_pbm_tiny", "--pbm.stages=[{block_size: 4, max_steps: 2}]")
    assert [x["step"] for x in lines] == [0, 1]
    assert all(x["fake_media"] == 1 and math.isfinite(x["loss"]) and x["loss"] > 0 for x in lines), lines


def test_swd_two_ranks_one_seeing_only_text_rows(assets, tmp_path):
    lines = _run(assets, tmp_path / "swd", "--recipe", "bard_swd", "--config", str(ROOT / "recipes" / "bard_swd_tiny.yaml"))
    assert [x["step"] for x in lines] == [0, 1]
    assert all(x["fake_media"] == 1 and x["kl_loss"] > 0 and math.isfinite(x["loss"]) for x in lines), lines

"""End-to-end training on the tiny memorisable colour task: PBM stages, resume, torchrun.

Runs in-process at world size 1 (AutoModel's loop, FSDP2 on gloo) and once under
``torchrun --nproc-per-node 2``. "The loss went down" is measured on a fixed batch with fixed
noise draws, before vs after training, not on the noisy training log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nemo_automodel_bard.data.collate import bard_collate
from nemo_automodel_bard.data.dataset import BardChatDataset
from nemo_automodel_bard.data.synthetic import write_tiny_assets
from nemo_automodel_bard.diffusion.layout import apply_noise, layout_attention_mask, layout_position_ids
from nemo_automodel_bard.diffusion.loss import weighted_cross_entropy
from nemo_automodel_bard.recipes import launch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return write_tiny_assets(tmp_path_factory.mktemp("bard_tiny"), num_samples=32)


@pytest.fixture(autouse=True)
def _tiny_dir(assets, monkeypatch):
    monkeypatch.setenv("BARD_TINY_DIR", str(assets))


@torch.no_grad()
def fixed_batch_loss(model_dir: Path, data: Path, block_size: int) -> float:
    """Mean 1/t-weighted loss over the whole dataset under three fixed noise draws."""
    from transformers import AutoProcessor

    from nemo_automodel_bard.models.bard_vl import BardVLForConditionalGeneration

    model = BardVLForConditionalGeneration.from_pretrained(str(model_dir), attn_implementation="sdpa").eval()
    processor = AutoProcessor.from_pretrained(str(model_dir))
    dataset = BardChatDataset(str(data), processor=processor, block_size=block_size)
    batch = bard_collate([dataset[i] for i in range(len(dataset))], processor, block_size=block_size)
    losses = []
    for seed in range(3):
        noised = apply_noise(batch, block_size=block_size, mask_token_id=model.config.mask_token_id,
                             generator=torch.Generator().manual_seed(seed))
        logits = model(
            input_ids=noised["input_ids"],
            position_ids=layout_position_ids(noised, model.rope_positions),
            attention_mask=layout_attention_mask(noised, block_size),
            pixel_values=noised["pixel_values"],
            image_grid_thw=noised["image_grid_thw"],
        ).logits
        losses.append(float(weighted_cross_entropy(logits, noised["labels"], noised["loss_weight"], noised["num_samples"])))
    return sum(losses) / len(losses)


def _losses(jsonl: Path) -> dict[int, float]:
    return {json.loads(l)["step"]: json.loads(l)["loss"] for l in jsonl.read_text().splitlines() if l.strip()}


def _finetune(*args: str) -> None:
    assert launch.main(["--recipe", "bard_pbm_tiny", *args]) == 0


def test_pbm_two_stages_train_export_load_and_generate(assets):
    ckpt = assets / "pbm"
    stages = "[{block_size: 4, max_steps: 8}, {block_size: 8, max_steps: 4}]"
    _finetune(f"--pbm.stages={stages}", f"--checkpoint.checkpoint_dir={ckpt}", "--step_scheduler.ckpt_every_steps=4")

    for name, block in (("stage_0_b4", 4), ("stage_1_b8", 8)):
        config = json.loads((ckpt / name / "hf" / "config.json").read_text())
        assert config["model_type"] == "bard_vl" and config["block_size"] == block
    data = assets / "data" / "train.jsonl"
    before = fixed_batch_loss(assets / "model", data, 8)
    after = fixed_batch_loss(ckpt / "stage_1_b8" / "hf", data, 8)
    assert after < 0.8 * before, (before, after)

    # the exported stage loads and decodes
    from transformers import AutoProcessor

    from nemo_automodel_bard.models.bard_vl import BardVLForConditionalGeneration
    from nemo_automodel_bard.testing import chat_batch, tiny_image

    from nemo_automodel_bard.generation.block_decode import block_generate

    model = BardVLForConditionalGeneration.from_pretrained(str(ckpt / "stage_1_b8" / "hf")).eval()
    inputs = chat_batch(AutoProcessor.from_pretrained(str(ckpt / "stage_1_b8" / "hf")), ["What colour is this?"], [tiny_image(0)])
    ids = model.generate(inputs, max_new_tokens=8, block_size=8, denoising_steps=8)
    # the exported weights decode exactly as the uncached reference decoder does, without a mask token
    reference = block_generate(model, inputs, max_new_tokens=8, block_size=8, denoising_steps=8, use_cache=False)
    assert torch.equal(ids, reference)
    assert ids.shape[0] == 1 and 0 < ids.shape[1] <= 8
    assert not (ids == model.config.mask_token_id).any()

    # a re-run skips finished stages
    stage0_log = (ckpt / "stage_0_b4" / "training.jsonl").read_text()
    _finetune(f"--pbm.stages={stages}", f"--checkpoint.checkpoint_dir={ckpt}")
    assert (ckpt / "stage_0_b4" / "training.jsonl").read_text() == stage0_log


def test_resume_after_interruption_matches_the_uninterrupted_run(assets):
    # A schedule that does not depend on max_steps, so that stopping early is an interruption;
    # mixed noise and token_mean normalisation ride along (the other defaults run above).
    common = ["--pbm.stages=[]", "--lr_scheduler.lr_decay_steps=4", "--step_scheduler.ckpt_every_steps=2",
              "--bard.noise.schedule=mixed", "--bard.loss.normalization=token_mean"]
    _finetune(*common, f"--checkpoint.checkpoint_dir={assets / 'straight'}", "--step_scheduler.max_steps=4")
    _finetune(*common, f"--checkpoint.checkpoint_dir={assets / 'resumed'}", "--step_scheduler.max_steps=2")
    _finetune(*common, f"--checkpoint.checkpoint_dir={assets / 'resumed'}", "--step_scheduler.max_steps=4")
    straight = _losses(assets / "straight" / "training.jsonl")
    resumed = _losses(assets / "resumed" / "training.jsonl")
    # it really resumed (a fresh restart would log steps 0 and 1 twice and reproduce `straight`)
    assert len((assets / "resumed" / "training.jsonl").read_text().splitlines()) == 4
    assert sorted(straight) == [0, 1, 2, 3] and sorted(resumed) == [0, 1, 2, 3]
    for step in (2, 3):  # steps after the restart: same data, noise, optimizer state and LR
        assert resumed[step] == pytest.approx(straight[step], rel=1e-5, abs=1e-6)


def test_two_ranks_under_torchrun_reduce_the_loss(assets):
    ckpt = assets / "ddp"
    env = {**os.environ, "BARD_TINY_DIR": str(assets), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "nemo_automodel_bard.cli", "finetune", "--recipe", "bard_pbm_tiny",
           "--nproc-per-node", "2", "--pbm.stages=[{block_size: 4, max_steps: 8}]", f"--checkpoint.checkpoint_dir={ckpt}"]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = assets / "data" / "train.jsonl"
    before = fixed_batch_loss(assets / "model", data, 4)
    after = fixed_batch_loss(ckpt / "stage_0_b4" / "hf", data, 4)
    assert after < 0.8 * before, (before, after)


@pytest.mark.slow  # two 2-rank runs: 165 s on the shared 2-core CPU
def test_two_ranks_chunked_loss_head_logs_the_unchunked_losses(assets):
    """FSDP2 on 2 gloo ranks, the tiny model's untied LM head (its own FSDP unit, gathered by
    Bard-VL's forward for the chunked loss): 3 steps with 16-row chunks log the losses of the
    unchunked run; steps 1 and 2 only match if the head's gradients were reduced and applied."""
    env = {**os.environ, "BARD_TINY_DIR": str(assets), "OMP_NUM_THREADS": "1"}
    losses = {}
    for chunk in (0, 16):
        ckpt = assets / f"chunk_{chunk}"
        cmd = [sys.executable, "-m", "nemo_automodel_bard.cli", "finetune", "--recipe", "bard_pbm_tiny",
               "--nproc-per-node", "2", "--pbm.stages=[{block_size: 4, max_steps: 3}]", f"--checkpoint.checkpoint_dir={ckpt}",
               "--step_scheduler.ckpt_every_steps=100", f"--bard.loss.chunk_tokens={chunk}"]
        result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        losses[chunk] = _losses(ckpt / "stage_0_b4" / "training.jsonl")
    assert sorted(losses[0]) == [0, 1, 2]
    assert losses[16] == pytest.approx(losses[0], rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_resume_after_sigkill_matches_the_uninterrupted_run(assets):
    """A real kill (SIGKILL once the first checkpoint is on disk), then the same command again."""
    import signal
    import time

    env = {**os.environ, "BARD_TINY_DIR": str(assets), "OMP_NUM_THREADS": "1"}
    common = ["--pbm.stages=[]", "--lr_scheduler.lr_decay_steps=8", "--step_scheduler.ckpt_every_steps=2",
              "--step_scheduler.max_steps=8"]

    def command(directory: Path) -> list[str]:
        return [sys.executable, "-m", "nemo_automodel_bard.cli", "finetune", "--recipe", "bard_pbm_tiny", *common,
                f"--checkpoint.checkpoint_dir={directory}"]

    straight, killed = assets / "kill_straight", assets / "kill_resumed"
    subprocess.run(command(straight), cwd=ROOT, env=env, capture_output=True, check=True, timeout=300)
    process = subprocess.Popen(command(killed), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (killed / "LATEST").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    log = killed / "training.jsonl"
    kept = len(log.read_text().splitlines()) if log.exists() else 0
    subprocess.run(command(killed), cwd=ROOT, env=env, capture_output=True, check=True, timeout=300)
    restarted = [json.loads(line)["step"] for line in log.read_text().splitlines()[kept:]]
    assert restarted[0] >= 2 and restarted[-1] == 7  # it resumed from the checkpoint, not from scratch
    reference, resumed = _losses(straight / "training.jsonl"), _losses(killed / "training.jsonl")
    # the killed process may lose its buffered log lines; the restarted one logs every later step
    assert set(range(2, 8)) <= set(resumed)
    for step, loss in resumed.items():
        assert loss == pytest.approx(reference[step], rel=1e-5, abs=1e-6), step

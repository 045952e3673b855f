"""Two "nodes" on one machine: two ``bard finetune --nnodes 2 --node-rank i`` processes meeting at a c10d
rendezvous (torchrun, gloo, one worker each), a preemption on node 1, and the resume (issue 16)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nemo_automodel_bard.recipes.launch import packaged_yaml

ROOT = Path(__file__).resolve().parents[2]

_HELPER = '''
import os, signal
import torch.distributed as dist
from nemo_automodel_bard.recipes.block_diffusion import BardDiffusionRecipe
from nemo_automodel_bard.recipes.pbm import BardPBMRecipe

class PreemptedOnRank1(BardDiffusionRecipe):
    def _run_train_optim_step(self, batches, max_grad_norm=None):
        if int(self.step_scheduler.step) == 1 and dist.get_rank() == 1:
            os.kill(os.getpid(), signal.SIGTERM)   # only node 1 is told; every rank must stop
        return super()._run_train_optim_step(batches, max_grad_norm)

class PreemptedPBM(BardPBMRecipe):
    stage_recipe_cls = PreemptedOnRank1
'''


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _two_nodes(args: list[str], env: dict[str, str], run_id: str) -> list[subprocess.CompletedProcess]:
    port = _free_port()
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "nemo_automodel_bard.cli", "finetune", *args, "--nproc-per-node", "1",
             "--nnodes", "2", "--node-rank", str(node), "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", run_id],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for node in (0, 1)
    ]
    outputs = [p.communicate(timeout=480)[0] for p in processes]
    return [subprocess.CompletedProcess(p.args, p.returncode, out) for p, out in zip(processes, outputs)]


@pytest.mark.slow  # two interpreters per node and two runs: ~3 minutes on the shared 2-core machine
def test_two_node_pbm_preempted_on_one_node_resumes_across_nodes(tmp_path):
    from nemo_automodel_bard.data.synthetic import write_tiny_assets

    assets = write_tiny_assets(tmp_path / "tiny", num_samples=16)
    (tmp_path / "helpers").mkdir()
    (tmp_path / "helpers" / "preempt_helper.py").write_text(_HELPER)
    env = {**os.environ, "BARD_TINY_DIR": str(assets), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{ROOT}:{tmp_path / 'helpers'}", "BARD_RUN_KEY_FILE": str(tmp_path / "key")}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        env.pop(name, None)
    ckpt = tmp_path / "ckpt"
    common = ["--pbm.stages=[{block_size: 4, max_steps: 4}, {block_size: 8, max_steps: 3}]",
              f"--checkpoint.checkpoint_dir={ckpt}", "--step_scheduler.ckpt_every_steps=100",
              "--step_scheduler.save_checkpoint_every_epoch=false"]
    config = yaml.safe_load(packaged_yaml("bard_pbm_tiny").read_text())
    config["recipe"] = {"_target_": "preempt_helper.PreemptedPBM"}
    preempting = tmp_path / "preempting.yaml"
    preempting.write_text(yaml.safe_dump(config))

    first = _two_nodes([str(preempting), *common], env, "first")
    assert [r.returncode for r in first] == [0, 0], first[0].stdout[-3000:] + first[1].stdout[-3000:]
    # c10d gives global rank 0 to either node: its message is in one of the two outputs
    assert "stopped by a preemption signal" in first[0].stdout + first[1].stdout
    stage0 = ckpt / "stage_0_b4"
    assert not (stage0 / "hf").exists() and not (ckpt / "stage_1_b8").exists()
    assert [json.loads(l)["step"] for l in (stage0 / "training.jsonl").read_text().splitlines()] == [0, 1]

    second = _two_nodes(["--recipe", "bard_pbm_tiny", *common], env, "second")
    assert [r.returncode for r in second] == [0, 0], second[0].stdout[-3000:] + second[1].stdout[-3000:]
    assert [json.loads(l)["step"] for l in (stage0 / "training.jsonl").read_text().splitlines()] == [0, 1, 2, 3]
    for name in ("stage_0_b4", "stage_1_b8"):
        assert (ckpt / name / "hf" / "config.json").is_file()
        assert json.loads((ckpt / name / "bard_stage.json").read_text())["finished"] is True
        assert not (ckpt / name / ".bard_lock").exists()
    assert not (ckpt / ".bard_lock").exists()
    assert "all 2 stages finished" in second[0].stdout + second[1].stdout

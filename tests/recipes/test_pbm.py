"""PBM stage bookkeeping (issue 11 items 2, 3, 5): finished = normal end + complete export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_automodel_bard.recipes.config_check import PBMStage
from nemo_automodel_bard.recipes.pbm import (
    EXPORT_NAME,
    STATE_NAME,
    BardPBMRecipe,
    export_complete,
    find_final_consolidated,
    pbm_stage_config,
    stage_config,
    stage_finished,
    stage_max_steps,
)

ROOT = Path(__file__).resolve().parents[2]


def _consolidated(root: Path, step: int, *, weights: bool = True, incomplete: bool = False) -> Path:
    checkpoint = root / f"epoch_0_step_{step}"
    folder = checkpoint / "model" / "consolidated"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    if weights:
        (folder / "model-00001-of-00001.safetensors").write_bytes(b"x")
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"weight_map": {"lm_head.weight": "model-00001-of-00001.safetensors"}}))
    if incomplete:
        (checkpoint / ".incomplete").touch()
    return folder


def test_incomplete_or_weightless_exports_are_not_final(tmp_path):
    good = _consolidated(tmp_path, 4)
    _consolidated(tmp_path, 8, incomplete=True)  # killed during consolidation: AutoModel's marker
    assert find_final_consolidated(tmp_path) == good
    _consolidated(tmp_path, 12, weights=False)
    assert find_final_consolidated(tmp_path) == good
    shard_missing = _consolidated(tmp_path / "b", 2)
    (shard_missing / "model-00001-of-00001.safetensors").unlink()
    assert not export_complete(shard_missing) and find_final_consolidated(tmp_path / "b") is None


def test_a_stage_is_finished_only_with_its_state_and_a_complete_export(tmp_path):
    folder = _consolidated(tmp_path, 6)
    (tmp_path / EXPORT_NAME).symlink_to(os.path.relpath(folder, tmp_path))
    assert not stage_finished(tmp_path, 6)  # an export alone (e.g. of a preempted run) is not enough
    (tmp_path / STATE_NAME).write_text(json.dumps({"finished": True, "max_steps": 6, "step": 6}))
    assert stage_finished(tmp_path, 6)
    assert not stage_finished(tmp_path, 10)  # asked for more steps now: resume it
    (folder.parents[1] / ".incomplete").touch()
    assert not stage_finished(tmp_path, 6)


def test_step_scheduler_max_steps_caps_every_stage():
    base = {"step_scheduler": {"max_steps": 2}, "checkpoint": {"checkpoint_dir": "c"}}
    long, short, default = (PBMStage(4, overrides={"step_scheduler.max_steps": 1000}),
                            PBMStage(8, overrides={"step_scheduler.max_steps": 1}), PBMStage(16))
    assert [stage_max_steps(base, s) for s in (long, short, default)] == [2, 1, 2]
    assert pbm_stage_config(base, 0, long, None)["step_scheduler"]["max_steps"] == 2
    uncapped = {"step_scheduler": {"max_steps": None}}
    assert pbm_stage_config(uncapped, 0, long, None)["step_scheduler"]["max_steps"] == 1000
    # the plain chaining helper (also used by the toy's stage 0) keeps the stage's own value
    assert stage_config(base, 0, long, None)["step_scheduler"]["max_steps"] == 1000


# ---------------------------------------------------------------------------- tiny runs
@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from nemo_automodel_bard.data.synthetic import write_tiny_assets

    return write_tiny_assets(tmp_path_factory.mktemp("bard_tiny"), num_samples=16)


def _config(assets: Path, ckpt: Path, *extra: str):
    from nemo_automodel.components.config._arg_parser import parse_args_and_load_config

    from nemo_automodel_bard.recipes.launch import packaged_yaml

    os.environ["BARD_TINY_DIR"] = str(assets)
    return parse_args_and_load_config(
        str(packaged_yaml("bard_pbm_tiny")),
        argv=["--pbm.stages=[{block_size: 4, max_steps: 4}, {block_size: 8, max_steps: 3}]",
              f"--checkpoint.checkpoint_dir={ckpt}", "--step_scheduler.ckpt_every_steps=100",
              "--step_scheduler.save_checkpoint_every_epoch=false", *extra],
    )


def _steps(jsonl: Path) -> list[int]:
    return [json.loads(line)["step"] for line in jsonl.read_text().splitlines()] if jsonl.exists() else []


def test_preempted_stage_is_not_exported_and_resumes_then_rerun_says_finished(assets, tmp_path, capsys):
    from nemo_automodel_bard.recipes.block_diffusion import BardDiffusionRecipe

    class PreemptedAtStep1(BardDiffusionRecipe):
        def _run_train_optim_step(self, batches, max_grad_norm=None):
            if int(self.step_scheduler.step) == 1:
                os.kill(os.getpid(), signal.SIGTERM)  # AutoModel saves a checkpoint and returns normally
            return super()._run_train_optim_step(batches, max_grad_norm)

    class PreemptedPBM(BardPBMRecipe):
        stage_recipe_cls = PreemptedAtStep1

    ckpt = tmp_path / "pbm"
    recipe = PreemptedPBM(_config(assets, ckpt))
    recipe.run_train_validation_loop()
    stage0 = ckpt / "stage_0_b4"
    assert "stopped by a preemption signal" in capsys.readouterr().out
    assert not (stage0 / EXPORT_NAME).exists() and not (ckpt / "stage_1_b8").exists()
    assert json.loads((stage0 / STATE_NAME).read_text())["finished"] is False
    logged = _steps(stage0 / "training.jsonl")
    assert logged == [0, 1]

    BardPBMRecipe(_config(assets, ckpt)).run_train_validation_loop()
    resumed = _steps(stage0 / "training.jsonl")[len(logged):]
    assert resumed == [2, 3]  # continued from the preemption checkpoint, not restarted
    for name in ("stage_0_b4", "stage_1_b8"):
        assert export_complete(ckpt / name / EXPORT_NAME)
        assert json.loads((ckpt / name / STATE_NAME).read_text())["finished"] is True
    capsys.readouterr()

    BardPBMRecipe(_config(assets, ckpt)).run_train_validation_loop()
    assert "already finished" in capsys.readouterr().out


_KILLED_AT_STEP_3 = """
import os, signal, sys
from nemo_automodel_bard.recipes.block_diffusion import BardDiffusionRecipe
from nemo_automodel_bard.recipes.launch import run_in_process

def step(self, batches, max_grad_norm=None, _orig=BardDiffusionRecipe._run_train_optim_step):
    if int(self.step_scheduler.step) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return _orig(self, batches, max_grad_norm)

BardDiffusionRecipe._run_train_optim_step = step
run_in_process(sys.argv[1], sys.argv[2:])
"""


@pytest.mark.slow  # ~90 s on the shared 2-core machine (a fresh interpreter plus training)
def test_sigkill_loses_no_logged_metrics(assets, tmp_path):
    from nemo_automodel_bard.recipes.launch import packaged_yaml

    env = {**os.environ, "BARD_TINY_DIR": str(assets), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-c", _KILLED_AT_STEP_3, str(packaged_yaml("bard_pbm_tiny")), "--pbm.stages=[]",
         f"--checkpoint.checkpoint_dir={tmp_path}", "--step_scheduler.max_steps=8"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == -signal.SIGKILL, run.stderr[-3000:]
    assert _steps(tmp_path / "training.jsonl") == [0, 1, 2]

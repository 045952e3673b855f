"""examples/slurm/*.sub: syntax, and the per-node commands with srun/scontrol/bard stubbed on PATH."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from nemo_automodel_bard.recipes import launch

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((ROOT / "examples" / "slurm").glob("*.sub"))

_SRUN = """#!/bin/bash
# one task per node, in order, each with its own SLURM_NODEID
while [[ "$1" == --* ]]; do shift; done
for ((i = 0; i < SLURM_NNODES; i++)); do SLURM_NODEID=$i SLURM_PROCID=$i "$@" || exit $?; done
"""
_SCONTROL = "#!/bin/bash\nprintf 'gpu-node-001\\ngpu-node-002\\n'\n"
_BARD = """#!/bin/bash
printf '%s\\n' "$@" > "$RECORD/node_$SLURM_NODEID.args"
env > "$RECORD/node_$SLURM_NODEID.env"
"""


def test_scripts_exist_and_parse():
    assert {p.name for p in SCRIPTS} == {"bard_pbm.sub", "bard_swd.sub"}
    for script in SCRIPTS:
        subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.parametrize("script, recipe", [("bard_pbm.sub", "bard_pbm"), ("bard_swd.sub", "bard_swd")])
def test_each_node_runs_bard_finetune_with_its_rank_and_a_shared_rendezvous(tmp_path, script, recipe, capsys):
    stubs, record = tmp_path / "bin", tmp_path / "record"
    stubs.mkdir()
    record.mkdir()
    for name, text in (("srun", _SRUN), ("scontrol", _SCONTROL), ("bard", _BARD)):
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    env = {
        "PATH": f"{stubs}:{os.environ['PATH']}", "HOME": str(tmp_path), "RECORD": str(record),
        "SLURM_JOB_NODELIST": "gpu-node-[001-002]", "SLURM_NNODES": "2", "SLURM_JOB_ID": "4711",
        "SLURM_GPUS_PER_NODE": "8", "MODEL": "/shared/m", "DATA": "/shared/data/train.jsonl",
        "CKPT_DIR": "/shared/ckpt", "HF_HOME": "/shared/hf", "TEACHER": "/shared/t",
    }
    run = subprocess.run(["bash", str(ROOT / "examples" / "slurm" / script), "--optimizer.lr", "1e-5"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr

    for node in (0, 1):
        argv = (record / f"node_{node}.args").read_text().splitlines()
        assert argv[0] == "finetune"
        options, rest = launch.parse_argv(argv[1:])
        assert options["recipe"] == recipe and options["nproc_per_node"] == 8
        assert options["torchrun"] == {"nnodes": "2", "rdzv-backend": "c10d", "rdzv-endpoint": "gpu-node-001:29500",
                                       "rdzv-id": "4711", "node-rank": str(node)}
        overrides = launch._normalise_overrides(rest)
        for expected in ("--model.pretrained_model_name_or_path=/shared/m", "--dataset.path_or_dataset=/shared/data/train.jsonl",
                         "--checkpoint.checkpoint_dir=/shared/ckpt", "--optimizer.lr=1e-5"):
            assert expected in overrides
        command = launch.torchrun_command(options, "cfg.yaml", overrides)
        assert "--standalone" not in command and f"--node-rank={node}" in command and "--nproc-per-node=8" in command
        environment = dict(line.split("=", 1) for line in (record / f"node_{node}.env").read_text().splitlines() if "=" in line)
        assert environment["MASTER_ADDR"] == "gpu-node-001" and environment["HF_HOME"] == "/shared/hf"
        assert environment["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1" and "NCCL_DEBUG" in environment

        # the real `bard finetune` accepts exactly these arguments (config checks included)
        assert launch.main(argv[1:] + ["--dry-run"]) == 0
        printed = capsys.readouterr().out
        assert f"--node-rank={node}" in printed and "--nnodes=2" in printed and "-m nemo_automodel_bard.recipes.launch" in printed


@pytest.mark.parametrize("script", ["bard_pbm.sub", "bard_swd.sub"])
def test_a_long_node_list_does_not_end_the_job_with_sigpipe(tmp_path, script):
    """The first hostname is read without closing the pipe early: with ``pipefail`` a reader that
    stops after one line (``head -n 1``) ends the job with scontrol's SIGPIPE (exit 141) once the
    list outgrows the pipe buffer."""
    stubs, record = tmp_path / "bin", tmp_path / "record"
    stubs.mkdir()
    record.mkdir()
    many = "#!/bin/bash\nfor i in $(seq 1 50000); do printf 'gpu-node-%06d\\n' \"$i\"; done\n"
    for name, text in (("srun", _SRUN), ("scontrol", many), ("bard", _BARD)):
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    env = {
        "PATH": f"{stubs}:{os.environ['PATH']}", "HOME": str(tmp_path), "RECORD": str(record),
        "SLURM_JOB_NODELIST": "gpu-node-[000001-050000]", "SLURM_NNODES": "2", "SLURM_JOB_ID": "4711",
        "SLURM_GPUS_PER_NODE": "8", "MODEL": "/shared/m", "DATA": "/shared/data/train.jsonl",
        "CKPT_DIR": "/shared/ckpt", "HF_HOME": "/shared/hf", "TEACHER": "/shared/t",
    }
    run = subprocess.run(["bash", str(ROOT / "examples" / "slurm" / script)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, (run.returncode, run.stderr)
    environment = (record / "node_0.env").read_text()
    assert "MASTER_ADDR=gpu-node-000001\n" in environment

"""End-to-end SWD runs on CPU (gloo, FSDP2, fp32) with tiny self-made checkpoints.

* 2 processes under torchrun (``swd_probe.py``), the LM head + loss in 16-row chunks
  (``bard.loss.chunk_tokens``): both ranks check that the anchor teacher got no gradients and
  kept its weights and that the student's LM head trained; the consolidated checkpoint loads with no missing or
  unexpected keys and holds exactly the trained student (the teacher is not saved).
* ``bard finetune --recipe bard_swd`` (the packaged launcher, one process) with the AR
  teacher, and the refusal of a teacher with another vocabulary.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import PreTrainedModel, Qwen3VLConfig, Qwen3VLForConditionalGeneration

from nemo_automodel_bard.data.synthetic import write_color_dataset, write_tiny_model
from nemo_automodel_bard.models.bard_vl import BardVLForConditionalGeneration
from nemo_automodel_bard.testing import tiny_config, tiny_processor

ROOT = Path(__file__).resolve().parents[2]
YAML = ROOT / "recipes" / "bard_swd_tiny.yaml"
PROBE = Path(__file__).with_name("swd_probe.py")
TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"


def _save(model: torch.nn.Module, out: Path) -> str:
    PreTrainedModel.save_pretrained(model, out)  # plain HF writer (AutoModel's wants a checkpointer)
    tiny_processor().save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Student (B=8), anchor (B=4, other weights), AR Qwen3-VL, a bigger-vocab teacher, colour data."""
    root = tmp_path_factory.mktemp("swd_assets")
    write_tiny_model(root / "model", seed=0, block_size=8)
    write_color_dataset(root / "data", num_samples=16)
    paths = {"root": str(root), "student": str(root / "model")}
    paths["anchor"] = str(write_tiny_model(root / "anchor", seed=1, block_size=4))
    ar_dict = tiny_config().to_dict()
    for key in ("mask_token_id", "block_size", "prompt_attention", "model_type", "transformers_version"):
        ar_dict.pop(key, None)
    ar_dict["architectures"] = ["Qwen3VLForConditionalGeneration"]
    torch.manual_seed(2)
    paths["ar"] = _save(Qwen3VLForConditionalGeneration(Qwen3VLConfig(**ar_dict)), root / "ar")
    torch.manual_seed(3)
    paths["wide_vocab"] = _save(BardVLForConditionalGeneration(tiny_config(text={"vocab_size": 320})), root / "wide")
    return paths


def _env(assets) -> dict[str, str]:
    env = dict(os.environ, BARD_TINY_DIR=assets["root"], OMP_NUM_THREADS="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _final_consolidated(checkpoint_dir: Path) -> Path:
    found = sorted(
        checkpoint_dir.glob("epoch_*_step_*/model/consolidated"), key=lambda p: int(p.parts[-3].split("_")[-1])
    )
    assert found, f"no consolidated checkpoint under {checkpoint_dir}"
    return found[-1]


def test_two_process_swd_run_keeps_teacher_frozen_and_saves_the_student(assets, tmp_path):
    ckpt = tmp_path / "ckpt"
    command = [
        TORCHRUN, "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
        str(PROBE), "-c", str(YAML), f"--probe_out={tmp_path / 'probe'}",
        f"--teacher_model.pretrained_model_name_or_path={assets['anchor']}",
        f"--checkpoint.checkpoint_dir={ckpt}", "--step_scheduler.max_steps=2", "--step_scheduler.ckpt_every_steps=2",
        "--bard.loss.chunk_tokens=16",  # several chunks of the student's loss and the anchor's top-k
    ]
    result = subprocess.run(command, env=_env(assets), capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert result.stdout.count("SWD_PROBE_OK") == 2 and "teacher=yes" in result.stdout
    # the untied head is its own FSDP2 unit: the chunked loss gathered it inside the forward
    assert result.stdout.count("head_unit=yes") == 2

    final = _final_consolidated(ckpt)
    model, info = BardVLForConditionalGeneration.from_pretrained(final, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    trained = torch.load(tmp_path / "probe" / "student_final.pt")
    saved = {k: v for k, v in model.state_dict().items()}
    assert set(trained) <= set(saved)
    for name, value in trained.items():
        assert torch.equal(saved[name], value), f"checkpoint tensor {name} is not the trained student's"
    # The teacher's weights are nowhere in it (it started from other weights than the student).
    teacher = load_file(str(Path(assets["anchor"]) / "model.safetensors"))
    assert not torch.equal(teacher["lm_head.weight"], saved["lm_head.weight"])
    lines = [json.loads(x) for x in (ckpt / "training.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(x["kl_loss"] > 0 and x["ce_loss"] > 0 for x in lines)
    for x in lines:
        assert x["loss"] == pytest.approx(x["ce_loss"] + 0.5 * x["kl_loss"], rel=1e-4)


def _bard_finetune(assets, tmp_path, *overrides: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "nemo_automodel_bard.cli", "finetune", "--recipe", "bard_swd", "--config", str(YAML),
        f"--checkpoint.checkpoint_dir={tmp_path / 'ckpt'}", "--step_scheduler.max_steps=2",
        "--step_scheduler.ckpt_every_steps=100", *overrides,
    ]
    env = dict(_env(assets), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)


def test_bard_finetune_swd_with_the_ar_teacher(assets, tmp_path):
    result = _bard_finetune(
        assets, tmp_path, "--teacher.kind=ar", f"--teacher_model.pretrained_model_name_or_path={assets['ar']}"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert "teacher.kind=ar block_size=1" in result.stdout + result.stderr
    line = json.loads((tmp_path / "ckpt" / "training.jsonl").read_text().splitlines()[0])
    assert line["kl_loss"] > 0


def test_teacher_with_another_vocabulary_is_refused(assets, tmp_path):
    result = _bard_finetune(assets, tmp_path, f"--teacher_model.pretrained_model_name_or_path={assets['wide_vocab']}")
    assert result.returncode != 0
    assert "teacher refused: vocab_size differs (student 256, teacher 320)" in result.stdout + result.stderr


@pytest.mark.slow
def test_bard_finetune_swd_without_teacher_is_plain_ce(assets, tmp_path):
    result = _bard_finetune(assets, tmp_path, "--teacher.kind=none")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    lines = [json.loads(x) for x in (tmp_path / "ckpt" / "training.jsonl").read_text().splitlines()]
    assert all(x["kl_loss"] == 0.0 and x["loss"] == pytest.approx(x["ce_loss"], rel=1e-5) for x in lines)

"""Toy stage 0 through AutoModel's VLM fine-tune recipe (toy/stage0.py + recipes/toy_ar.yaml).

References are independent of the recipe path: HF's own ``Qwen3VLForConditionalGeneration``
loss on ``toy/ar_model.py``'s plain encoding of the same records, the data
folder's own ``train.jsonl`` and the saved safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nemo_automodel_bard.toy import ar_model, stage0
from nemo_automodel_bard.toy.curriculum import Phase, cells as _cells, parse_curriculum
from nemo_automodel_bard.toy.task import MAX_CELLS, MIN_CELLS, generate_splits

BATCH = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stage0") / "data"
    generate_splits(out, seed=0, sizes={"train": 48, "val": 2, "test": 2})
    return out


def _hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(directory.glob("*.safetensors")) for k, v in load_file(f).items()}


def _full(tensor: torch.Tensor) -> torch.Tensor:
    return (tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor).detach().clone()


def test_recipe_loss_is_hf_next_token_loss_and_vision_group_is_every_visual_parameter(data, tmp_path):
    from nemo_automodel.components.config.loader import ConfigNode
    from nemo_automodel.recipes.vlm.finetune import FinetuneRecipeForVLM
    from transformers import Qwen3VLForConditionalGeneration

    from nemo_automodel_bard._cpu_shim import apply_cpu_shims

    phase = Phase(("read", "colours", "count"), MIN_CELLS, MAX_CELLS, 2)
    (jsonl, root, _), = stage0.prepare_phases([phase], data, tmp_path, data_seed=0, batch_size=BATCH)
    init = stage0.save_init(tmp_path / "init", jsonl, root, seed=0, batch_size=BATCH)
    base = stage0.base_config(init, tmp_path / "ckpt", batch_size=BATCH, lr=3e-3, vision_lr_multiplier=3.0, seed=0)
    apply_cpu_shims()
    recipe = FinetuneRecipeForVLM(ConfigNode(stage0.phase_config(base, 0, phase, jsonl, root, None)))
    recipe.setup()

    assert recipe.dataloader.collate_fn.func is stage0.ar_collate  # the YAML's collate is the one in use
    records = [json.loads(line) for line in jsonl.read_text().splitlines()[:BATCH]]
    batch = stage0.ar_collate([recipe.dataloader.dataset[i] for i in range(BATCH)], recipe.processor)
    # independent reference: the plain tokenisation (prompt + answer + <|im_end|> in one string), unshifted
    processor = recipe.processor
    ref = ar_model.collate([ar_model.encode_example(processor, r, root) for r in records],
                           processor.tokenizer.pad_token_id, processor.tokenizer.convert_tokens_to_ids("<|image_pad|>"))
    assert torch.equal(batch["input_ids"], ref["input_ids"][:, :-1])
    assert torch.equal(batch["labels"], ref["labels"][:, 1:])
    assert torch.equal(batch["pixel_values"], ref["pixel_values"])
    answer = processor.tokenizer(records[0]["answer"] + "<|im_end|>", add_special_tokens=False)["input_ids"]
    assert batch["labels"][0][batch["labels"][0] != -100].tolist() == answer

    def recipe_loss(b: dict) -> float:
        buffer: list[torch.Tensor] = []
        n = int((b["labels"] != -100).sum())
        recipe._forward_backward_step(0, dict(b), loss_buffer=buffer, num_label_tokens=n, num_batches=1, is_train=False)
        return float(buffer[0])

    hf = Qwen3VLForConditionalGeneration.from_pretrained(str(init), dtype=torch.float32, attn_implementation="sdpa")
    with torch.no_grad():  # identically in both: an LM head that echoes the input token, so shifts show
        for m in (hf, recipe.model_parts[0]):
            m.lm_head.weight.copy_(m.model.language_model.embed_tokens.weight * 30.0)
        hf_loss = float(hf.eval()(**ref).loss)  # HF shifts labels itself
    got = recipe_loss(batch)
    assert got == pytest.approx(hf_loss, rel=1e-5)
    # sensitivity: with the echo head, unshifted labels (the classic off-by-one: each position
    # scored on its own token) give a near-zero loss, far from HF's shifted one
    off_by_one = {**batch, "labels": ref["labels"][:, :-1].contiguous()}
    assert recipe_loss(off_by_one) < 1.0 < hf_loss - 10.0

    # vision LR group = every `visual` parameter (tower and mergers), at 3x
    model = recipe.model_parts[0]
    names = {id(p): n for n, p in model.named_parameters()}
    boosted = {names[id(p)] for g in recipe.optimizer[0].param_groups if g.get("lr_mult") == 3.0 for p in g["params"]}
    assert boosted == {n for n in names.values() if "visual" in n}
    assert any("merger" in n for n in boosted) and any("blocks" in n for n in boosted)


def test_two_phase_curriculum_trains_chains_exports_and_loads(data, tmp_path, monkeypatch):
    from nemo_automodel.recipes.vlm.finetune import FinetuneRecipeForVLM
    from transformers import Qwen3VLForConditionalGeneration

    from nemo_automodel_bard.toy.evaluate import load_ar

    key = "model.language_model.layers.0.mlp.down_proj.weight"
    starts: list[torch.Tensor] = []
    original = FinetuneRecipeForVLM.run_train_validation_loop

    def snapshot_then_train(self):  # the weights each phase starts from
        starts.append(_full(self.model_parts[0].state_dict()[key]))
        return original(self)

    monkeypatch.setattr(FinetuneRecipeForVLM, "run_train_validation_loop", snapshot_then_train)
    cells = (MIN_CELLS, MIN_CELLS + 1)
    spec = f"read+colours:{cells[0]}-{cells[1]}:2,all:{MIN_CELLS}-{MAX_CELLS}:3"
    out, work = tmp_path / "ar", tmp_path / "work"
    assert stage0.main(["--data", str(data), "--out", str(out), "--work-dir", str(work), "--curriculum", spec,
                        "--batch-size", str(BATCH)]) == 0

    # phase 1 trained on the train split's read/colours rows of 4-5 cells only
    rows = [json.loads(line) for line in (work / "phase_0" / "train.jsonl").read_text().splitlines()]
    train_rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    assert len(rows) >= BATCH and all(r in train_rows for r in rows)
    assert {r["task"] for r in rows} <= {"read", "colours"}
    assert all(cells[0] <= _cells(r, data) <= cells[1] for r in rows)
    expected = [r for r in train_rows
                if r["task"] in ("read", "colours") and cells[0] <= _cells(r, data) <= cells[1]]
    assert rows == expected

    # phase 1 started from the random init, phase 2 from phase 1's export (not the init)
    init, phase1 = _hf_weights(work / "init"), _hf_weights(work / "ckpt" / "phase_0" / "hf")
    assert len(starts) == 2
    assert torch.equal(starts[0], init[key]) and not torch.equal(phase1[key], init[key])
    assert torch.equal(starts[1], phase1[key])

    log = json.loads((out / "train_log.json").read_text())
    assert log["command"].startswith("python -m nemo_automodel_bard.toy.stage0")
    assert [p["steps"] for p in log["phases"]] == [2, 3] and log["steps"] == 5
    assert all(p["step_s"] > 0 for p in log["phases"]) and log["final_loss"] > 0
    # the output is the last phase's export, loadable by HF and by the toy evaluation
    model = Qwen3VLForConditionalGeneration.from_pretrained(str(out), dtype=torch.float32)
    final = _hf_weights(work / "ckpt" / "phase_1" / "hf")
    assert torch.equal(model.state_dict()[key], final[key]) and not torch.equal(final[key], phase1[key])
    _, processor = load_ar(out)
    assert processor.tokenizer.convert_tokens_to_ids("<|image_pad|>") == model.config.image_token_id


@pytest.mark.parametrize("spec, match", [
    ("reading:4-8:2", "bad curriculum phase"),
    ("count:1-1:0", "bad curriculum phase"),
    ("", "empty curriculum"),
])
def test_bad_curriculum_is_a_clear_value_error(data, tmp_path, spec, match):
    with pytest.raises(ValueError, match=match):
        stage0.main(["--data", str(data), "--out", str(tmp_path / "o"), "--curriculum", spec])


def test_phase_without_enough_rows_fails_before_training(tmp_path):
    data = tmp_path / "data"
    generate_splits(data, seed=0, sizes={"train": 6, "val": 1, "test": 1}, tasks=("read",))
    spec = f"read:{MIN_CELLS}-{MAX_CELLS}:2,colours:{MIN_CELLS}-{MAX_CELLS}:2"
    with pytest.raises(ValueError, match=r"phase 2 .*colours.*: 0 rows"):
        stage0.train(data, tmp_path / "o", tmp_path / "w", curriculum=parse_curriculum(spec), batch_size=4)
    with pytest.raises(ValueError, match="fewer training rows than the batch size 16"):
        stage0.train(data, tmp_path / "o", tmp_path / "w", batch_size=16,
                     curriculum=parse_curriculum(f"read:{MIN_CELLS}-{MAX_CELLS}:2"))
    assert not (tmp_path / "w" / "ckpt").exists() and not (tmp_path / "o").exists()


@pytest.mark.parametrize("steps, warmup", [(1, 0), (2, 1), (100, 5), (2500, 125)])
def test_phase_config_schedule_and_chaining(tmp_path, steps, warmup):
    base = stage0.base_config(tmp_path / "init", tmp_path / "ckpt", batch_size=16, lr=3e-3,
                              vision_lr_multiplier=3.0, seed=0)
    phase = Phase(("read",), 1, 3, steps)
    first = stage0.phase_config(base, 0, phase, tmp_path / "p0.jsonl", tmp_path, None)
    later = stage0.phase_config(base, 2, phase, tmp_path / "p2.jsonl", tmp_path, tmp_path / "ckpt" / "phase_1" / "hf")
    sched = first["lr_scheduler"]
    assert first["step_scheduler"]["max_steps"] == steps and sched["lr_warmup_steps"] == warmup < steps
    assert sched["init_lr"] == pytest.approx(3e-3 / max(1, warmup)) and sched["min_lr"] == pytest.approx(3e-4)
    assert first["model"]["pretrained_model_name_or_path"] == str(tmp_path / "init")
    assert later["model"]["pretrained_model_name_or_path"] == str(tmp_path / "ckpt" / "phase_1" / "hf")
    assert later["checkpoint"]["checkpoint_dir"] == str(tmp_path / "ckpt" / "phase_2") and "bard" not in later
    assert later["dataset"]["path_or_dataset"] == str(tmp_path / "p2.jsonl")

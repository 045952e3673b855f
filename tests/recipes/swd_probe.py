"""Run ``BardSWDRecipe`` under torchrun and check, on every rank, that the teacher stayed frozen.

Used by ``test_swd_run.py`` (not collected by pytest):

    torchrun --nproc-per-node 2 tests/recipes/swd_probe.py -c recipes/bard_swd_tiny.yaml --probe_out=DIR [--a.b=c ...]

Writes ``DIR/student_final.pt`` (the student's full state after training, rank 0) and
prints ``SWD_PROBE_OK`` per rank when the checks pass.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule
from nemo_automodel.components.config._arg_parser import parse_args_and_load_config

from nemo_automodel_bard.recipes.swd import BardSWDRecipe


def _full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded copies of every parameter (``full_tensor`` is a collective: call on all ranks)."""
    out = {}
    for name, param in model.named_parameters():
        value = param.detach()
        out[name] = (value.full_tensor() if hasattr(value, "full_tensor") else value).clone().cpu()
    return out


def main() -> None:
    argv = [a for a in sys.argv[1:] if not a.startswith("--probe_out=")]
    out = Path(next(a for a in sys.argv[1:] if a.startswith("--probe_out=")).split("=", 1)[1])
    recipe = BardSWDRecipe(parse_args_and_load_config(None, argv=argv))
    recipe.setup()
    teacher = getattr(recipe, "teacher_model", None)
    teacher_before = _full_state(teacher) if teacher is not None else {}
    student_before = _full_state(recipe.model_parts[0])

    recipe.run_train_validation_loop()

    if teacher is not None:
        assert not teacher.training, "teacher left eval mode"
        for name, param in teacher.named_parameters():
            assert not param.requires_grad, f"teacher parameter {name} requires grad"
            assert param.grad is None, f"teacher parameter {name} received a gradient"
        after = _full_state(teacher)
        changed = [n for n in teacher_before if not torch.equal(teacher_before[n], after[n])]
        assert not changed, f"teacher weights changed: {changed[:5]}"
    student_after = _full_state(recipe.model_parts[0])
    assert any(not torch.equal(student_before[n], student_after[n]) for n in student_after), "student did not train"
    # The LM head trains too (with bard.loss.chunk_tokens its gradient comes from the chunked loss).
    assert not torch.equal(student_before["lm_head.weight"], student_after["lm_head.weight"]), "LM head did not train"
    head_unit = isinstance(recipe.model_parts[0].lm_head, FSDPModule)  # untied: its own FSDP unit
    if dist.get_rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        torch.save(student_after, out / "student_final.pt")
    print(f"SWD_PROBE_OK rank={dist.get_rank()} teacher={'yes' if teacher is not None else 'no'} "
          f"head_unit={'yes' if head_unit else 'no'}", flush=True)


if __name__ == "__main__":
    main()

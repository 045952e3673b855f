"""``BardPBMRecipe``: Progressive Block Merging, stages run in order (bard_spec.md section 5, D9).

Each ``pbm.stages`` entry is one :class:`BardDiffusionRecipe` run with a derived config:

* ``checkpoint.checkpoint_dir = <base>/stage_<i>_b<B>``, ``bard.block_size = B``, plus the
  stage's dotted overrides (``max_steps`` is short for ``step_scheduler.max_steps``);
* the model of stage ``i > 0`` is the previous stage's consolidated HF export (``<prev>/hf``),
  loaded with ``from_pretrained``: stage k starts from stage k-1's weights (upstream's
  shipped configs all restart from the AR base).

Stage bookkeeping (``<stage dir>/bard_stage.json``, written by global rank 0 only, read by
rank 0 and broadcast, so every rank of a multi-node job takes the same decision): a stage is
finished only when its run ended normally (``max_steps`` reached, or its epochs exhausted; not
stopped by SIGTERM / preemption) **and** its export ``<stage dir>/hf`` is complete (a published
checkpoint without AutoModel's ``.incomplete`` marker, with every weight file of the
consolidated folder). A preempted stage is not exported; the next run resumes it through
AutoModel's auto-resume (model, optimizer, scheduler, RNG, dataloader position and step; the
noise is a function of the step). A stage whose previous stage changed after it started is
refused (delete its folder to retrain it). Rerunning a finished run says so.

``step_scheduler.max_steps`` caps every stage (``min`` with the stage's own ``max_steps``;
stages without one run that many steps); leave it ``null`` in a PBM YAML to let each stage
run its own count. ``--step_scheduler.max_steps 2`` thus makes a quick run of every stage.

The checkpoint folder must be on a file system all nodes share: stage ``i > 0`` of every rank
loads stage ``i-1``'s export.

Without ``pbm.stages`` this runs a single stage at ``bard.block_size`` in ``checkpoint_dir``.
"""

from __future__ import annotations

import copy
import gc
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch.distributed as dist
from nemo_automodel.components.checkpoint.utils import is_checkpoint_incomplete
from nemo_automodel.components.config.loader import ConfigNode

from nemo_automodel_bard.recipes import run_guard
from nemo_automodel_bard.recipes.block_diffusion import BardDiffusionRecipe, prepare_config
from nemo_automodel_bard.recipes.config_check import (
    AUTOMODEL_SECTIONS,
    BARD_SECTIONS,
    BardSettings,
    ConfigKeyError,
    PBMSettings,
    PBMStage,
    plain_config,
    check_top_level_keys,
)

__all__ = [
    "BardPBMRecipe",
    "stage_config",
    "pbm_stage_config",
    "stage_dir",
    "stage_max_steps",
    "find_final_consolidated",
    "export_complete",
    "stage_finished",
    "FROM_PRETRAINED",
]

logger = logging.getLogger(__name__)

FROM_PRETRAINED = "nemo_automodel.NeMoAutoModelForImageTextToText.from_pretrained"
EXPORT_NAME = "hf"
STATE_NAME = "bard_stage.json"
_CHECKPOINT_RE = re.compile(r"^epoch_\d+_step_(\d+)$")


def stage_dir(base: str | Path, index: int, stage: PBMStage) -> Path:
    """``<base>/stage_<i>_b<B>`` (or ``<base>/<name>`` for a named stage)."""
    return Path(base) / (stage.name or f"stage_{index}_b{stage.block_size}")


def _set_dotted(config: dict[str, Any], dotted: str, value: Any) -> None:
    node = config
    parts = dotted.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def stage_max_steps(base_config: dict[str, Any], stage: PBMStage) -> int | None:
    """The stage's steps: its own ``max_steps`` capped by ``step_scheduler.max_steps`` (either may be absent)."""
    own = stage.overrides.get("step_scheduler.max_steps")
    cap = (base_config.get("step_scheduler") or {}).get("max_steps")
    values = [int(v) for v in (own, cap) if v is not None]
    return min(values) if values else None


def stage_config(base_config: dict[str, Any], index: int, stage: PBMStage, previous_export: Path | None) -> dict[str, Any]:
    """The plain config of stage ``index`` (see the module docstring), the stage's own overrides as given.

    The PBM recipe also applies the ``step_scheduler.max_steps`` cap (:func:`pbm_stage_config`).
    """
    config = copy.deepcopy(base_config)
    config.pop("pbm", None)
    base_dir = (config.get("checkpoint") or {}).get("checkpoint_dir", "checkpoints")
    _set_dotted(config, "checkpoint.checkpoint_dir", str(stage_dir(base_dir, index, stage)))
    _set_dotted(config, "bard.block_size", stage.block_size)
    for dotted, value in stage.overrides.items():
        _set_dotted(config, dotted, value)
    if previous_export is not None:
        model = {k: v for k, v in (config.get("model") or {}).items() if k not in ("config", "pretrained_model_name_or_path")}
        model["_target_"] = FROM_PRETRAINED
        model["pretrained_model_name_or_path"] = str(previous_export)
        config["model"] = model
    return config


def pbm_stage_config(base_config: dict[str, Any], index: int, stage: PBMStage,
                     previous_export: Path | None) -> dict[str, Any]:
    """:func:`stage_config` with the stage's steps capped by ``step_scheduler.max_steps`` (:func:`stage_max_steps`)."""
    config = stage_config(base_config, index, stage, previous_export)
    _set_dotted(config, "step_scheduler.max_steps", stage_max_steps(base_config, stage))
    return config


def _step_of(path: Path) -> int:
    match = _CHECKPOINT_RE.match(path.name)
    return int(match.group(1)) if match else -1


def export_complete(folder: str | Path) -> bool:
    """A consolidated HF folder that finished writing: its checkpoint was published (no
    ``.incomplete``), it has ``config.json`` and every weight file its index names."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        return False
    for parent in folder.resolve().parents:
        if _CHECKPOINT_RE.match(parent.name):
            if is_checkpoint_incomplete(parent):
                return False
            break
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError):
            return False
        return bool(shards) and all((folder / shard).is_file() for shard in shards)
    return any(folder.glob("*.safetensors"))


def find_final_consolidated(checkpoint_dir: str | Path) -> Path | None:
    """The complete consolidated HF folder of the newest published ``epoch_*_step_*`` checkpoint."""
    candidates = sorted(Path(checkpoint_dir).glob("epoch_*_step_*"), key=_step_of, reverse=True)
    for candidate in candidates:
        consolidated = candidate / "model" / "consolidated"
        if not is_checkpoint_incomplete(candidate) and export_complete(consolidated):
            return consolidated
    return None


def _read_state(directory: Path) -> dict[str, Any]:
    try:
        return json.loads((directory / STATE_NAME).read_text())
    except (OSError, ValueError):
        return {}


def _write_state(directory: Path, **values: Any) -> None:
    """Merge ``values`` into ``<stage dir>/bard_stage.json`` (atomic replace; rank 0 only)."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {**_read_state(directory), **values}
    tmp = directory / f".{STATE_NAME}.tmp"
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, directory / STATE_NAME)


def stage_finished(directory: str | Path, max_steps: int | None) -> bool:
    """Finished: the recorded run ended normally at (at least) ``max_steps`` and the export is complete."""
    directory = Path(directory)
    state = _read_state(directory)
    if not state.get("finished") or not export_complete(directory / EXPORT_NAME):
        return False
    return max_steps is None or state.get("max_steps") == max_steps or int(state.get("step", -1)) >= max_steps


def _export(directory: Path) -> Path:
    """Point ``<stage dir>/hf`` at the stage's final consolidated checkpoint (rank 0)."""
    export = directory / EXPORT_NAME
    consolidated = find_final_consolidated(directory)
    if consolidated is None:
        raise RuntimeError(
            f"stage finished but {directory} holds no complete consolidated checkpoint; keep checkpoint.enabled and "
            "checkpoint.save_consolidated: final (or every)"
        )
    tmp = directory / f".{EXPORT_NAME}.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink() if tmp.is_symlink() else shutil.rmtree(tmp)
    try:
        tmp.symlink_to(os.path.relpath(consolidated, directory), target_is_directory=True)
    except OSError:  # file systems without symlinks
        shutil.copytree(consolidated, tmp)
    if export.is_symlink() or export.is_file():
        export.unlink()
    elif export.exists():
        shutil.rmtree(export)
    os.replace(tmp, export)  # the state file, written after this, is what marks the stage finished
    return export


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class BardPBMRecipe:
    """Runs the PBM stages; AutoModel's launcher calls ``setup()`` then ``run_train_validation_loop()``."""

    stage_recipe_cls = BardDiffusionRecipe

    def __init__(self, cfg: Any) -> None:
        self.config = plain_config(cfg)
        self.pbm = self.validate_config(self.config)
        self.last_recipe: BardDiffusionRecipe | None = None

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> PBMSettings:
        """Every check that needs no model: unknown keys (D12), values, each stage's derived config."""
        extra = cls.stage_recipe_cls.extra_config_sections
        check_top_level_keys(config, extra)
        BardSettings.from_mapping(config.get("bard"))
        pbm = PBMSettings.from_mapping(config.get("pbm"), AUTOMODEL_SECTIONS | BARD_SECTIONS | extra)
        if config.get("peft") and len(pbm.stages) > 1:
            raise ConfigKeyError(
                "peft with several pbm.stages: each stage starts from the previous stage's full consolidated "
                "weights, and a PEFT run saves adapters only; run one stage per command, or drop peft"
            )
        for index, stage in enumerate(pbm.stages):
            prepare_config(pbm_stage_config(config, index, stage, None), extra)
        if not pbm.stages:
            prepare_config(config, extra)
        return pbm

    def setup(self) -> None:
        """Nothing to build up front: every stage builds its own recipe."""

    def stages(self) -> list[PBMStage]:
        block = BardSettings.from_mapping(self.config.get("bard")).block_size
        return list(self.pbm.stages) or [PBMStage(block_size=int(block))]

    def run_train_validation_loop(self) -> None:
        """Train every unfinished stage, in order; stop (to be resumed) when a stage is preempted."""
        if not self.pbm.stages:  # plain diffusion SFT: one run, checkpoint_dir as configured
            self._run(self.config)
            return
        base_dir = Path((self.config.get("checkpoint") or {}).get("checkpoint_dir", "checkpoints"))
        run_guard.init_distributed(self.config)  # one process group for every stage and the bookkeeping
        lock = run_guard.guard_checkpoint_dir(base_dir)  # the base folder holds no training checkpoint itself
        try:
            self._run_stages(base_dir)
        finally:
            lock.release()

    def _run_stages(self, base_dir: Path) -> None:
        plan = [(stage_dir(base_dir, i, s), stage_max_steps(self.config, s)) for i, s in enumerate(self.pbm.stages)]
        finished = run_guard.on_rank0(lambda: [stage_finished(d, n) for d, n in plan])
        if all(finished):
            _say(f"PBM: all {len(plan)} stages in {base_dir} are already finished (final export: "
                 f"{plan[-1][0] / EXPORT_NAME}); nothing to train. Point checkpoint.checkpoint_dir at a new "
                 "folder to train again.")
            return
        previous: Path | None = None
        for index, (stage, (directory, max_steps)) in enumerate(zip(self.pbm.stages, plan)):
            export = directory / EXPORT_NAME
            if finished[index]:
                logger.info("PBM stage %d (block %d): finished, export %s", index, stage.block_size, export)
                previous = export
                continue
            run_guard.on_rank0(lambda: self._start_stage(index, directory, max_steps, previous))
            logger.info("PBM stage %d/%d: block_size=%d max_steps=%s -> %s", index + 1, len(plan), stage.block_size,
                        max_steps, directory)
            recipe = self._run(pbm_stage_config(self.config, index, stage, previous))
            scheduler = recipe.step_scheduler
            # AutoModel returns normally after a preemption signal (having saved a checkpoint): that
            # stage is finished only if it got to max_steps anyway.
            if scheduler.sigterm_flag and scheduler.step < scheduler.max_steps:
                _say(f"PBM stage {index} (block {stage.block_size}) stopped by a preemption signal at step "
                     f"{scheduler.step} of {max_steps}; run the same command again to resume it.")
                return
            run_guard.on_rank0(lambda: self._finish_stage(directory, int(scheduler.step)))
            _barrier()
            if not export_complete(export):  # every rank reads it next: the folder must be shared
                raise RuntimeError(
                    f"rank {dist.get_rank() if dist.is_initialized() else 0} cannot see the stage export {export} "
                    "written by rank 0: checkpoint.checkpoint_dir must be on a file system shared by all nodes"
                )
            previous = export
        _say(f"PBM: all {len(plan)} stages finished; final export {plan[-1][0] / EXPORT_NAME}")

    @staticmethod
    def _start_stage(index: int, directory: Path, max_steps: int | None, previous: Path | None) -> None:
        """Rank 0: record what the stage starts from; refuse one begun from other weights."""
        init = str(previous.resolve()) if previous is not None else None
        state = _read_state(directory)
        if "init_from" in state and state["init_from"] != init and any(directory.glob("epoch_*_step_*")):
            raise run_guard.CheckpointDirError(
                f"PBM stage {index} in {directory} was started from {state.get('init_from')}, but the previous stage "
                f"now exports {init}; delete {directory} to train this stage again from the new weights"
            )
        _write_state(directory, stage=index, max_steps=max_steps, init_from=init, finished=False)

    @staticmethod
    def _finish_stage(directory: Path, step: int) -> None:
        """Rank 0: export, then record the stage as finished (the state file is written last)."""
        _export(directory)
        _write_state(directory, finished=True, step=step)

    def _run(self, config: dict[str, Any]) -> BardDiffusionRecipe:
        self.last_recipe = None
        gc.collect()
        recipe = self.stage_recipe_cls(ConfigNode(config))
        recipe.setup()
        recipe.run_train_validation_loop()
        self.last_recipe = recipe
        return recipe


def _say(message: str) -> None:
    """A line the user sees (rank 0): stdout and the log."""
    if _is_main():
        print(message, flush=True)
        logger.info(message)


def _is_main() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def main(config_path: str | None = None) -> None:
    """``python -m nemo_automodel_bard.recipes.pbm -c cfg.yaml [--a.b=c ...]`` (NeMo-Run / SkyPilot style)."""
    from nemo_automodel.components.config._arg_parser import parse_args_and_load_config

    from nemo_automodel_bard._cpu_shim import apply_cpu_shims

    apply_cpu_shims()
    recipe = BardPBMRecipe(parse_args_and_load_config(config_path))
    recipe.setup()
    recipe.run_train_validation_loop()


if __name__ == "__main__":
    main()

"""``BardPBMRecipe``: Progressive Block Merging, stages run in order (bard_spec.md section 5, D9).

Each ``pbm.stages`` entry is one :class:`BardDiffusionRecipe` run with a derived config:

* ``checkpoint.checkpoint_dir = <base>/stage_<i>_b<B>``, ``bard.block_size = B``, plus the
  stage's dotted overrides (``max_steps`` is short for ``step_scheduler.max_steps``);
* the model of stage ``i > 0`` is the previous stage's consolidated HF export (``<prev>/hf``),
  loaded with ``from_pretrained``: stage k starts from stage k-1's weights (upstream's
  shipped configs all restart from the AR base).

After a stage finishes, ``<stage dir>/hf`` points at its final consolidated checkpoint
(loadable by ``BardVLForConditionalGeneration.from_pretrained``). On a re-run, a stage whose
``hf`` export exists is skipped; an unfinished stage resumes through AutoModel's own
auto-resume (model, optimizer, scheduler, RNG, dataloader position and step), and the noise
is a function of the step, so the resumed loss matches the uninterrupted run.

Without ``pbm.stages`` this runs a single stage at ``bard.block_size`` in ``checkpoint_dir``.
"""

from __future__ import annotations

import copy
import gc
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch.distributed as dist
from nemo_automodel.components.config.loader import ConfigNode

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

__all__ = ["BardPBMRecipe", "stage_config", "stage_dir", "find_final_consolidated", "FROM_PRETRAINED"]

logger = logging.getLogger(__name__)

FROM_PRETRAINED = "nemo_automodel.NeMoAutoModelForImageTextToText.from_pretrained"
EXPORT_NAME = "hf"


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


def stage_config(base_config: dict[str, Any], index: int, stage: PBMStage, previous_export: Path | None) -> dict[str, Any]:
    """The plain config of stage ``index`` (see the module docstring)."""
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


def find_final_consolidated(checkpoint_dir: str | Path) -> Path | None:
    """The consolidated HF folder of the newest ``epoch_*_step_*`` checkpoint, if any."""
    def step_of(path: Path) -> int:
        try:
            return int(path.name.rsplit("_", 1)[-1])
        except ValueError:
            return -1

    candidates = sorted(Path(checkpoint_dir).glob("epoch_*_step_*"), key=step_of, reverse=True)
    for candidate in candidates:
        consolidated = candidate / "model" / "consolidated"
        if (consolidated / "config.json").is_file():
            return consolidated
    return None


def _export(directory: Path) -> Path:
    """Point ``<stage dir>/hf`` at the stage's final consolidated checkpoint (rank 0)."""
    export = directory / EXPORT_NAME
    consolidated = find_final_consolidated(directory)
    if consolidated is None:
        raise RuntimeError(
            f"stage finished but {directory} holds no consolidated checkpoint; keep checkpoint.enabled and "
            "checkpoint.save_consolidated: final (or every)"
        )
    tmp = directory / f".{EXPORT_NAME}.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink() if tmp.is_symlink() else shutil.rmtree(tmp)
    try:
        tmp.symlink_to(os.path.relpath(consolidated, directory), target_is_directory=True)
    except OSError:  # file systems without symlinks
        shutil.copytree(consolidated, tmp)
    os.replace(tmp, export)  # atomic: a half-written export never looks finished
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
            prepare_config(stage_config(config, index, stage, None), extra)
        if not pbm.stages:
            prepare_config(config, extra)
        return pbm

    def setup(self) -> None:
        """Nothing to build up front: every stage builds its own recipe."""

    def stages(self) -> list[PBMStage]:
        block = BardSettings.from_mapping(self.config.get("bard")).block_size
        return list(self.pbm.stages) or [PBMStage(block_size=int(block))]

    def run_train_validation_loop(self) -> None:
        """Train every stage not yet exported, in order."""
        if not self.pbm.stages:  # plain diffusion SFT: one run, checkpoint_dir as configured
            self._run(self.config)
            return
        base_dir = (self.config.get("checkpoint") or {}).get("checkpoint_dir", "checkpoints")
        previous: Path | None = None
        for index, stage in enumerate(self.pbm.stages):
            directory = stage_dir(base_dir, index, stage)
            export = directory / EXPORT_NAME
            if (export / "config.json").is_file():
                logger.info("PBM stage %d (block %d): %s exists, skipping", index, stage.block_size, export)
                previous = export
                continue
            logger.info("PBM stage %d/%d: block_size=%d -> %s", index + 1, len(self.pbm.stages), stage.block_size, directory)
            self._run(stage_config(self.config, index, stage, previous))
            if _is_main():
                _export(directory)
            _barrier()
            previous = export

    def _run(self, config: dict[str, Any]) -> None:
        self.last_recipe = None
        gc.collect()
        recipe = self.stage_recipe_cls(ConfigNode(config))
        recipe.setup()
        recipe.run_train_validation_loop()
        self.last_recipe = recipe


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

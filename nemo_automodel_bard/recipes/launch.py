"""``bard finetune``: resolve a packaged or given YAML, apply overrides, run on CPU or GPU.

Usage::

    bard finetune --recipe bard_pbm                     # packaged recipes/bard_pbm_qwen3vl_4b.yaml
    bard finetune --recipe bard_pbm_tiny                # any packaged YAML by its stem
    bard finetune --recipe bard_pbm --config my.yaml    # your YAML, recipe target forced
    bard finetune my.yaml --nproc-per-node 2 --step_scheduler.max_steps 10 --optimizer.lr=1e-5

Overrides are AutoModel-style dotted keys (``--a.b value`` or ``--a.b=value``). With one
process the recipe runs in this process (AutoModel's own launcher refuses CPU-only
machines); with more it re-executes itself under ``torchrun``; under an existing torchrun it
runs in-process in every rank. ``dist_env.backend`` defaults to nccl with CUDA, else gloo.
AutoModel's own entry points work too: ``torchrun --nproc-per-node N -m nemo_automodel.cli.app cfg.yaml``.
"""

from __future__ import annotations

import importlib
import importlib.resources
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

__all__ = ["RECIPES", "main", "packaged_yaml", "list_packaged_yamls", "resolve_config", "run_in_process"]

logger = logging.getLogger(__name__)

# --recipe name -> (recipe class, default packaged YAML)
RECIPES = {
    "bard_pbm": ("nemo_automodel_bard.recipes.pbm.BardPBMRecipe", "bard_pbm_qwen3vl_4b.yaml"),
    "bard_swd": ("nemo_automodel_bard.recipes.swd.BardSWDRecipe", "bard_swd_qwen3vl_4b.yaml"),
}
_CONFIG_PACKAGE = "nemo_automodel_bard.recipe_configs"
# Source checkouts whose editable install predates the package-dir mapping find them here.
_SOURCE_CONFIGS = Path(__file__).resolve().parents[2] / "recipes"


def _config_dirs() -> list[Any]:
    dirs: list[Any] = []
    try:
        dirs.append(importlib.resources.files(_CONFIG_PACKAGE))
    except (ModuleNotFoundError, TypeError):
        pass
    if _SOURCE_CONFIGS.is_dir():
        dirs.append(_SOURCE_CONFIGS)
    return dirs


def list_packaged_yamls() -> list[str]:
    """Stems of the packaged recipe YAMLs."""
    return sorted({p.name[:-5] for d in _config_dirs() for p in d.iterdir() if p.name.endswith(".yaml")})


def packaged_yaml(name: str) -> Path:
    """Path of a packaged YAML by file name or stem (works in wheels and source checkouts)."""
    filename = name if name.endswith(".yaml") else f"{name}.yaml"
    for directory in _config_dirs():
        candidate = directory / filename
        if candidate.is_file():
            with importlib.resources.as_file(candidate) as path:
                return Path(path)
    raise FileNotFoundError(f"no packaged recipe YAML {filename!r}; available: {', '.join(list_packaged_yamls())}")


def resolve_config(recipe: str | None, config: str | None) -> tuple[dict[str, Any], Path]:
    """Load the YAML for ``--recipe`` / ``--config`` and set its recipe target."""
    if recipe is None and config is None:
        raise SystemExit("bard finetune: give --recipe NAME and/or a config YAML")
    try:
        path = Path(config) if config else packaged_yaml(RECIPES[recipe][1] if recipe in RECIPES else recipe)
    except FileNotFoundError:
        raise SystemExit(
            f"bard finetune: unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)} or a packaged YAML "
            f"({', '.join(list_packaged_yamls())}), or pass your own YAML"
        ) from None
    if not path.is_file():
        raise SystemExit(f"bard finetune: config {path} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SystemExit(f"bard finetune: {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SystemExit(f"bard finetune: {path} must hold a mapping of sections, got {type(data).__name__}")
    if recipe in RECIPES:
        data["recipe"] = {"_target_": RECIPES[recipe][0]}
    elif recipe is not None and config is not None:
        raise SystemExit(f"bard finetune: unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    if "recipe" not in data:
        raise SystemExit(f"bard finetune: {path} names no recipe; pass --recipe {'|'.join(RECIPES)}")
    return data, path


def _default_backend(data: dict[str, Any]) -> None:
    """nccl needs CUDA: pick the backend from the hardware unless the YAML can run as given."""
    import torch

    dist_env = data.setdefault("dist_env", {}) or {}
    data["dist_env"] = dist_env
    backend = dist_env.get("backend")
    if backend in (None, "auto") or (backend == "nccl" and not torch.cuda.is_available()):
        dist_env["backend"] = "nccl" if torch.cuda.is_available() else "gloo"


def _recipe_class(target: Any) -> type:
    if isinstance(target, dict):
        target = target.get("_target_")
    module, _, name = str(target).rpartition(".")
    return getattr(importlib.import_module(module), name)


def run_in_process(config_path: str | Path, overrides: list[str]) -> Any:
    """Build and run the recipe of ``config_path`` in this process (rank of a torchrun job, or alone)."""
    from nemo_automodel.components.config._arg_parser import parse_args_and_load_config

    from nemo_automodel_bard._cpu_shim import apply_cpu_shims

    apply_cpu_shims()
    cfg = parse_args_and_load_config(str(config_path), argv=list(overrides))
    raw = yaml.safe_load(Path(config_path).read_text())
    recipe = _recipe_class(raw["recipe"])(cfg)
    recipe.setup()
    recipe.run_train_validation_loop()
    return recipe


def _validate(data: dict[str, Any], overrides: list[str]) -> None:
    """Every model-free check on the YAML + overrides: ``check_config`` (all problems in one
    message, model folders included), then the recipe's own ``validate_config`` (if any)."""
    from nemo_automodel.components.config.loader import ConfigNode, translate_value

    from nemo_automodel_bard.recipes.config_check import check_config, plain_config

    try:
        recipe_cls = _recipe_class(data["recipe"])
    except (ImportError, AttributeError, ValueError):
        raise ValueError(f"recipe._target_: cannot import {data['recipe']!r}") from None
    node = ConfigNode(data)
    for override in overrides:
        key, _, value = override.lstrip("-").partition("=")
        node.set_by_dotted(key, translate_value(value))
    config = plain_config(node)
    if not recipe_cls.__module__.startswith("nemo_automodel_bard."):
        return  # AutoModel's own recipes (toy stage 0) check their configs themselves
    stage_cls = getattr(recipe_cls, "stage_recipe_cls", recipe_cls)
    check_config(config, getattr(stage_cls, "extra_config_sections", frozenset()), check_paths=True)
    if hasattr(recipe_cls, "validate_config"):
        recipe_cls.validate_config(config)


def _under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def _normalise_overrides(extra: list[str]) -> list[str]:
    """``--a.b value`` / ``--a.b=value`` -> ``--a.b=value`` (AutoModel's parser reads both)."""
    out, i = [], 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--"):
            raise SystemExit(f"bard finetune: unexpected argument {token!r} (overrides are --key.sub value)")
        if "=" in token or i + 1 >= len(extra) or extra[i + 1].startswith("--"):
            out.append(token if "=" in token else f"{token}=True")
            i += 1
        else:
            out.append(f"{token}={extra[i + 1]}")
            i += 2
    return out


_USAGE = (
    "usage: bard finetune [--recipe NAME] [--config CONFIG.yaml | CONFIG.yaml] [--nproc-per-node N] "
    "[--list] [--key.sub value ...]"
)


def parse_argv(argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Split our options from AutoModel-style overrides (argparse would eat override values)."""
    options: dict[str, Any] = {"recipe": None, "config": None, "nproc_per_node": None, "list": False}
    rest, i = [], 0
    flags = {"--recipe": "recipe", "--config": "config", "-c": "config",
             "--nproc-per-node": "nproc_per_node", "--nproc_per_node": "nproc_per_node"}
    while i < len(argv):
        token = argv[i]
        name, eq, value = token.partition("=")
        if name in flags:
            if not eq:
                if i + 1 >= len(argv):
                    raise SystemExit(f"bard finetune: {name} needs a value\n{_USAGE}")
                value, i = argv[i + 1], i + 1
            if flags[name] == "nproc_per_node":
                if not value.isdigit() or int(value) <= 0:
                    raise SystemExit(f"bard finetune: --nproc-per-node must be a positive integer, got {value!r}")
                value = int(value)
            options[flags[name]] = value
        elif token == "--list":
            options["list"] = True
        elif token in ("-h", "--help"):
            print(__doc__)
            raise SystemExit(0)
        elif not token.startswith("-") and options["config"] is None and token.endswith((".yaml", ".yml")):
            options["config"] = token
        else:
            rest.append(token)
        i += 1
    return options, rest


def main(argv: list[str] | None = None) -> int:
    options, extra = parse_argv(list(sys.argv[1:] if argv is None else argv))
    if options["list"]:
        print("\n".join(list_packaged_yamls()))
        return 0
    data, source = resolve_config(options["recipe"], options["config"])
    _default_backend(data)
    overrides = _normalise_overrides(extra)
    try:
        _validate(data, overrides)
    except ValueError as exc:  # ConfigKeyError and bad values: one clear message, before any model loads
        print(f"bard finetune: {source}: {exc}", file=sys.stderr)
        return 2

    # One resolved YAML per launch (per rank under torchrun: ranks never share the file).
    handle = tempfile.NamedTemporaryFile("w", prefix=f"bard_{source.stem}_", suffix=".yaml", delete=False)
    with handle:
        yaml.safe_dump(data, handle, sort_keys=False)
    try:
        nproc = options["nproc_per_node"] or 1
        if _under_torchrun() or nproc == 1:
            run_in_process(handle.name, overrides)
            return 0
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                   "-m", "nemo_automodel_bard.recipes.launch", handle.name, *overrides]
        logger.info("bard finetune: %s", " ".join(command))
        return subprocess.call(command)
    finally:
        os.unlink(handle.name)


if __name__ == "__main__":
    sys.exit(main())

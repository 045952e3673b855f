"""``bard finetune``: resolve a packaged or given YAML, apply overrides, run on CPU or GPU.

Usage::

    bard finetune --recipe bard_pbm                     # packaged recipes/bard_pbm_qwen3vl_4b.yaml
    bard finetune --recipe bard_pbm_tiny                # any packaged YAML by its stem
    bard finetune --recipe bard_pbm --config my.yaml    # your YAML, recipe target forced
    bard finetune my.yaml --nproc-per-node 2 --step_scheduler.max_steps 10 --optimizer.lr=1e-5
    bard finetune --recipe bard_pbm --nproc-per-node 8 --nnodes 4 --node-rank $SLURM_NODEID \
        --rdzv-endpoint $MASTER_ADDR:29500 --rdzv-id $SLURM_JOB_ID   # one such command per node

Overrides are AutoModel-style dotted keys (``--a.b value`` or ``--a.b=value``). With one
process the recipe runs in this process (AutoModel's own launcher refuses CPU-only
machines); with more, or with any of torchrun's multi-node options (``--nnodes``,
``--node-rank``, ``--rdzv-endpoint``, ``--rdzv-backend``, ``--rdzv-id``, ``--rdzv-conf``,
``--master-addr``, ``--master-port``, ``--max-restarts``), it re-executes itself under
``torchrun`` with them. Under an existing distributed environment (``RANK``, ``WORLD_SIZE``
and ``LOCAL_RANK`` set: a torchrun worker, or ``srun`` with one task per GPU exporting them)
every rank runs in-process. A YAML with a ``skypilot:`` or ``nemo_run:`` section is handed
to AutoModel's own launcher for that route. ``--dry-run`` prints what would run and stops.
``dist_env.backend`` defaults to nccl with CUDA, else gloo. AutoModel's own entry points work
too: ``torchrun --nproc-per-node N -m nemo_automodel.cli.app cfg.yaml``.
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

from nemo_automodel_bard.recipes.run_guard import CheckpointDirError

__all__ = [
    "RECIPES",
    "TORCHRUN_OPTIONS",
    "REMOTE_LAUNCHERS",
    "main",
    "packaged_yaml",
    "list_packaged_yamls",
    "resolve_config",
    "run_in_process",
    "torchrun_command",
]

logger = logging.getLogger(__name__)

# --recipe name -> (recipe class, default packaged YAML)
RECIPES = {
    "bard_pbm": ("nemo_automodel_bard.recipes.pbm.BardPBMRecipe", "bard_pbm_qwen3vl_4b.yaml"),
    "bard_swd": ("nemo_automodel_bard.recipes.swd.BardSWDRecipe", "bard_swd_qwen3vl_4b.yaml"),
}
# torchrun options passed through unchanged (multi-node rendezvous and restarts)
TORCHRUN_OPTIONS = ("nnodes", "node-rank", "rdzv-endpoint", "rdzv-backend", "rdzv-id", "rdzv-conf",
                    "master-addr", "master-port", "max-restarts")
# YAML sections that select one of AutoModel's remote launchers (nemo_automodel/cli/app.py)
REMOTE_LAUNCHERS = ("skypilot", "nemo_run")
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


def _validate(data: dict[str, Any], overrides: list[str], check_paths: bool = True) -> None:
    """Every model-free check on the YAML + overrides: ``check_config`` (all problems in one
    message, model folders included unless ``check_paths`` is False), then the recipe's own
    ``validate_config`` (if any)."""
    from nemo_automodel.components.config.loader import ConfigNode, translate_value

    from nemo_automodel_bard.recipes.config_check import check_config, plain_config

    try:
        recipe_cls = _recipe_class(data["recipe"])
    except (ImportError, AttributeError, ValueError):
        raise ValueError(f"recipe._target_: cannot import {data['recipe']!r}") from None
    # AutoModel's launcher removes its section before the recipe sees the YAML
    node = ConfigNode({k: v for k, v in data.items() if k not in REMOTE_LAUNCHERS})
    for override in overrides:
        key, _, value = override.lstrip("-").partition("=")
        node.set_by_dotted(key, translate_value(value))
    config = plain_config(node)
    if not recipe_cls.__module__.startswith("nemo_automodel_bard."):
        return  # AutoModel's own recipes (toy stage 0) check their configs themselves
    stage_cls = getattr(recipe_cls, "stage_recipe_cls", recipe_cls)
    check_config(config, getattr(stage_cls, "extra_config_sections", frozenset()), check_paths=check_paths)
    if hasattr(recipe_cls, "validate_config"):
        recipe_cls.validate_config(config)


def _under_torchrun() -> bool:
    """A rank of an existing job: torchrun's workers, or srun tasks that export these three."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


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
    "[--nnodes N --node-rank I --rdzv-endpoint HOST:PORT ...] [--dry-run] [--list] [--key.sub value ...]"
)


def _positive_int(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise SystemExit(f"bard finetune: {name} must be a positive integer, got {value!r}\n{_USAGE}")
    return number


def torchrun_command(options: dict[str, Any], config_path: str | Path, overrides: list[str]) -> list[str]:
    """The torchrun command of one node: ``--standalone`` on one node, the rendezvous options otherwise."""
    torchrun = dict(options.get("torchrun") or {})
    command = [sys.executable, "-m", "torch.distributed.run"]
    if not torchrun:
        command.append("--standalone")
    elif "rdzv-endpoint" in torchrun and "rdzv-backend" not in torchrun:
        torchrun["rdzv-backend"] = "c10d"  # torchrun's default (static) ignores --rdzv-endpoint
    command.append(f"--nproc-per-node={options.get('nproc_per_node') or 1}")
    command += [f"--{name}={value}" for name, value in torchrun.items()]
    return command + ["-m", "nemo_automodel_bard.recipes.launch", str(config_path), *overrides]


def _remote_launch(config_path: str, overrides: list[str]) -> int:
    """AutoModel's own CLI for a YAML with a ``skypilot:`` / ``nemo_run:`` section (it submits the job)."""
    from nemo_automodel.cli import app

    argv = sys.argv
    sys.argv = ["automodel", str(config_path), *overrides]
    try:
        return int(app.main() or 0)
    finally:
        sys.argv = argv


def parse_argv(argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Split our options from AutoModel-style overrides (argparse would eat override values)."""
    options: dict[str, Any] = {"recipe": None, "config": None, "nproc_per_node": None, "list": False,
                               "dry_run": False, "torchrun": {}}
    rest, i = [], 0
    flags = {"--recipe": "recipe", "--config": "config", "-c": "config",
             "--nproc-per-node": "nproc_per_node", "--nproc_per_node": "nproc_per_node"}
    flags.update({f"--{o}": f"torchrun:{o}" for o in TORCHRUN_OPTIONS})
    flags.update({f"--{o.replace('-', '_')}": f"torchrun:{o}" for o in TORCHRUN_OPTIONS})
    while i < len(argv):
        token = argv[i]
        name, eq, value = token.partition("=")
        if name in flags:
            if not eq:
                if i + 1 >= len(argv):
                    raise SystemExit(f"bard finetune: {name} needs a value\n{_USAGE}")
                value, i = argv[i + 1], i + 1
            key = flags[name]
            if key.startswith("torchrun:"):
                options["torchrun"][key.split(":", 1)[1]] = value
            else:
                options[key] = _positive_int(name, value) if key == "nproc_per_node" else value
        elif token == "--list":
            options["list"] = True
        elif token == "--dry-run":
            options["dry_run"] = True
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
    remote = [name for name in REMOTE_LAUNCHERS if data.get(name)]
    if not remote:  # a remote job picks its backend on its own hardware (dist_env.backend: auto)
        _default_backend(data)
    overrides = _normalise_overrides(extra)
    try:
        # Paths are the cluster's for a remote job, and a dry run only prints the command.
        _validate(data, overrides, check_paths=not (remote or options["dry_run"]))
    except ValueError as exc:  # ConfigKeyError and bad values: one clear message, before any model loads
        print(f"bard finetune: {source}: {exc}", file=sys.stderr)
        return 2

    # One resolved YAML per launch (per rank under torchrun: ranks never share the file).
    handle = tempfile.NamedTemporaryFile("w", prefix=f"bard_{source.stem}_", suffix=".yaml", delete=False)
    with handle:
        yaml.safe_dump(data, handle, sort_keys=False)
    try:
        if remote:
            if options["dry_run"]:
                print(f"bard finetune: would submit through AutoModel's {remote[0]} launcher: automodel {handle.name}")
                return 0
            return _remote_launch(handle.name, overrides)
        if _under_torchrun() or ((options["nproc_per_node"] or 1) == 1 and not options["torchrun"]):
            if options["dry_run"]:
                print(f"bard finetune: would run in-process (rank {os.environ.get('RANK', 0)} of "
                      f"{os.environ.get('WORLD_SIZE', 1)}): {data['recipe']} with {handle.name}")
                return 0
            try:
                run_in_process(handle.name, overrides)
            except CheckpointDirError as exc:  # folder in use, or not ours to resume: no traceback
                print(f"bard finetune: {exc}", file=sys.stderr)
                return 2
            return 0
        command = torchrun_command(options, handle.name, overrides)
        if options["dry_run"]:
            print("bard finetune: would run: " + " ".join(command))
            return 0
        logger.info("bard finetune: %s", " ".join(command))
        return subprocess.call(command)
    finally:
        os.unlink(handle.name)


if __name__ == "__main__":
    sys.exit(main())

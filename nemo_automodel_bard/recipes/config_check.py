"""The ``bard:`` and ``pbm:`` YAML sections, and the checks that reject unknown keys (D12).

```yaml
bard:
  block_size: 4              # PBM stages override it
  mask_token_id: null        # default: the model config's mask_token_id
  prompt_attention: null     # block | causal; default: the model config's (block, D3)
  attention: auto            # text attention: flex (BlockMask) | sdpa (dense bool mask) | auto (flex on CUDA)
  vision_lr_multiplier: 0.1  # vision tower LR = optimizer LR x this (needs lr_scheduler)
  noise: {schedule: mask, eps: 0.001}        # schedule: mask | mixed
  loss: {normalization: sample_mean, block_pad_weight: 0.5, chunk_tokens: 2048}   # or token_mean; chunk 0 = off
  packing: {pack_size: null, pad_to_multiple_of: 1}
  seed: null                 # noise seed; default: the top-level seed
  trust_checkpoint_dir: false  # resume a folder without our run id (recipes/run_guard.py)
pbm:
  stages:
    - {block_size: 4, max_steps: 1000}
    - {block_size: 8, max_steps: 1000, optimizer.lr: 1.0e-5}   # dotted keys override any section
```
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from nemo_automodel_bard.diffusion.loss import NORMALIZATIONS
from nemo_automodel_bard.diffusion.noise import NOISE_SCHEDULES

__all__ = [
    "AUTOMODEL_SECTIONS",
    "AUTOMODEL_SECTION_TREATMENT",
    "REPLACED_STOCK_TARGETS",
    "BARD_SECTIONS",
    "ConfigKeyError",
    "settings_from_mapping",
    "NoiseSettings",
    "LossSettings",
    "PackingSettings",
    "BardSettings",
    "ATTENTION_SETTINGS",
    "PBMStage",
    "PBMSettings",
    "check_top_level_keys",
    "check_config",
    "AUTOMODEL_TYPED_SECTIONS",
    "REQUIRED_SECTIONS",
    "plain_config",
]

# Top-level sections AutoModel 0.7's VLM recipe reads (recipes/vlm/finetune.py, base_recipe.py,
# _typed_config.py) and how BARD treats each; AutoModel validates their contents itself.
# kept: AutoModel's meaning; replaced: a stock value is swapped with a one-line warning;
# refused: a clear error before the model loads (docs/training.md, "Coming from an AutoModel VLM config").
AUTOMODEL_SECTION_TREATMENT: dict[str, str] = {
    "recipe": "kept: names the BARD recipe class",
    "seed": "kept: StatefulRNG seed; also the noise seed unless bard.seed",
    "rng": "kept: rng.seed is the run seed when `seed` is absent; _target_ must be StatefulRNG, ranked true",
    "dist_env": "kept: backend nccl becomes gloo without CUDA (auto: pick from the hardware)",
    "model": "kept: a Bard-VL checkpoint",
    "processor": "kept: built by AutoModel (min_pixels/max_pixels apply), used by the BARD dataset",
    "distributed": "kept",
    "loss_fn": "replaced: AutoModel losses give way to the 1/t-weighted block-diffusion CE (bard.loss)",
    "optimizer": "kept (bard.vision_lr_multiplier adds a param_group_overrides entry)",
    "clip_grad_norm": "kept",
    "lr_scheduler": "kept",
    "step_scheduler": "kept",
    "dataset": "kept: conversation builders and jsonl; wrapped into the BARD dataset (no next-token pretokenization)",
    "dataloader": "kept, but collate_fn: AutoModel collators give way to the BARD layout collator",
    "validation_dataset": "kept, as dataset",
    "validation_dataloader": "kept, as dataloader",
    "checkpoint": "kept",
    "wandb": "kept",
    "mlflow": "kept",
    "comet": "kept",
    "freeze_config": "kept: checked with AutoModel's parse_freeze_config before the model loads",
    "peft": "kept for one run; refused with several pbm.stages (each stage loads the previous full weights)",
    "compile": "kept",
    "fp8": "kept",
    "quantization": "kept",
    "prewarm": "kept",
    "mfu": "kept",
    "mtp": "kept (not used: Bard-VL has no MTP head)",
    "packed_sequence": "refused when pack_size > 0: AutoModel's VLM packing shifts labels; use bard.packing",
    "domain_mixture": "kept",
    "embedding_row_repair": "kept",
}
AUTOMODEL_SECTIONS = frozenset(AUTOMODEL_SECTION_TREATMENT)

# Stock ``_target_`` values BARD replaces (with a warning), by dotted key: (AutoModel's module
# prefix, what replaces it). Any other target there is refused (BARD cannot honour it).
REPLACED_STOCK_TARGETS: dict[str, tuple[str, str]] = {
    "dataloader.collate_fn": (
        "nemo_automodel.components.datasets.vlm.collate_fns.",
        "nemo_automodel_bard.data.collate.bard_collate (the [prompt | clean | noisy] layout; packing in bard.packing)",
    ),
    "validation_dataloader.collate_fn": (
        "nemo_automodel.components.datasets.vlm.collate_fns.",
        "nemo_automodel_bard.data.collate.bard_collate (the [prompt | clean | noisy] layout; packing in bard.packing)",
    ),
    "loss_fn": (
        "nemo_automodel.components.loss.",
        "the 1/t-weighted block-diffusion cross-entropy of the BARD recipe (bard.loss)",
    ),
}
BARD_SECTIONS = frozenset({"bard", "pbm"})


# bard.attention: `auto` is flex on CUDA and sdpa elsewhere (FlexAttention has no CPU backward).
ATTENTION_SETTINGS = ("auto", "flex", "sdpa")


class ConfigKeyError(ValueError):
    """An unknown or misplaced YAML key; the message names it (decision D12)."""


def settings_from_mapping(cls, node: Mapping[str, Any] | None, section: str):
    """Build a settings dataclass from a YAML section, rejecting unknown keys and wrong types by name (D12)."""
    values = dict(node or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigKeyError(f"unknown key(s) in `{section}:`: {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        problem = type_problem(value, hints.get(key, Any))
        if problem:
            raise ConfigKeyError(f"{section}.{key}: {problem}")
    return cls(**values)


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}


def _type_name(hint: Any) -> str:
    return _TYPE_NAMES.get(hint) or getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def type_problem(value: Any, hint: Any) -> str | None:
    """Why ``value`` does not fit the annotation ``hint`` (None if it does or the hint is too loose to check).

    YAML gives ints, floats, bools, strings, lists, dicts and null: ``4.5`` for an ``int`` is an
    error (no silent truncation), an int for a ``float`` is fine, a string for a ``Path`` too.
    """
    if hint is Any or isinstance(hint, typing.TypeVar):
        return None
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        options = typing.get_args(hint)
        if all(type_problem(value, option) for option in options):
            return f"expected {' or '.join(_type_name(o) for o in options)}, got {value!r} ({type(value).__name__})"
        return None
    if origin is Literal:
        allowed = typing.get_args(hint)
        return None if value in allowed else f"must be one of {list(allowed)}, got {value!r}"
    if hint is type(None):
        return None if value is None else f"expected null, got {value!r}"
    if origin in (list, tuple, set):
        return None if isinstance(value, (list, tuple)) else f"expected a list, got {value!r} ({type(value).__name__})"
    if origin is dict or hint is dict:
        return None if isinstance(value, Mapping) else f"expected a mapping, got {value!r} ({type(value).__name__})"
    if hint is bool:
        return None if isinstance(value, bool) else f"expected true or false, got {value!r} ({type(value).__name__})"
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"expected an integer, got {value!r} ({type(value).__name__})"
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"expected a number, got {value!r} ({type(value).__name__})"
    if hint is str:
        return None if isinstance(value, str) else f"expected a string, got {value!r} ({type(value).__name__})"
    if isinstance(hint, type) and issubclass(hint, Path):
        return None if isinstance(value, (str, Path)) else f"expected a path, got {value!r}"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        allowed = [m.value for m in hint] + [m.name for m in hint]
        return None if value in allowed or isinstance(value, hint) else f"must be one of {allowed}, got {value!r}"
    if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
        return None
    return None  # a type YAML cannot spell directly: left to its consumer


def plain_config(node: Any) -> Any:
    """ConfigNode / dict / list -> plain Python containers."""
    if hasattr(node, "to_yaml_dict"):
        return node.to_yaml_dict()
    if isinstance(node, Mapping):
        return {k: plain_config(v) for k, v in node.items()}
    if isinstance(node, list):
        return [plain_config(v) for v in node]
    return node


@dataclass(frozen=True)
class NoiseSettings:
    """``bard.noise``: the forward noise (diffusion/noise.py)."""

    schedule: Literal["mask", "mixed"] = "mask"
    eps: float = 1e-3

    def __post_init__(self) -> None:
        if self.schedule not in NOISE_SCHEDULES:
            raise ValueError(f"bard.noise.schedule must be one of {NOISE_SCHEDULES}, got {self.schedule!r}")
        if not 0.0 < float(self.eps) <= 1.0:
            raise ValueError(f"bard.noise.eps must be in (0, 1], got {self.eps}")


@dataclass(frozen=True)
class LossSettings:
    """``bard.loss``: normalisation of the 1/t-weighted CE (diffusion/loss.py), LM-head chunking.

    ``chunk_tokens``: scored positions per chunk of the LM head + loss, each chunk's logits
    recomputed in backward (diffusion/chunked_head.py); 0 computes all ``[N, V]`` logits at once.
    """

    normalization: Literal["sample_mean", "token_mean"] = "sample_mean"
    block_pad_weight: float = 0.5
    chunk_tokens: int = 2048

    def __post_init__(self) -> None:
        if self.chunk_tokens < 0:
            raise ValueError(f"bard.loss.chunk_tokens must be >= 0 (0 = no chunking), got {self.chunk_tokens}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"bard.loss.normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        if self.block_pad_weight < 0:
            raise ValueError("bard.loss.block_pad_weight must be >= 0")


@dataclass(frozen=True)
class PackingSettings:
    """``bard.packing``: our packer (AutoModel's VLM packing shifts labels and has no mask hook)."""

    pack_size: int | None = None
    pad_to_multiple_of: int = 1

    def __post_init__(self) -> None:
        if self.pack_size is not None and self.pack_size <= 0:
            raise ValueError("bard.packing.pack_size must be a positive number of tokens or null")
        if self.pad_to_multiple_of <= 0:
            raise ValueError("bard.packing.pad_to_multiple_of must be positive")


@dataclass(frozen=True)
class BardSettings:
    """``bard:``."""

    block_size: int = 4
    mask_token_id: int | None = None
    prompt_attention: Literal["block", "causal"] | None = None
    attention: Literal["auto", "flex", "sdpa"] = "auto"
    vision_lr_multiplier: float = 1.0
    noise: NoiseSettings = field(default_factory=NoiseSettings)
    loss: LossSettings = field(default_factory=LossSettings)
    packing: PackingSettings = field(default_factory=PackingSettings)
    seed: int | None = None
    trust_checkpoint_dir: bool = False  # resume a folder without our run id (recipes/run_guard.py)

    def __post_init__(self) -> None:
        if int(self.block_size) <= 0:
            raise ValueError(f"bard.block_size must be a positive integer, got {self.block_size}")
        if self.prompt_attention not in (None, "block", "causal"):
            raise ValueError(f"bard.prompt_attention must be block or causal, got {self.prompt_attention!r}")
        if self.attention not in ATTENTION_SETTINGS:
            raise ValueError(f"bard.attention must be one of {', '.join(ATTENTION_SETTINGS)}, got {self.attention!r}")
        if self.vision_lr_multiplier <= 0:
            raise ValueError("bard.vision_lr_multiplier must be > 0")

    @classmethod
    def from_mapping(cls, node: Mapping[str, Any] | None) -> "BardSettings":
        values = dict(plain_config(node) or {})
        for name, sub in (("noise", NoiseSettings), ("loss", LossSettings), ("packing", PackingSettings)):
            if name in values and not isinstance(values[name], sub):
                values[name] = settings_from_mapping(sub, values[name], f"bard.{name}")
        return settings_from_mapping(cls, values, "bard")


_STAGE_ALIASES = {"max_steps": "step_scheduler.max_steps"}


@dataclass(frozen=True)
class PBMStage:
    """One ``pbm.stages`` entry: its block size and dotted overrides of other sections."""

    block_size: int
    name: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, node: Mapping[str, Any], index: int, known_sections: frozenset[str]) -> "PBMStage":
        values = dict(plain_config(node))
        where = f"pbm.stages[{index}]"
        if "block_size" not in values:
            raise ConfigKeyError(f"{where}: `block_size` is required")
        block_size = values.pop("block_size")
        problem = type_problem(block_size, int)
        if problem:
            raise ConfigKeyError(f"{where}.block_size: {problem}")
        if block_size <= 0:
            raise ValueError(f"{where}.block_size must be positive")
        name = values.pop("name", None)
        overrides = {}
        for key, value in values.items():
            dotted = _STAGE_ALIASES.get(key, key)
            if "." not in dotted or dotted.split(".")[0] not in known_sections:
                raise ConfigKeyError(
                    f"unknown key `{key}` in {where}; use block_size, name, max_steps or a dotted key of a known "
                    f"section (e.g. optimizer.lr)"
                )
            if dotted.split(".")[0] in ("pbm", "recipe") or dotted in ("bard.block_size", "checkpoint.checkpoint_dir"):
                raise ConfigKeyError(f"{where}: `{key}` cannot be set per stage")
            overrides[dotted] = value
        return cls(block_size=block_size, name=name, overrides=overrides)


@dataclass(frozen=True)
class PBMSettings:
    """``pbm:`` (Progressive Block Merging): stages run in order, each from the previous weights."""

    stages: tuple[PBMStage, ...] = ()

    @classmethod
    def from_mapping(cls, node: Mapping[str, Any] | None, known_sections: frozenset[str]) -> "PBMSettings":
        values = dict(plain_config(node) or {})
        unknown = sorted(set(values) - {"stages"})
        if unknown:
            raise ConfigKeyError(f"unknown key(s) in `pbm:`: {', '.join(unknown)}; allowed: stages")
        stages = values.get("stages") or []
        if isinstance(stages, str):  # a command-line override: --pbm.stages '[{block_size: 4}]'
            import yaml

            stages = yaml.safe_load(stages) or []
        if not isinstance(stages, list):
            raise ValueError("pbm.stages must be a list of {block_size: ..., ...}")
        return cls(tuple(PBMStage.from_mapping(s, i, known_sections) for i, s in enumerate(stages)))


def check_top_level_keys(config: Mapping[str, Any], extra_sections: frozenset[str] = frozenset()) -> None:
    """Reject top-level sections no recipe reads, naming them (decision D12)."""
    known = AUTOMODEL_SECTIONS | BARD_SECTIONS | extra_sections
    unknown = sorted(set(config) - known)
    if unknown:
        raise ConfigKeyError(f"unknown top-level YAML key(s): {', '.join(unknown)}")
    packed = config.get("packed_sequence") or {}
    if isinstance(packed, Mapping) and packed.get("pack_size"):
        raise ConfigKeyError(
            "packed_sequence.pack_size: AutoModel's VLM packing shifts labels and only builds block-causal masks; "
            "use bard.packing.pack_size instead"
        )


# ---------------------------------------------------------------------------------------------
# The whole config, before any model loads: every problem found, in one message.

# Sections AutoModel 0.7 parses into typed configs (recipes/_typed_config.py): the dataclass whose
# fields are the accepted keys, plus the keys AutoModel reads beside them.
AUTOMODEL_TYPED_SECTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "step_scheduler": (
        "nemo_automodel.components.training.step_scheduler:StepSchedulerConfig",
        {"local_batch_size": int, "dp_size": int | None, "dataloader": Any},
    ),
    "lr_scheduler": ("nemo_automodel.components.optim.optimizer:LRSchedulerConfig", {}),
    "checkpoint": ("nemo_automodel.components.checkpoint.config:CheckpointingConfig", {"restore_from": str | None}),
}
# Sections a recipe cannot run without.
REQUIRED_SECTIONS = ("model", "dataset", "optimizer")
# Sections whose ``_target_`` is imported by AutoModel: a typo is reported here, not after loading.
_TARGET_SECTIONS = ("model", "optimizer", "dataset", "validation_dataset", "teacher_model")
_MODEL_PATH_SECTIONS = ("model", "teacher_model")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _load(spec: str) -> Any:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _section_problems(section: str, node: Any) -> list[str]:
    spec, extra = AUTOMODEL_TYPED_SECTIONS[section]
    if not isinstance(node, Mapping):
        return [f"`{section}:` must be a mapping, got {node!r}"]
    cls = _load(spec)
    hints = {**typing.get_type_hints(cls), **extra}
    problems = []
    for key, value in node.items():
        if key == "_target_":
            continue
        if key not in hints:
            problems.append(f"unknown key `{section}.{key}` (AutoModel accepts: {', '.join(sorted(hints))})")
            continue
        problem = type_problem(value, hints[key])
        if problem:
            problems.append(f"{section}.{key}: {problem}")
    return problems


def _distributed_problems(node: Any) -> list[str]:
    if node is None:
        return []
    if not isinstance(node, Mapping):
        return [f"`distributed:` must be a mapping, got {node!r}"]
    from nemo_automodel.recipes._dist_utils import parse_distributed_section

    try:  # AutoModel's own parser: builds the strategy dataclass, no process group, no model
        parse_distributed_section(dict(node))
    except (TypeError, ValueError, KeyError) as exc:
        return [f"distributed: {exc}"]
    return []


def _target_problems(section: str, node: Any) -> list[str]:
    if not isinstance(node, Mapping) or not isinstance(node.get("_target_"), str):
        return []
    target = node["_target_"]
    module, _, attr = target.rpartition(".")
    try:
        owner = importlib.import_module(module)
    except ImportError:
        # `package.Class.method`: import the class's module, then walk the attributes.
        head, _, cls_name = module.rpartition(".")
        try:
            owner = getattr(importlib.import_module(head), cls_name)
        except (ImportError, AttributeError, ValueError):
            return [f"{section}._target_: cannot import {target!r}"]
    if not hasattr(owner, attr):
        return [f"{section}._target_: {module!r} has no {attr!r}"]
    return []


def model_path_problem(key: str, value: Any) -> str | None:
    """A ``pretrained_model_name_or_path`` that is neither an existing folder nor a Hub id."""
    if not isinstance(value, str) or "${" in value:
        return None
    path = Path(value).expanduser()
    if path.exists():
        return None if path.is_dir() else f"{key}: {value} is not a folder"
    if _HUB_ID.match(value) and not value.startswith((".", "~")):
        return None  # a Hub id (or a relative folder that is missing: the Hub lookup says so)
    return f"{key}: folder not found: {value}"


def _warmup_problems(config: Mapping[str, Any], pbm: PBMSettings | None) -> list[str]:
    steps = (config.get("step_scheduler") or {}).get("max_steps") if isinstance(config.get("step_scheduler"), Mapping) else None
    warmup = (config.get("lr_scheduler") or {}).get("lr_warmup_steps") if isinstance(config.get("lr_scheduler"), Mapping) else None
    runs = [("step_scheduler.max_steps", steps, warmup)]
    for index, stage in enumerate(pbm.stages if pbm else ()):
        runs.append((
            f"pbm.stages[{index}].max_steps",
            stage.overrides.get("step_scheduler.max_steps", steps),
            stage.overrides.get("lr_scheduler.lr_warmup_steps", warmup),
        ))
    problems = []
    for key, max_steps, warm in runs:
        numbers = all(isinstance(v, int) and not isinstance(v, bool) for v in (max_steps, warm))
        if numbers and max_steps < warm:
            problems.append(
                f"{key} ({max_steps}) is below lr_scheduler.lr_warmup_steps ({warm}): the run would end inside "
                "the warm-up; raise max_steps or lower lr_warmup_steps"
            )
    return problems


def _collect(problems: list[str], check, *args) -> Any:
    try:
        return check(*args)
    except (ValueError, TypeError) as exc:
        problems.append(str(exc))
        return None


def check_config(config: Mapping[str, Any], extra_sections: frozenset[str] = frozenset(), *,
                 check_paths: bool = False) -> None:
    """Every model-free check of a recipe config; one ``ConfigKeyError`` listing all problems.

    Unknown top-level sections, ``bard:``/``pbm:``/``teacher:``/``distill:`` keys and types,
    the keys and types of the sections AutoModel parses into typed configs, ``distributed:``
    through AutoModel's own parser, missing sections, importable ``_target_``s, ``max_steps``
    below the warm-up and (``check_paths``) local model folders that do not exist.
    """
    problems: list[str] = []
    _collect(problems, check_top_level_keys, config, extra_sections)
    for section in REQUIRED_SECTIONS:
        if not config.get(section):
            problems.append(f"missing section `{section}:`")
    _collect(problems, BardSettings.from_mapping, config.get("bard"))
    pbm = _collect(problems, PBMSettings.from_mapping, config.get("pbm"), AUTOMODEL_SECTIONS | BARD_SECTIONS | extra_sections)
    for section in AUTOMODEL_TYPED_SECTIONS:
        if config.get(section) is not None:
            problems += _section_problems(section, config[section])
    for index, stage in enumerate(pbm.stages if pbm else ()):
        for dotted, value in stage.overrides.items():
            section, _, key = dotted.partition(".")
            if section in AUTOMODEL_TYPED_SECTIONS and "." not in key:
                problems += [f"pbm.stages[{index}]: {problem}" for problem in _section_problems(section, {key: value})]
    problems += _distributed_problems(config.get("distributed"))
    for section in _TARGET_SECTIONS:
        problems += _target_problems(section, config.get(section))
    if {"teacher", "distill", "teacher_model"} & set(config):
        from nemo_automodel_bard.recipes.swd_config import swd_section_problems

        problems += swd_section_problems(config)
    problems += _warmup_problems(config, pbm)
    if check_paths:
        teacher = config.get("teacher")
        # kind None: AutoModel's CLI parser reads `--teacher.kind=none` as None (TeacherSettings: "none")
        no_teacher = isinstance(teacher, Mapping) and (teacher.get("kind", "anchor") or "none") == "none"
        unused = {"teacher_model"} if no_teacher else set()
        for section in _MODEL_PATH_SECTIONS:
            node = config.get(section) if section not in unused else None  # teacher.kind none loads no teacher
            if isinstance(node, Mapping):
                problem = model_path_problem(f"{section}.pretrained_model_name_or_path", node.get("pretrained_model_name_or_path"))
                if problem:
                    problems.append(problem)
    if problems:
        unique = list(dict.fromkeys(problems))
        raise ConfigKeyError(f"{len(unique)} problem(s) in the config:\n  - " + "\n  - ".join(unique))

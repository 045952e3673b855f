"""The ``bard:`` and ``pbm:`` YAML sections, and the checks that reject unknown keys (D12).

```yaml
bard:
  block_size: 4              # PBM stages override it
  mask_token_id: null        # default: the model config's mask_token_id
  prompt_attention: null     # block | causal; default: the model config's (block, D3)
  attention: auto            # text attention: flex (BlockMask) | sdpa (dense bool mask) | auto (flex on CUDA)
  vision_lr_multiplier: 0.1  # vision tower LR = optimizer LR x this (needs lr_scheduler)
  noise: {schedule: mask, eps: 0.001}        # schedule: mask | mixed
  loss: {normalization: sample_mean, block_pad_weight: 0.5}   # or token_mean
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
from dataclasses import dataclass, field
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
    """Build a settings dataclass from a YAML section, rejecting unknown keys by name (D12)."""
    values = dict(node or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigKeyError(f"unknown key(s) in `{section}:`: {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
    return cls(**values)


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
    """``bard.loss``: normalisation of the 1/t-weighted CE (diffusion/loss.py)."""

    normalization: Literal["sample_mean", "token_mean"] = "sample_mean"
    block_pad_weight: float = 0.5

    def __post_init__(self) -> None:
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
        block_size = int(values.pop("block_size"))
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

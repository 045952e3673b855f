"""``--model_args`` of ``--model bard_vl``: every key parsed and checked before any weights load.

lmms-eval hands ``model_args`` over as strings (``key=value,...``) or, from Python, as typed
values; :func:`parse_model_args` accepts both, rejects unknown keys by name (a typo such as
``confidence_treshold`` must not silently run with the default) and checks every value, so a
bad run fails when the model is constructed instead of at the first request.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

__all__ = ["DECODINGS", "EvalSettings", "parse_model_args", "read_model_type"]

DECODINGS = ("bard", "ar")
_REMASKING = ("low_confidence_dynamic", "low_confidence_static")
_ATTENTION = ("sdpa", "eager")
_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class EvalSettings:
    """Validated ``model_args`` (see docs/lmms_eval.md for the meaning of each)."""

    pretrained: str
    decoding: str = "bard"
    block_size: int = 32
    denoising_steps: int | None = None  # None: = block_size
    remasking_strategy: str = "low_confidence_dynamic"
    confidence_threshold: float = 0.9
    revision_threshold: float = 0.0  # token revision (generate's revision_threshold; 0 = off)
    max_new_tokens: int = 1024
    system_prompt: str | None = None  # None: whatever the checkpoint's chat template does
    min_pixels: int | None = None
    max_pixels: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    attn_implementation: str = "sdpa"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _int(name: str, value: Any, minimum: int = 1) -> int:
    """An integer >= ``minimum``; ``4.5`` or ``"4.5"`` is an error, not 4."""
    if isinstance(value, bool):
        raise ValueError(f"model_args {name} must be an integer >= {minimum}, got {value!r}")
    try:
        number = int(value) if isinstance(value, int) else int(str(value).strip())
    except ValueError:
        raise ValueError(f"model_args {name} must be an integer >= {minimum}, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"model_args {name} must be an integer >= {minimum}, got {value!r}")
    return number


def _optional_int(name: str, value: Any) -> int | None:
    return None if value is None or str(value).strip() in ("", "None", "none") else _int(name, value)


def _unit_float(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"model_args {name} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"model_args {name} must be a number in [0, 1], got {value!r}")
    return number


def _choice(name: str, choices: tuple[str, ...]) -> Callable[[str, Any], str]:
    def parse(_: str, value: Any) -> str:
        if str(value) not in choices:
            raise ValueError(f"model_args {name} must be one of {list(choices)}, got {value!r}")
        return str(value)

    return parse


def _device(name: str, value: Any) -> str:
    text = str(value)
    if text in ("auto", "cpu") or text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise ValueError(f"model_args {name} must be auto, cpu, cuda or cuda:N, got {value!r}")


def _system_prompt(_: str, value: Any) -> str | None:
    """None/"None": the chat template decides; "" : no system turn; a file path: its text."""
    if value is None or value == "None":
        return None
    text = str(value)
    if text and len(text) < 4096 and Path(text).is_file():
        return Path(text).read_text(encoding="utf-8")
    return text


def _pretrained(_: str, value: Any) -> str:
    path = Path(str(value)).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"model_args pretrained={value!r}: folder not found (give a local checkpoint folder)")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model_args pretrained={value!r}: no config.json in that folder (not a checkpoint)")
    return str(path)


_PARSERS: dict[str, Callable[[str, Any], Any]] = {
    "pretrained": _pretrained,
    "decoding": _choice("decoding", DECODINGS),
    "block_size": _int,
    "denoising_steps": _optional_int,
    "remasking_strategy": _choice("remasking_strategy", _REMASKING),
    "confidence_threshold": _unit_float,
    "revision_threshold": _unit_float,
    "max_new_tokens": _int,
    "system_prompt": _system_prompt,
    "min_pixels": _optional_int,
    "max_pixels": _optional_int,
    "device": _device,
    "dtype": _choice("dtype", _DTYPES),
    "attn_implementation": _choice("attn_implementation", _ATTENTION),
}


def read_model_type(pretrained: str) -> str:
    """``model_type`` of the checkpoint's ``config.json`` ("" when absent)."""
    try:
        return str(json.loads((Path(pretrained) / "config.json").read_text(encoding="utf-8")).get("model_type", ""))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"model_args pretrained={pretrained!r}: config.json is not readable JSON ({exc})") from None


def _check_combination(settings: EvalSettings) -> None:
    steps = settings.denoising_steps or settings.block_size
    if settings.revision_threshold >= 1.0 or (settings.revision_threshold > 0
                                              and settings.remasking_strategy != "low_confidence_dynamic"):
        raise ValueError(f"model_args revision_threshold={settings.revision_threshold} must be in [0, 1) and needs "
                         "remasking_strategy=low_confidence_dynamic")
    if settings.remasking_strategy == "low_confidence_static" and steps > settings.block_size:
        raise ValueError(
            f"model_args denoising_steps={steps} must be <= block_size={settings.block_size} with "
            "low_confidence_static (every step commits at least one token)"
        )
    model_type = read_model_type(settings.pretrained)
    if settings.decoding == "bard" and model_type != "bard_vl":
        raise ValueError(
            f"model_args pretrained={settings.pretrained!r} is a {model_type or 'unknown'!r} checkpoint, not Bard-VL: "
            "convert it with `bard convert`, or pass decoding=ar to decode it autoregressively"
        )
    if settings.decoding == "ar" and model_type == "bard_vl":
        raise ValueError(
            f"model_args decoding=ar needs the autoregressive source checkpoint; pretrained={settings.pretrained!r} "
            "is a Bard-VL (block-diffusion) checkpoint"
        )


def parse_model_args(raw: dict[str, Any]) -> EvalSettings:
    """Check and convert ``raw`` (strings or typed values); unknown keys are an error naming them."""
    unknown = sorted(set(raw) - set(_PARSERS))
    if unknown:
        hint = " (batch_size is lmms-eval's own --batch_size option)" if "batch_size" in unknown else ""
        raise ValueError(f"unknown bard_vl model_args {unknown}{hint}; valid keys: {sorted(_PARSERS)}")
    if "pretrained" not in raw:
        raise ValueError("model_args pretrained=CHECKPOINT_FOLDER is required")
    settings = EvalSettings(**{key: _PARSERS[key](key, value) for key, value in raw.items()})
    _check_combination(settings)
    return settings

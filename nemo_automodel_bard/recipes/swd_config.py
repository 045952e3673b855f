"""SWD settings (YAML ``teacher:`` and ``distill:`` sections) and the teacher-compatibility check.

Kept apart from the recipe so that both can be read, and tested, without building models.

```yaml
teacher:                # who teaches
  kind: anchor          # anchor (small-block Bard-VL) | ar (original Qwen3-VL) | none (plain SFT)
  block_size: 4         # anchor's block size; default: the teacher config's block_size
  offload: false        # keep the teacher on CPU between its forwards (AutoModel's KD offload)
  allow_hidden_size_mismatch: false   # logit KD works across sizes (upstream: 8B -> 2B/4B)
teacher_model: {...}    # built exactly like `model:` (AutoModel KD key); unused for kind none
distill:                # the loss: ce_weight * CE + kl_weight * top-k KL
  kl_weight: 0.5
  ce_weight: 1.0
  top_k: 16
  temperature: 1.0
  student_support: full # full (upstream's form, default) | topk (see diffusion/distill.py)
  ce_inverse_t: false   # keep PBM's 1/t weight on the CE term (upstream SWD drops it)
```
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

from nemo_automodel_bard.recipes.config_check import ConfigKeyError, settings_from_mapping

TeacherKind = Literal["anchor", "ar", "none"]

__all__ = [
    "TeacherKind",
    "TeacherSettings",
    "DistillSettings",
    "TeacherMismatchError",
    "check_teacher_compatible",
    "anchor_block_size",
    "swd_section_problems",
]


class TeacherMismatchError(ValueError):
    """The teacher cannot teach this student (different vocabulary, sizes, mask token or kind)."""


@dataclass(frozen=True)
class TeacherSettings:
    """YAML ``teacher:``."""

    kind: TeacherKind | None = "anchor"
    block_size: int | None = None
    offload: bool = False
    allow_hidden_size_mismatch: bool = False

    def __post_init__(self) -> None:
        if self.kind is None:  # AutoModel's CLI parser reads `--teacher.kind=none` as None
            object.__setattr__(self, "kind", "none")
        if self.kind not in ("anchor", "ar", "none"):
            raise ValueError(f"teacher.kind must be anchor, ar or none; got {self.kind!r}")
        if self.block_size is not None and (not isinstance(self.block_size, int) or self.block_size <= 0):
            raise ValueError(f"teacher.block_size must be a positive integer, got {self.block_size}")

    @classmethod
    def from_mapping(cls, node: Mapping[str, Any] | None) -> "TeacherSettings":
        return settings_from_mapping(cls, node, "teacher")


@dataclass(frozen=True)
class DistillSettings:
    """YAML ``distill:`` (defaults: bard_spec.md section 6)."""

    kl_weight: float = 0.5
    ce_weight: float = 1.0
    top_k: int = 16
    temperature: float = 1.0
    # Upstream normalises the student over the whole vocabulary (bard_spec.md section 6); topk
    # (renormalised on the teacher's top-k, zero gradient outside it) is the measured option.
    student_support: Literal["topk", "full"] = "full"
    ce_inverse_t: bool = False

    def __post_init__(self) -> None:
        if self.top_k <= 0 or self.temperature <= 0:
            raise ValueError(f"distill.top_k and distill.temperature must be > 0; got {self.top_k}, {self.temperature}")
        if self.student_support not in ("topk", "full"):
            raise ValueError(f"distill.student_support must be topk or full; got {self.student_support!r}")
        if self.kl_weight < 0 or self.ce_weight < 0:
            raise ValueError("distill.kl_weight and distill.ce_weight must be >= 0")

    @classmethod
    def from_mapping(cls, node: Mapping[str, Any] | None) -> "DistillSettings":
        return settings_from_mapping(cls, node, "distill")


def _text_field(config: Any, name: str) -> Any:
    """A language-model field of a VLM config (``text_config``) or of a text config."""
    text = getattr(config, "text_config", None)
    value = getattr(text, name, None) if text is not None else None
    return value if value is not None else getattr(config, name, None)


def check_teacher_compatible(student_config: Any, teacher_config: Any, settings: TeacherSettings) -> None:
    """Refuse, with the reason, a teacher whose logits cannot be compared with the student's.

    Checked: the vocabulary (logits index the same tokens), the hidden size (unless
    ``allow_hidden_size_mismatch``: logit KD itself does not need it, but a different size
    usually means the wrong checkpoint), the mask token (an anchor must read the noisy copy
    the way the student does; an AR teacher needs an embedding row for it), and the kind
    (an anchor must be a Bard-VL; an AR teacher must not be one: its logits are unshifted).

    Raises:
        TeacherMismatchError
    """
    if settings.kind == "none":
        return
    problems = []
    s_vocab, t_vocab = _text_field(student_config, "vocab_size"), _text_field(teacher_config, "vocab_size")
    if s_vocab != t_vocab:
        problems.append(f"vocab_size differs (student {s_vocab}, teacher {t_vocab}): logits index different tokens")
    s_hidden, t_hidden = _text_field(student_config, "hidden_size"), _text_field(teacher_config, "hidden_size")
    if s_hidden != t_hidden and not settings.allow_hidden_size_mismatch:
        problems.append(
            f"hidden_size differs (student {s_hidden}, teacher {t_hidden}); set "
            "teacher.allow_hidden_size_mismatch: true if a larger/smaller teacher is intended"
        )
    s_mask = getattr(student_config, "mask_token_id", None)
    t_type = getattr(teacher_config, "model_type", None)
    is_bard = t_type == "bard_vl"
    if settings.kind == "anchor":
        if not is_bard:
            problems.append(f"teacher.kind anchor needs a Bard-VL teacher; got model_type {t_type!r} (use kind: ar)")
        elif getattr(teacher_config, "mask_token_id", None) != s_mask:
            problems.append(
                f"mask_token_id differs (student {s_mask}, teacher {getattr(teacher_config, 'mask_token_id', None)})"
            )
    elif is_bard:
        problems.append(
            "teacher.kind ar needs the autoregressive Qwen3-VL; the teacher is a Bard-VL (use kind: anchor)"
        )
    elif s_mask is not None and t_vocab is not None and s_mask >= t_vocab:
        problems.append(f"the AR teacher has no embedding row for mask token {s_mask} (vocab {t_vocab})")
    if problems:
        raise TeacherMismatchError("teacher refused: " + "; ".join(problems))


def anchor_block_size(settings: TeacherSettings, teacher_config: Any, student_block_size: int) -> int:
    """The anchor's block size: ``teacher.block_size``, else the teacher config's ``block_size``."""
    size = settings.block_size or getattr(teacher_config, "block_size", None)
    if size is None:
        raise ValueError("teacher.block_size is required when the teacher config has no block_size")
    if size > student_block_size:
        raise ValueError(f"the anchor's block size {size} exceeds the student's {student_block_size}")
    return int(size)


def swd_section_problems(config: Mapping[str, Any]) -> list[str]:
    """Model-free problems of ``teacher:``, ``distill:`` and ``teacher_model:`` (for ``check_config``)."""
    problems = []
    for section, cls in (("teacher", TeacherSettings), ("distill", DistillSettings)):
        try:
            cls.from_mapping(config.get(section))
        except (ValueError, TypeError) as exc:
            problems.append(str(exc))
    teacher = config.get("teacher") if isinstance(config.get("teacher"), Mapping) else {}
    kind = teacher.get("kind", "anchor") or "none"
    if kind != "none" and not config.get("teacher_model"):
        problems.append(f"teacher.kind {kind} needs a `teacher_model:` section (or teacher.kind: none)")
    return problems

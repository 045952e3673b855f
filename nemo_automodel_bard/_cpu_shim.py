"""The few patches NeMo AutoModel 0.7.0 needs to train on a machine without CUDA.

Applied only when CUDA is unavailable (never on a GPU machine), idempotent, all in one
place (automodel_notes.md section 5).
"""

from __future__ import annotations

import functools

import torch

_APPLIED = False


def apply_cpu_shims() -> bool:
    """Patch torch.cuda memory/device queries and AutoModel's device placement for CPU runs.

    Returns True when the shims are (now or already) active, False on a CUDA machine.
    """
    global _APPLIED
    if torch.cuda.is_available():
        return False
    if _APPLIED:
        return True
    # AutoModel calls these unconditionally for its memory metrics.
    torch.cuda.reset_peak_memory_stats = lambda *a, **k: None
    torch.cuda.max_memory_allocated = lambda *a, **k: 0
    torch.cuda.memory_allocated = lambda *a, **k: 0
    # from_config / from_pretrained build torch.device("cuda", current_device()).
    torch.cuda.current_device = lambda: 0

    import nemo_automodel._transformers.auto_model as auto_model

    original = auto_model.apply_model_infrastructure

    @functools.wraps(original)
    def _on_cpu(*args, **kwargs):
        # Without this the int device 0 makes to_empty() target a missing accelerator.
        kwargs["device"] = torch.device("cpu")
        return original(*args, **kwargs)

    auto_model.apply_model_infrastructure = _on_cpu
    _APPLIED = True
    return True

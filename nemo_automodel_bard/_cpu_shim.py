"""The few patches NeMo AutoModel 0.7.0 needs to train on a machine without CUDA.

Applied only when CUDA is unavailable (never on a GPU machine), idempotent, all in one
place (automodel_notes.md section 5). Each was verified necessary with torch 2.14.1 (CPU-only
machine), by running the tiny PBM recipe with that one patch removed:

1. ``torch.cuda.reset_peak_memory_stats`` raises ``RuntimeError: invalid argument`` (called
   first thing in the VLM recipe's ``setup`` and after every logged step);
2. ``torch.cuda.current_device`` raises ``Found no NVIDIA driver`` (``from_pretrained`` /
   ``from_config`` build ``torch.device("cuda", current_device())``);
3. AutoModel's ``apply_model_infrastructure`` is then handed ``cuda:0`` and moves the model
   there (``no NVIDIA driver`` again): forced to CPU.

``torch.cuda.max_memory_allocated`` / ``memory_allocated`` already return 0 without CUDA.
"""

from __future__ import annotations

import functools

import torch

_APPLIED = False


def apply_cpu_shims() -> bool:
    """Patch the CUDA queries and AutoModel's device placement for CPU runs.

    Returns True when the shims are (now or already) active, False on a CUDA machine.
    """
    global _APPLIED
    if torch.cuda.is_available():
        return False
    if _APPLIED:
        return True
    torch.cuda.reset_peak_memory_stats = lambda *a, **k: None
    torch.cuda.current_device = lambda: 0

    import nemo_automodel._transformers.auto_model as auto_model

    original = auto_model.apply_model_infrastructure

    @functools.wraps(original)
    def _on_cpu(*args, **kwargs):
        kwargs["device"] = torch.device("cpu")
        return original(*args, **kwargs)

    auto_model.apply_model_infrastructure = _on_cpu
    _APPLIED = True
    return True

"""Bard-VL: config, model and their registration.

Importing this package registers (idempotently):

* ``bard_vl`` with transformers' ``AutoConfig`` and ``AutoModelForImageTextToText``, so a
  released checkpoint (``model_type: bard_vl``) loads through the auto classes;
* ``BardVLProcessor`` with ``AutoProcessor`` (used when the checkpoint's processor files name
  ``BardVLProcessor`` or no processor class; released checkpoints name ``Qwen3VLProcessor``
  until ``bard convert --processor-only DIR`` renames it, see processor_files.py);
* ``BardVLForConditionalGeneration`` and the released checkpoints' misspelled
  ``BardVLForConditonalGeneration`` (decision D1) in NeMo AutoModel's architecture registry
  (the package's entry points declare the same names for processes that never import us).
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from nemo_automodel_bard.models.bard_vl.configuration import BardVLConfig
from nemo_automodel_bard.models.bard_vl.modeling import BardVLForConditionalGeneration
from nemo_automodel_bard.models.bard_vl.processing import BardVLProcessor

__all__ = ["BardVLConfig", "BardVLForConditionalGeneration", "BardVLProcessor", "ARCHITECTURE_NAMES", "register"]

# architectures[0] values that dispatch to our class (the second is upstream's typo, D1).
ARCHITECTURE_NAMES = ("BardVLForConditionalGeneration", "BardVLForConditonalGeneration")


def register() -> None:
    """Register config and model with transformers and NeMo AutoModel (safe to call twice)."""
    AutoConfig.register(BardVLConfig.model_type, BardVLConfig, exist_ok=True)
    AutoModelForImageTextToText.register(BardVLConfig, BardVLForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(BardVLConfig, BardVLProcessor, exist_ok=True)
    import nemo_automodel

    for name in ARCHITECTURE_NAMES:
        nemo_automodel.register_architecture(name, BardVLForConditionalGeneration, exist_ok=True)


register()

"""nemo-automodel-bard: BARD block-diffusion VLMs (Qwen3-VL -> Bard-VL) for NeMo AutoModel.

Importing the package registers ``bard_vl`` with transformers' auto classes and
``BardVLForConditionalGeneration`` with AutoModel's architecture registry.
"""

from nemo_automodel_bard.models import bard_vl as _bard_vl  # noqa: F401  (import registers the model)

__version__ = "0.1.0"
__all__ = ["BardVLConfig", "BardVLForConditionalGeneration", "BardVLProcessor", "__version__"]


def __getattr__(name: str):
    if name in ("BardVLConfig", "BardVLForConditionalGeneration", "BardVLProcessor"):
        return getattr(_bard_vl, name)
    raise AttributeError(f"module 'nemo_automodel_bard' has no attribute {name!r}")

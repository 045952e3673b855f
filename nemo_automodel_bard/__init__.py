"""nemo-automodel-bard: BARD block-diffusion VLMs (Qwen3-VL -> Bard-VL) for NeMo AutoModel.

Importing the package registers ``bard_vl`` with transformers' auto classes and
``BardVLForConditionalGeneration`` with AutoModel's architecture registry.
"""

from nemo_automodel_bard.models.bard_vl import BardVLConfig, BardVLForConditionalGeneration  # noqa: F401  (registers)

__version__ = "0.1.0"
__all__ = ["BardVLConfig", "BardVLForConditionalGeneration", "__version__"]

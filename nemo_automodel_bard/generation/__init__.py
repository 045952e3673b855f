"""Exact-cache, batched block-diffusion decoding for Bard-VL (``model.generate``)."""

from nemo_automodel_bard.generation.block_decode import REMASKING_STRATEGIES, block_generate
from nemo_automodel_bard.generation.stats import StepStats

__all__ = ["block_generate", "StepStats", "REMASKING_STRATEGIES"]

"""lmms-eval model ``bard_vl``: Bard-VL block-diffusion decoding behind lmms-eval's ``lmms`` API.

Importing this module needs ``lmms-eval`` (``pip install lmms-eval``). lmms-eval finds the
model through the ``lmms_eval.models`` entry point (``bard_vl =
"nemo_automodel_bard.eval.lmms_model:manifest"``); where that entry point is not installed,
``python -m nemo_automodel_bard.eval [lmms_eval args]`` registers it in-process and runs
lmms-eval's CLI::

    lmms_eval --model bard_vl \\
        --model_args pretrained=DIR,block_size=32,denoising_steps=32,confidence_threshold=0.9 \\
        --tasks mmstar --batch_size 1

Only ``generate_until`` is implemented: a block-diffusion model has no exact per-token
log-likelihood, so ``loglikelihood`` tasks are refused. Requests run one at a time (batch 1,
as upstream); the throughput over the run (tokens, forwards, TPF, tokens/s) is logged at the
end of each ``generate_until`` call.
"""

from __future__ import annotations

from typing import Any

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from nemo_automodel_bard.eval.runner import DEFAULT_SYSTEM_PROMPT, BardVLRunner

__all__ = ["BardVL", "manifest", "register"]

MODEL_ID = "bard_vl"
CLASS_PATH = "nemo_automodel_bard.eval.lmms_model.BardVL"


class BardVL(lmms):
    """``--model bard_vl``; ``model_args`` are :class:`BardVLRunner`'s (strings are parsed)."""

    def __init__(
        self,
        pretrained: str,
        block_size: int = 32,
        denoising_steps: int | None = None,
        remasking_strategy: str = "low_confidence_dynamic",
        confidence_threshold: float = 0.9,
        max_new_tokens: int = 1024,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        device: str = "auto",
        dtype: str = "auto",
        attn_implementation: str = "sdpa",
        batch_size: int | str = 1,
        **unused: Any,
    ) -> None:
        super().__init__()
        if int(batch_size) != 1:
            raise ValueError("bard_vl decodes one request at a time: use --batch_size 1")
        self.runner = BardVLRunner(
            pretrained,
            block_size=int(block_size),
            denoising_steps=None if denoising_steps in (None, "", "None") else int(denoising_steps),
            remasking_strategy=remasking_strategy,
            confidence_threshold=float(confidence_threshold),
            max_new_tokens=int(max_new_tokens),
            system_prompt=self._resolve_system_prompt(system_prompt),
            min_pixels=None if min_pixels is None else int(min_pixels),
            max_pixels=None if max_pixels is None else int(max_pixels),
            device=device,
            dtype=dtype,
            attn_implementation=attn_implementation,
        )
        self.ignored_args = sorted(unused)  # e.g. upstream's edit_threshold / max_post_edit_steps

    def _visuals(self, request: Instance) -> list[Any]:
        """The request's images: ``doc_to_visual(doc)`` on the task's document."""
        _, _, doc_to_visual, doc_id, task, split = request.args
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else []
        return list(visuals or [])

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """One answer per request, in request order."""
        answers = []
        for request in requests:
            context, gen_kwargs = request.args[0], request.args[1]
            answers.append(self.runner.answer(context, self._visuals(request), gen_kwargs))
        if self.rank == 0:
            print(f"[bard_vl] throughput: {self.runner.log.summary()}", flush=True)
        return answers

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError("bard_vl (block diffusion) has no exact log-likelihood; use generate_until tasks")

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("bard_vl does not implement multi-round generation")


def manifest():
    """Entry-point payload for the ``lmms_eval.models`` group."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)


def register() -> None:
    """Make ``--model bard_vl`` resolvable in this process (no entry point needed)."""
    from lmms_eval import models

    models.MODEL_REGISTRY_V2.register_manifest(manifest(), overwrite=True)
    models.AVAILABLE_MODELS[MODEL_ID] = "BardVL"

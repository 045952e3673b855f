"""lmms-eval model ``bard_vl``: Bard-VL block-diffusion (or AR source) decoding behind lmms-eval's API.

Importing this module needs lmms-eval (``pip install 'nemo-automodel-bard[eval]'``). lmms-eval
finds the model by name through the ``lmms_eval.models`` entry point (``bard_vl =
"nemo_automodel_bard.eval.lmms_model:manifest"``); ``python -m nemo_automodel_bard.eval``
registers it in-process as well and turns lmms-eval's logged failures into a non-zero exit::

    lmms-eval --model bard_vl --batch_size 8 \\
        --model_args pretrained=DIR,block_size=32,denoising_steps=32,confidence_threshold=0.9 \\
        --tasks mmstar

``decoding=ar`` decodes an autoregressive Qwen3-VL checkpoint with the same prompts. Only
``generate_until`` is implemented: a block-diffusion model has no exact per-token
log-likelihood, so ``loglikelihood`` tasks are refused. Requests run in left-padded batches of
``--batch_size``; each answer's token counts go to the samples file, and the throughput of each
``generate_until`` call (tokens, forwards, tokens per forward, tokens/s) is printed and lands in
the results file's ``throughput`` section.
"""

from __future__ import annotations

import os
from typing import Any

from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.models.model_utils.gen_metrics import log_metrics

from nemo_automodel_bard.eval.runner import BardVLRunner, ThroughputLog

__all__ = ["BardVL", "manifest", "register"]

MODEL_ID = "bard_vl"
CLASS_PATH = "nemo_automodel_bard.eval.lmms_model.BardVL"


def _batch_size(value: Any) -> int:
    """lmms-eval's ``--batch_size`` (a string on the CLI); ``auto`` has no meaning here."""
    try:
        size = int(str(value))
    except ValueError:
        raise ValueError(f"bard_vl needs an integer --batch_size >= 1, got {value!r} (auto is not supported)") from None
    if size < 1:
        raise ValueError(f"bard_vl needs an integer --batch_size >= 1, got {value!r}")
    return size


class BardVL(lmms):
    """``--model bard_vl``; ``model_args`` are :class:`~.model_args.EvalSettings`' keys (strings are parsed).

    Args:
        batch_size: lmms-eval's ``--batch_size`` (requests per left-padded ``generate`` call).
        **model_args: ``pretrained`` and the decoding settings; unknown keys are an error.
    """

    def __init__(self, batch_size: int | str = 1, max_batch_size: Any = None, **model_args: Any) -> None:
        super().__init__()
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # lmms-eval shards requests by the model's rank/world_size; this wrapper does not set
            # them, so every process would decode every request: refuse instead of duplicating.
            raise NotImplementedError("bard_vl runs in a single process (WORLD_SIZE > 1 found): run one lmms-eval per GPU")
        self.batch_size = _batch_size(batch_size)
        self.runner = BardVLRunner(**model_args)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "BardVL":
        """``--model_args`` plus lmms-eval's own options (``batch_size``, ``device``), kept apart.

        lmms-eval passes ``--batch_size`` as ``batch_size``; the same key in ``model_args`` would
        collide with it, so it is refused by name there (see :func:`~.model_args.parse_model_args`).
        """
        from lmms_eval.utils import simple_parse_args_string

        model_args = simple_parse_args_string(arg_string or "")
        if "batch_size" in model_args:
            raise ValueError(f"model_args batch_size={model_args['batch_size']} is not a bard_vl model arg: "
                             "set the batch size with lmms-eval's --batch_size")
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        device = extra.pop("device", None)
        if device is not None:
            if "device" in model_args and str(model_args["device"]) != str(device):
                raise ValueError(f"--device {device} and model_args device={model_args['device']} disagree; give one")
            model_args["device"] = device
        return cls(batch_size=extra.get("batch_size", 1), max_batch_size=extra.get("max_batch_size"), **model_args)

    def _visuals(self, request: Instance) -> list[Any]:
        """The request's images and videos: ``doc_to_visual(doc)`` on the task's document."""
        _, _, doc_to_visual, doc_id, task, split = request.args
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else []
        return list(visuals or [])

    def _batches(self, requests: list[Instance]) -> list[list[int]]:
        """Request indices grouped by identical ``gen_kwargs``, longest context first, ``batch_size`` each.

        Sorting by context length keeps left padding small; answers go back in request order.
        """
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(repr(sorted(request.args[1].items())), []).append(index)
        batches = []
        for indices in groups.values():
            indices.sort(key=lambda i: -len(requests[i].args[0]))
            batches += [indices[i:i + self.batch_size] for i in range(0, len(indices), self.batch_size)]
        return batches

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        """One answer per request, in request order, with its token counts."""
        results: list[GenerationResult | None] = [None] * len(requests)
        before = ThroughputLog(**vars(self.runner.log))
        for indices in self._batches(requests):
            answers = self.runner.answer_batch([requests[i].args[0] for i in indices],
                                               [self._visuals(requests[i]) for i in indices], requests[indices[0]].args[1])
            for i, answer in zip(indices, answers):
                counts = TokenCounts(input_tokens=answer.input_tokens, output_tokens=answer.output_tokens)
                results[i] = GenerationResult(text=answer.text, token_counts=counts)
        self._report(before)
        return results

    def _report(self, before: ThroughputLog) -> None:
        """Throughput of this call: printed, and recorded for the results file's ``throughput`` section."""
        now = self.runner.log
        call = ThroughputLog(*(getattr(now, k) - getattr(before, k) for k in ("requests", "tokens", "forwards",
                                                                              "batch_forwards", "seconds")))
        summary = call.summary()
        if self.rank == 0:
            print(f"[bard_vl] throughput ({self.runner.decoding}, batch_size {self.batch_size}): {summary}", flush=True)
        log_metrics(summary["seconds"], summary["tokens"], summary["tokens_per_s"], additional_metrics={
            "total_requests": summary["requests"], "forwards": summary["forwards"],
            "batch_forwards": summary["batch_forwards"], "tokens_per_forward": summary["tpf"],
        })

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

"""``BardSWDRecipe``: Stage-Wise intra-dVLM Distillation (SWD) on top of the diffusion-SFT recipe.

The student is a large-block Bard-VL (the PBM checkpoint with the same block size); the
teacher is frozen and reads the student's own noisy packed row (bard_spec.md section 6):

* ``teacher.kind: anchor`` (the paper's method): a small-block Bard-VL under the mask of its
  own block size (the parent's ``build_model_inputs`` at the anchor's block size), same
  tokens, positions and pixels;
* ``teacher.kind: ar`` (the paper's negative ablation): the original AR Qwen3-VL under the
  token-causal ``[prefix | clean]`` mask, its logits shifted by one onto the noisy copy
  (``diffusion/distill.ar_source_index``);
* ``teacher.kind: none``: the same CE, no teacher (continued SFT at equal steps).

Loss per micro-batch: ``ce_weight * CE + kl_weight * KL`` over the corrupted positions, with
``KL`` the top-k forward KL of ``diffusion/distill.py``. Both terms share the parent's
normaliser (``bard.loss.normalization``): ``sample_mean`` (default) gives the mean over
samples of each sample's token-mean, which is upstream's loss at micro-batch 1;
``token_mean`` the mean over every scored token of the step. The CE drops PBM's ``1/t``
weight unless ``distill.ce_inverse_t: true`` (upstream drops it).

The teacher is held as AutoModel's VLM KD recipe holds it: built by the same ``build_model``
(FSDP2-sharded on the student's mesh) through ``recipes.vlm.kd._build_teacher_model`` (eval
mode, ``requires_grad=False``), stored as ``self.teacher_model`` (the one attribute
``BaseRecipe`` leaves out of checkpoints), run under ``torch.no_grad`` and optionally kept
on CPU between forwards (``teacher.offload``, AutoModel's ``ScopedModuleOffloading``).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import torch
from nemo_automodel.components.config._arg_parser import parse_args_and_load_config
from nemo_automodel.components.training.utils import ScopedModuleOffloading
from nemo_automodel.recipes.vlm.kd import _build_teacher_model
from transformers import AutoConfig

from nemo_automodel_bard.diffusion.chunked_head import chunked_teacher_topk
from nemo_automodel_bard.diffusion.distill import (
    ar_block_ids,
    ar_source_index,
    teacher_topk,
    topk_kl_to_student,
)
from nemo_automodel_bard.diffusion.flex_masks import layout_mask
from nemo_automodel_bard.diffusion.loss import weighted_cross_entropy
from nemo_automodel_bard.diffusion.masks import block_diffusion_mask
from nemo_automodel_bard.recipes.block_diffusion import BardDiffusionRecipe, use_text_attention
from nemo_automodel_bard.recipes.config_check import plain_config
from nemo_automodel_bard.recipes.swd_config import (
    DistillSettings,
    TeacherSettings,
    anchor_block_size,
    check_teacher_compatible,
)

__all__ = ["BardSWDRecipe", "distill_token_weights", "main"]

logger = logging.getLogger(__name__)


def distill_token_weights(loss_mask: torch.Tensor, doc: torch.Tensor, normalization: str) -> torch.Tensor:
    """Per-token weights ``[B, S]`` of the un-reweighted (no 1/t) CE and of the KL term.

    ``token_mean``: 1 on scored tokens. ``sample_mean``: ``1 / n_s`` with ``n_s`` the scored
    tokens of the token's sample, so that summing and dividing by the number of samples is
    the mean over samples of each sample's token-mean (upstream SWD at micro-batch 1).

    Args:
        loss_mask: ``[B, S]`` bool scored positions.
        doc: ``[B, S]`` packed-sample id of each token (``-1`` on padding).
    """
    weights = loss_mask.to(torch.float32)
    if normalization == "token_mean":
        return weights
    if normalization != "sample_mean":
        raise ValueError(f"unknown normalization {normalization!r}")
    # One id per (row, doc): count scored tokens per sample, read the count back per token.
    num_docs = int(doc.max().item()) + 2 if doc.numel() else 1
    sample = torch.arange(doc.shape[0], device=doc.device)[:, None] * num_docs + (doc + 1)
    counts = torch.zeros(doc.shape[0] * num_docs, dtype=torch.float32, device=doc.device)
    counts.index_add_(0, sample.reshape(-1), weights.reshape(-1))
    return weights / counts[sample].clamp(min=1.0)


def _pretrained_config(cfg_model: Any) -> Any:
    """The HF config of a local ``from_pretrained`` model section, or None (hub ids are left to build time)."""
    path = cfg_model.get("pretrained_model_name_or_path", None) if cfg_model is not None else None
    if path is None or not Path(str(path)).is_dir():
        return None
    try:
        return AutoConfig.from_pretrained(str(path))
    except Exception:  # not local / not readable here: the check after building still runs
        return None


class BardSWDRecipe(BardDiffusionRecipe):
    """Distil a large-block Bard-VL student from a frozen teacher (anchor, AR, or none)."""

    extra_config_sections = frozenset({"teacher", "teacher_model", "teacher_freeze_config", "distill"})

    def __init__(self, cfg: Any) -> None:
        raw = plain_config(cfg)
        self.teacher_settings = TeacherSettings.from_mapping(raw.get("teacher"))
        self.distill = DistillSettings.from_mapping(raw.get("distill"))
        if self.teacher_settings.kind != "none" and not raw.get("teacher_model"):
            raise ValueError(f"teacher.kind {self.teacher_settings.kind} needs a `teacher_model:` section")
        super().__init__(cfg)
        self._teacher_targets: tuple[torch.Tensor, torch.Tensor] | None = None
        self._ce_buffer: list[torch.Tensor] = []
        self._kl_buffer: list[torch.Tensor] = []

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """The diffusion recipe's setup (student, data, optimizer, resume), then the frozen teacher."""
        super().setup()
        settings = self.teacher_settings
        if settings.kind == "none":
            logger.info("SWD: teacher.kind none (continued SFT, CE only)")
            return
        # Refuse a wrong teacher from its config.json before spending minutes building it.
        early_config = _pretrained_config(self.cfg.get("teacher_model", None))
        if early_config is not None:
            check_teacher_compatible(self.model_parts[0].config, early_config, settings)
        offload = bool(settings.offload) and torch.cuda.is_available()  # nothing to offload to on CPU
        self._offload_teacher = offload
        self.teacher_model = _build_teacher_model(
            cfg_teacher=self.cfg.get("teacher_model", None),
            cfg_freeze=self.cfg.get("teacher_freeze_config", None),
            seed=self.cfg.get("seed", 42),
            distributed_setup=getattr(self, "distributed_setup", None),
            device="cpu" if offload else self.dist_env.device,
        )
        teacher_config = self.teacher_model.config
        check_teacher_compatible(self.model_parts[0].config, teacher_config, settings)
        if settings.kind == "anchor":
            self.teacher_block_size = anchor_block_size(settings, teacher_config, self.block_size)
            self.teacher_causal_prompt = getattr(teacher_config, "prompt_attention", "block") == "causal"
            # The anchor reads its own block-size mask in the student's form (BlockMask with flex).
            use_text_attention(self.teacher_model, self.attention)
        else:
            self.teacher_block_size = 1
            self.teacher_causal_prompt = False
        logger.info(
            "SWD: teacher.kind=%s block_size=%d offload=%s; loss %.3g*CE + %.3g*KL(top-%d, T=%g, %s), CE 1/t=%s",
            settings.kind, self.teacher_block_size, offload, self.distill.ce_weight, self.distill.kl_weight,
            self.distill.top_k, self.distill.temperature, self.distill.student_support, self.distill.ce_inverse_t,
        )

    # ------------------------------------------------------------------ teacher
    def teacher_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The student's model inputs with the teacher's mask (anchor block size, or AR causal).

        The anchor gets the student's mask form (``bard.attention``); the AR teacher (stock
        Qwen3-VL, which has no BlockMask path) always gets a dense bool causal mask.
        """
        device = self.dist_env.device
        segment, offset, prompt_len, doc = (batch[k].to(device) for k in ("segment", "offset", "prompt_len", "doc"))
        if self.teacher_settings.kind == "ar":
            inputs = self.build_model_inputs(batch, self.teacher_block_size, with_mask=False)
            # A bool mask: stock Qwen3-VL passes it to sdpa untouched, whatever its compute dtype.
            inputs["attention_mask"] = block_diffusion_mask(segment, ar_block_ids(segment, offset, prompt_len), doc)[
                :, None
            ]
        elif self.teacher_causal_prompt != (self.prompt_attention == "causal"):
            inputs = self.build_model_inputs(batch, self.teacher_block_size, with_mask=False)
            layout = {"segment": segment, "offset": offset, "prompt_len": prompt_len, "doc": doc}
            inputs["attention_mask"] = layout_mask(
                layout, self.teacher_block_size, causal_prompt=self.teacher_causal_prompt,
                backend=getattr(self, "attention", "sdpa"),
            )
        else:
            inputs = self.build_model_inputs(batch, self.teacher_block_size)
        return inputs

    @torch.no_grad()
    def teacher_targets(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher top-k ``(log_probs, index)``, ``[N, k]`` each, for ``batch['loss_mask']`` in row-major order.

        Only the scored positions' logits are computed (``logits_to_keep``), and only their
        top-k survive this call. The anchor (a Bard-VL) takes them chunk by chunk inside its
        forward (``bard.loss.chunk_tokens``): no ``[N, V]`` teacher logits at all. The AR
        teacher (stock Qwen3-VL, no such hook) returns its ``[N, V]`` logits, freed at once.
        """
        device = self.dist_env.device
        select = batch["loss_mask"].to(device)
        inputs = self.teacher_inputs(batch)
        distill = self.distill
        if self.teacher_settings.kind == "anchor":
            inputs["logits_to_keep"] = select  # Bard-VL packs the kept rows: [N, ...], row-major
            source = None
            chunk_tokens = self.bard.loss.chunk_tokens
            if chunk_tokens > 0:
                inputs["lm_head_fn"] = functools.partial(
                    chunked_teacher_topk, chunk_tokens=chunk_tokens, top_k=distill.top_k, temperature=distill.temperature
                )
        else:
            layout = [batch[k].to(device) for k in ("segment", "offset", "prompt_len", "doc")]
            source = ar_source_index(*layout)[select]  # [N] AR position predicting each scored token
            if (source < 0).any():
                raise ValueError("a scored token has no AR predecessor (empty prompt?)")
            columns = source.unique()  # sorted; stock Qwen3-VL keeps a 1-D index of positions
            inputs["logits_to_keep"] = columns
        with ScopedModuleOffloading(self.teacher_model, enabled=getattr(self, "_offload_teacher", False)):
            output = self.teacher_model(**inputs)
        if "lm_head_fn" in inputs:
            return output.head_output
        logits = output.logits
        if source is not None:
            rows = select.nonzero(as_tuple=True)[0]
            logits = logits[rows, torch.searchsorted(columns, source)]
        return teacher_topk(logits, top_k=distill.top_k, temperature=distill.temperature)

    # ------------------------------------------------------------------ loss hooks
    def loss_targets(self, batch: dict[str, Any], keep: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Per scored position (``batch['loss_mask']``, row-major): labels, CE and KL weights, the teacher's top-k."""
        device = self._device()
        select = batch["loss_mask"].to(device)
        kl_weights = distill_token_weights(select, batch["doc"].to(device), self.bard.loss.normalization)[select]
        targets = {
            "labels": batch["labels"].to(device)[select],
            # PBM's 1/t weights (loss_weight, same normaliser) only when asked: upstream SWD drops them.
            "ce_weights": batch["loss_weight"].to(device)[select] if self.distill.ce_inverse_t else kl_weights,
            "kl_weights": kl_weights,
        }
        if self.teacher_settings.kind != "none":
            log_probs, index = self._teacher_targets if self._teacher_targets is not None else self.teacher_targets(batch)
            targets.update(teacher_log_probs=log_probs, teacher_index=index)
        return targets

    def loss_terms(self, logits: torch.Tensor, targets: dict[str, torch.Tensor], denominator: float) -> torch.Tensor:
        """``[CE, KL]`` of these rows (``[n, V]`` logits), each over the global ``denominator``."""
        ce = weighted_cross_entropy(logits, targets["labels"], targets["ce_weights"], denominator)
        if self.teacher_settings.kind == "none":
            return torch.stack([ce, torch.zeros_like(ce)])
        per_token = topk_kl_to_student(
            logits, targets["teacher_log_probs"], targets["teacher_index"],
            temperature=self.distill.temperature, student_support=self.distill.student_support,
        )
        kl = (per_token * targets["kl_weights"]).sum() / denominator if denominator > 0 else per_token.sum() * 0.0
        return torch.stack([ce, kl])

    def total_loss(self, terms: torch.Tensor) -> torch.Tensor:
        """``ce_weight * CE + kl_weight * KL`` (the KL only with a teacher); both parts logged."""
        ce, kl = terms[0], terms[1]
        loss = self.distill.ce_weight * ce
        if self.teacher_settings.kind != "none":
            loss = loss + self.distill.kl_weight * kl
        self._ce_buffer.append(ce.detach().float().reshape(()))
        self._kl_buffer.append(kl.detach().float().reshape(()))
        return loss

    def compute_loss(
        self, logits: torch.Tensor, batch: dict[str, Any], keep: torch.Tensor | None, denominator: float
    ) -> torch.Tensor:
        """``ce_weight * CE + kl_weight * KL`` on the scored positions (logits ``[N, V]``, or ``[B, S, V]``)."""
        if keep is None:  # the model returned [B, S, V]
            logits = logits[batch["loss_mask"].to(logits.device)]
        return super().compute_loss(logits, batch, keep, denominator)

    def _forward_backward_step(self, idx, batch, **kwargs) -> None:
        """Teacher first (its transient memory never meets the student's activations), then the student step."""
        if self.teacher_settings.kind != "none":
            self._teacher_targets = self.teacher_targets(batch)
        try:
            super()._forward_backward_step(idx, batch, **kwargs)
        finally:
            self._teacher_targets = None

    def _run_train_optim_step(self, batches, max_grad_norm: float | None = None):
        """The parent's step, plus the CE and KL parts of the logged loss (global sums)."""
        self._ce_buffer.clear()
        self._kl_buffer.clear()
        sample = super()._run_train_optim_step(batches, max_grad_norm)
        for name, buffer in (("ce_loss", self._ce_buffer), ("kl_loss", self._kl_buffer)):
            local = torch.stack(buffer).sum() if buffer else torch.zeros(())
            sample.metrics[name] = float(self._dp_allreduce(local.to(self.dist_env.device)).item())
        sample.metrics["kl_weight"] = self.distill.kl_weight
        self._ce_buffer.clear()
        self._kl_buffer.clear()
        return sample

    def _run_validation_epoch(self, val_dataloader):
        """The parent's validation (its compute_loss call runs the teacher lazily)."""
        result = super()._run_validation_epoch(val_dataloader)
        self._ce_buffer.clear()
        self._kl_buffer.clear()
        return result


def main(config_path: str | None = None) -> None:
    """``python -m nemo_automodel_bard.recipes.swd -c cfg.yaml [--a.b=c ...]`` (under torchrun)."""
    cfg = parse_args_and_load_config(config_path)
    recipe = BardSWDRecipe(cfg)
    recipe.setup()
    recipe.run_train_validation_loop()


if __name__ == "__main__":  # pragma: no cover
    main()

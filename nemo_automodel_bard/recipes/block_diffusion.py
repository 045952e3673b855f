"""``BardDiffusionRecipe``: one block-diffusion SFT run on AutoModel's VLM fine-tune recipe.

A thin subclass of ``FinetuneRecipeForVLM``: AutoModel keeps the loop, FSDP2, optimizer, LR
schedule (stepped once per optimizer step, D10), checkpointing, resume and logging. This
class only

* rewrites the config before AutoModel reads it (:func:`prepare_config`): our collator, the
  block size for the dataset, the vision-tower LR multiplier, unknown keys rejected (D12);
* applies the noise per optimizer step with a step-seeded generator (:meth:`apply_noise`),
  so a resumed run sees exactly the noise of the uninterrupted one;
* builds the model inputs (:meth:`build_model_inputs`: noisy ids, mRoPE positions,
  block-diffusion mask for any block size: a FlexAttention ``BlockMask`` or a dense bool
  mask, per ``bard.attention``) and the loss (:meth:`compute_loss`);
* overrides ``_forward_backward_step`` and ``_run_validation_epoch`` with those hooks.

The loss is a sum over the scored positions, split in three hooks so that the same code
runs on all logits at once or chunk by chunk inside the model's forward
(``bard.loss.chunk_tokens``, :meth:`model_loss`): ``loss_targets`` (per scored row),
``loss_terms`` (one chunk's terms) and ``total_loss`` (terms -> the scalar).

Hooks a subclass (SWD) overrides: ``build_model_inputs(batch, block_size)``, the three loss
hooks, ``compute_loss(logits, batch, keep, denominator)``, ``_forward_backward_step``,
``extra_config_sections``.
"""

from __future__ import annotations

import copy
import logging
from contextlib import nullcontext
from typing import Any, Callable, Mapping

import torch
from nemo_automodel.components.config.loader import ConfigNode
from nemo_automodel.components.distributed.utils import get_sync_ctx
from nemo_automodel.components.loggers.metric_logger import MetricsSample
from nemo_automodel.recipes.vlm.finetune import FinetuneRecipeForVLM

from nemo_automodel_bard._cpu_shim import apply_cpu_shims
from nemo_automodel_bard.diffusion.chunked_head import chunked_head_loss
from nemo_automodel_bard.diffusion.flex_masks import layout_mask
from nemo_automodel_bard.diffusion.layout import (
    apply_noise,
    largest_max_length,
    layout_position_ids,
    max_layout_length,
)
from nemo_automodel_bard.diffusion.loss import weighted_cross_entropy
from nemo_automodel_bard.diffusion.noise import tokenizer_substitute_ids
from nemo_automodel_bard.data.conversation import CONVERSATION_DATASET_TARGET
from nemo_automodel_bard.recipes import run_guard
from nemo_automodel_bard.recipes.config_check import (
    REPLACED_STOCK_TARGETS,
    BardSettings,
    ConfigKeyError,
    plain_config,
    check_top_level_keys,
)

__all__ = [
    "BardDiffusionRecipe",
    "prepare_config",
    "resolve_attention",
    "use_text_attention",
    "VISION_TOWER_PATTERN",
    "COLLATE_TARGET",
]

logger = logging.getLogger(__name__)

COLLATE_TARGET = "nemo_automodel_bard.data.collate.bard_collate"
_DATASET_TARGETS = (
    "nemo_automodel_bard.data.dataset.build_chat_dataset",
    "nemo_automodel_bard.data.dataset.BardChatDataset",
)
_DEFAULT_MAX_LENGTH = 8192  # BardChatDataset's default
# Vision tower proper (patch embedding, position embedding, blocks); the mergers train at
# the language LR (bard_spec.md section 5, parameter groups).
VISION_TOWER_PATTERN = r"(^|\.)model\.visual\.(patch_embed|pos_embed|blocks)\."
# Collator keys a YAML may set in dataloader.collate_fn (data/collate.bard_collate).
_USER_COLLATE_KEYS = ("fake_images", "fake_videos")
_MODEL_INPUT_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")


def prepare_config(config: Mapping[str, Any], extra_sections: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Validate a plain config dict and fill in what AutoModel must see (returns a copy).

    A stock AutoModel VLM config is accepted as is (AUTOMODEL_SECTION_TREATMENT in
    config_check.py): ``rng`` sets the seed, ``freeze_config`` is checked with AutoModel's own
    parser, stock collators and losses are replaced with a warning, conversation datasets are
    wrapped into the BARD dataset.
    """
    config = copy.deepcopy(dict(config))
    check_top_level_keys(config, extra_sections)
    bard = BardSettings.from_mapping(config.get("bard"))
    _check_model_attention(config)
    config.pop("pbm", None)
    _apply_rng(config)
    if config.get("freeze_config") is not None:
        from nemo_automodel.components.utils.model_utils import parse_freeze_config

        # AutoModel's own check (it names unknown options such as freeze_embeddings), run before the model loads.
        parse_freeze_config(config["freeze_config"])
    _wire_data(config, bard)
    _check_lengths(config, bard)
    # nccl needs CUDA; `auto` (or nothing) picks the backend from the hardware.
    dist_env = dict(config.get("dist_env") or {})
    if dist_env.get("backend") in (None, "auto") or (dist_env["backend"] == "nccl" and not torch.cuda.is_available()):
        dist_env["backend"] = "nccl" if torch.cuda.is_available() else "gloo"
    config["dist_env"] = dist_env
    # The VLM recipe requires a loss_fn section; ours replaces it in the train step.
    _check_replaceable("loss_fn", _target_of(config.get("loss_fn")))
    config.setdefault("loss_fn", {"_target_": "nemo_automodel.components.loss.masked_ce.MaskedCrossEntropy"})
    if bard.vision_lr_multiplier != 1.0:
        _add_vision_lr_group(config, bard.vision_lr_multiplier)
    return config


def _check_model_attention(config: Mapping[str, Any]) -> None:
    """``flex_attention`` is chosen by ``bard.attention``, never in a model section.

    A model built with it would put the vision tower on flex too (stock Qwen3-VL refuses);
    ``bard.attention`` switches only the text layers, after the build.
    """
    for section in ("model", "teacher_model"):
        node = config.get(section)
        if isinstance(node, Mapping) and "flex" in str(node.get("attn_implementation") or ""):
            raise ConfigKeyError(
                f"{section}.attn_implementation: {node['attn_implementation']!r}; keep sdpa there (the vision tower) "
                "and set `bard.attention: flex` (or auto) for the text layers"
            )


def resolve_attention(setting: str, device: torch.device) -> str:
    """``bard.attention`` -> ``flex`` or ``sdpa`` on ``device`` (``auto``: flex on CUDA only).

    Training with flex needs CUDA: FlexAttention has no backward on CPU (scale_facts.md).
    """
    if setting == "auto":
        return "flex" if device.type == "cuda" else "sdpa"
    if setting == "flex" and device.type != "cuda":
        raise ValueError(
            f"bard.attention: flex trains on CUDA only (FlexAttention has no backward on {device.type}); "
            "use auto or sdpa"
        )
    if setting not in ("flex", "sdpa"):
        raise ValueError(f"bard.attention must be auto, flex or sdpa, got {setting!r}")
    return setting


def use_text_attention(model: Any, backend: str) -> None:
    """Put a model's text layers on the backend the masks are built for.

    ``sdpa`` leaves the model as built (sdpa or eager both take the dense bool mask).
    """
    if backend != "flex":
        return
    if not hasattr(model, "set_text_attention"):
        raise ValueError(
            f"bard.attention: flex needs a Bard-VL model (it builds the BlockMask); {type(model).__name__} has no "
            "set_text_attention: use bard.attention: sdpa"
        )
    model.set_text_attention("flex_attention")


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    """One log line per message and process (every PBM stage re-prepares the same config)."""
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning(message)


def _target_of(node: Any) -> str | None:
    """The dotted ``_target_`` of a section (or a bare target), resolved callables included."""
    target = node.get("_target_") if isinstance(node, Mapping) else node
    if target is None or isinstance(target, str):
        return target
    return f"{target.__module__}.{getattr(target, '__qualname__', target.__name__)}"


def _check_replaceable(dotted: str, target: str | None) -> None:
    """Warn that a stock AutoModel target gives way to BARD's; refuse any other (REPLACED_STOCK_TARGETS)."""
    if target is None or target == COLLATE_TARGET:
        return
    prefix, replacement = REPLACED_STOCK_TARGETS[dotted]
    if not target.startswith(prefix):
        raise ConfigKeyError(f"{dotted}: {target} cannot be used: the BARD recipe needs {replacement}; remove the key")
    _warn_once(f"{dotted}: {target} is replaced by {replacement}")


_STATEFUL_RNG = "nemo_automodel.components.training.rng.StatefulRNG"


def _apply_rng(config: dict[str, Any]) -> None:
    """``rng: {_target_: StatefulRNG, seed, ranked: true}``: its seed is the run seed (AutoModel's VLM
    recipe builds ``StatefulRNG(seed, ranked=True)`` from the top-level ``seed``)."""
    node = config.get("rng")
    if node is None:
        return
    if not isinstance(node, Mapping):
        raise ConfigKeyError(f"rng: expected a section like {{_target_: {_STATEFUL_RNG}, seed: 42, ranked: true}}")
    values = dict(node)
    target = _target_of(values.pop("_target_", None))
    unknown = sorted(set(values) - {"seed", "ranked"})
    if unknown:
        raise ConfigKeyError(f"unknown key(s) in `rng:`: {', '.join(unknown)}; allowed: _target_, seed, ranked")
    if target not in (None, _STATEFUL_RNG):
        raise ConfigKeyError(f"rng._target_: AutoModel's VLM recipe always uses {_STATEFUL_RNG}, got {target}")
    if values.get("ranked", True) is not True:
        raise ConfigKeyError("rng.ranked: false cannot be honoured: AutoModel's VLM recipe seeds every rank differently")
    if "seed" in values:
        if config.get("seed") is None:
            config["seed"] = int(values["seed"])
        elif int(config["seed"]) != int(values["seed"]):
            raise ConfigKeyError(f"seed: {config['seed']} and rng.seed: {values['seed']} disagree; keep one")


def _fake_media_switches(dotted: str, node: Any) -> dict[str, bool]:
    """The fake-media switches of a user's own BARD collator entry (FSDP2: the vision tower runs every micro-batch)."""
    if not isinstance(node, Mapping) or _target_of(node) not in (None, COLLATE_TARGET):
        return {}
    extra = sorted(set(node) - {"_target_", *_USER_COLLATE_KEYS})
    if extra:
        raise ConfigKeyError(
            f"{dotted}: key(s) {', '.join(extra)} are set by the recipe from `bard:`; "
            f"only {', '.join(_USER_COLLATE_KEYS)} may be given"
        )
    return {k: bool(node[k]) for k in _USER_COLLATE_KEYS if k in node}


def _wire_data(config: dict[str, Any], bard: BardSettings) -> None:
    """Our collator in the (validation) dataloader; our dataset (block size, no pretokenization) around any source."""
    collate = {
        "_target_": COLLATE_TARGET,
        "block_size": int(bard.block_size),
        "pack_size": bard.packing.pack_size,
        "pad_to_multiple_of": bard.packing.pad_to_multiple_of,
    }
    for dataset_key, loader_key in (("dataset", "dataloader"), ("validation_dataset", "validation_dataloader")):
        if config.get(dataset_key) is None:
            continue
        loader = dict(config.get(loader_key) or {})
        user_collate = loader.get("collate_fn")
        _check_replaceable(f"{loader_key}.collate_fn", _target_of(user_collate))
        media = _fake_media_switches(f"{loader_key}.collate_fn", user_collate)
        config[loader_key] = {**loader, "collate_fn": {**collate, **media}}
        config[dataset_key] = _wire_dataset(dict(config[dataset_key]), int(bard.block_size), dataset_key)


# Dataset keys AutoModel's VLM loader consumes itself (it pops them before calling the builder).
_LOADER_DATASET_KEYS = ("tokenizer", "chat_template", "packing", "pretokenize", "truncate", "inject_fake_images")


def _wire_dataset(node: dict[str, Any], block_size: int, section: str) -> dict[str, Any]:
    """A jsonl section gets the block size; any other builder becomes the ``source`` of the conversation dataset."""
    target = _target_of(node)
    if target not in _DATASET_TARGETS and target != CONVERSATION_DATASET_TARGET:
        source = {k: v for k, v in node.items() if k not in _LOADER_DATASET_KEYS}
        wrapped = {k: v for k, v in node.items() if k in _LOADER_DATASET_KEYS}
        wrapped.update(_target_=CONVERSATION_DATASET_TARGET, source=source)
        if source.get("max_length") is not None:  # AutoModel's bound on a tokenized sample: ours on P + R
            wrapped["max_length"] = source["max_length"]
        node = wrapped
        if node.pop("truncate", True) is False:  # AutoModel replaces over-long samples instead of cutting them
            node.setdefault("too_long", "drop")
    legacy_packing = node.get("packing")
    if isinstance(legacy_packing, Mapping) and legacy_packing.get("enabled"):
        raise ConfigKeyError(f"{section}.packing: AutoModel's VLM packing shifts labels; use bard.packing instead")
    if node.get("pretokenize"):
        _warn_once(f"{section}.pretokenize: true is replaced by the BARD dataset's unshifted (prompt, response) tokenization")
    # AutoModel pretokenizes (next-token labels) whenever a dataset has max_length: not ours.
    return {**node, "block_size": block_size, "pretokenize": False}


def _check_lengths(config: dict[str, Any], bard: BardSettings) -> None:
    """Refuse a pack size that cannot hold every sample ``dataset.max_length`` (a bound on P + R) allows."""
    pack_size = bard.packing.pack_size
    if pack_size is None:
        return
    for section in ("dataset", "validation_dataset"):
        node = config.get(section)
        if not (isinstance(node, Mapping) and _target_of(node) in (*_DATASET_TARGETS, CONVERSATION_DATASET_TARGET)):
            continue
        max_length = int(node.get("max_length", _DEFAULT_MAX_LENGTH))
        need = max_layout_length(max_length, int(bard.block_size))
        if pack_size < need:
            raise ValueError(
                f"bard.packing.pack_size={pack_size} cannot hold every sample {section}.max_length={max_length} "
                f"allows: max_length bounds a sample's P + R and its training layout P + 2R (block size "
                f"{bard.block_size}) takes up to {need} tokens; set pack_size >= {need} or max_length <= "
                f"{largest_max_length(pack_size, int(bard.block_size))}"
            )


def _add_vision_lr_group(config: dict[str, Any], multiplier: float) -> None:
    """An AutoModel param-group override for the vision tower (its scheduler applies ``lr_mult``)."""
    if not config.get("lr_scheduler"):
        raise ConfigKeyError(
            "bard.vision_lr_multiplier needs an lr_scheduler section (AutoModel applies lr_mult in its scheduler)"
        )
    optimizer = dict(config.get("optimizer") or {})
    overrides = list(optimizer.get("param_group_overrides") or [])
    overrides.append({"pattern": VISION_TOWER_PATTERN, "lr_mult": float(multiplier)})
    config["optimizer"] = {**optimizer, "param_group_overrides": overrides}


def _mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (deterministic, unlike hash() of a tuple across runs)."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (int(part) & 0xFFFFFFFFFFFFFFFF)) * 0x100000001B3 % (1 << 64)
    return value % (1 << 63)


class BardDiffusionRecipe(FinetuneRecipeForVLM):
    """Block-diffusion SFT of a Bard-VL model at one block size (a PBM stage)."""

    # Top-level YAML sections a subclass adds (SWD: teacher, teacher_model, distill).
    extra_config_sections: frozenset[str] = frozenset()

    def __init__(self, cfg: Any) -> None:
        raw = plain_config(cfg)
        self.bard = BardSettings.from_mapping(raw.get("bard"))
        super().__init__(ConfigNode(prepare_config(raw, self.extra_config_sections)))

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """AutoModel's setup, then bind the processor/block size and read the model's BARD fields."""
        apply_cpu_shims()
        self.checkpoint_lock = run_guard.guard_recipe(plain_config(self.cfg))  # one run per folder; resume only ours
        super().setup()
        self.block_size = int(self.bard.block_size)
        for loader in (self.dataloader, self.val_dataloader):
            dataset = getattr(loader, "dataset", None)
            if hasattr(dataset, "bind"):
                dataset.bind(processor=self.processor, block_size=self.block_size)
        model = self.model_parts[0]
        config = model.config
        self.mask_token_id = self.bard.mask_token_id
        if self.mask_token_id is None:
            self.mask_token_id = getattr(config, "mask_token_id", None)
        if self.mask_token_id is None:
            raise ValueError("no mask token id: set bard.mask_token_id or use a Bard-VL config with mask_token_id")
        self.prompt_attention = self.bard.prompt_attention or getattr(config, "prompt_attention", None) or "block"
        self.attention = resolve_attention(self.bard.attention, self._device())
        use_text_attention(model, self.attention)
        # The consolidated checkpoint records what it was trained with.
        for name, value in (("block_size", self.block_size), ("mask_token_id", self.mask_token_id),
                            ("prompt_attention", self.prompt_attention)):
            try:
                setattr(config, name, value)
            except Exception:  # a strict non-Bard config may refuse new fields
                logger.warning("could not record %s=%s in the model config", name, value)
        self.substitute_ids = self._substitute_ids(config) if self.bard.noise.schedule == "mixed" else None
        self.noise_seed = self.bard.seed if self.bard.seed is not None else int(self.cfg.get("seed", 42))
        self._loss_denominator = 1.0
        logger.info(
            "BARD: block_size=%d mask_token_id=%d prompt_attention=%s attention=%s noise=%s loss=%s packing=%s",
            self.block_size, self.mask_token_id, self.prompt_attention, self.attention, self.bard.noise,
            self.bard.loss, self.bard.packing,
        )

    def _substitute_ids(self, config: Any) -> torch.Tensor:
        """Uniform-noise substitutes: the tokenizer's ids minus every added, special, vision and mask id (D11)."""
        return tokenizer_substitute_ids(getattr(self.processor, "tokenizer", self.processor), config, self.mask_token_id)

    # ------------------------------------------------------------------ hooks
    def _device(self) -> torch.device:
        """The compute device (AutoModel leaves ``dist_env.device`` None on CPU)."""
        return self.dist_env.device or torch.device("cpu")

    def noise_generator(self, step: int, micro_batch: int) -> torch.Generator:
        """The generator of one micro-batch's noise: a function of (seed, step, micro-batch, rank)."""
        return torch.Generator().manual_seed(_mix_seed(self.noise_seed, step, micro_batch, self._get_dp_rank()))

    def apply_noise(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
        """Corrupt the noisy copy (CPU tensors): adds ``t, loss_mask, loss_weight``, sets ``labels``."""
        return apply_noise(
            batch,
            block_size=self.block_size,
            mask_token_id=self.mask_token_id,
            schedule=self.bard.noise.schedule,
            eps=self.bard.noise.eps,
            substitute_ids=self.substitute_ids,
            generator=generator,
            normalization=self.bard.loss.normalization,
            block_pad_weight=self.bard.loss.block_pad_weight,
        )

    def build_model_inputs(self, batch: dict[str, Any], block_size: int, with_mask: bool = True) -> dict[str, Any]:
        """Model kwargs on the device: ``input_ids [B,S]``, ``position_ids [3,B,S]``, mask, media.

        The mask is rebuilt from the layout for ``block_size`` (the SWD anchor passes 4): a
        ``BlockMask`` with ``bard.attention`` flex, else a ``[B,1,S,S]`` bool mask. A caller
        that supplies its own mask passes ``with_mask=False``.
        """
        device = self._device()
        model = self.model_parts[0]
        rope_fn = getattr(model, "rope_positions", None) or (
            lambda ids, mm, images, videos: model.model.get_rope_index(ids, mm, images, videos)
        )
        layout = {k: batch[k].to(device) for k in ("segment", "offset", "prompt_len", "doc")}
        inputs = {
            "input_ids": batch["input_ids"].to(device),
            "position_ids": layout_position_ids(batch, rope_fn).to(device),
        }
        if with_mask:
            inputs["attention_mask"] = layout_mask(
                layout, block_size, causal_prompt=self.prompt_attention == "causal",
                backend=getattr(self, "attention", "sdpa"),
            )
        for key in _MODEL_INPUT_KEYS:
            if batch.get(key) is not None:
                inputs[key] = batch[key].to(device)
        return inputs

    def loss_positions(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """``[B, S]`` bool positions whose logits the loss reads (None: all), passed as ``logits_to_keep``."""
        model = self.model_parts[0]
        return batch["loss_mask"].to(self._device()) if hasattr(model, "rope_positions") else None

    def loss_targets(self, batch: dict[str, Any], keep: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """What the loss reads per kept position: ``[N]`` tensors (``[B, S]`` if keep is None)."""
        device = self._device()
        labels, weights = batch["labels"].to(device), batch["loss_weight"].to(device)
        if keep is not None:
            labels, weights = labels[keep], weights[keep]
        return {"labels": labels, "weights": weights}

    def loss_terms(self, logits: torch.Tensor, targets: dict[str, torch.Tensor], denominator: float) -> torch.Tensor:
        """``[1]``: the 1/t-weighted CE (diffusion/loss.py) of these logits' rows, over the global ``denominator``."""
        return weighted_cross_entropy(logits, targets["labels"], targets["weights"], denominator).reshape(1)

    def total_loss(self, terms: torch.Tensor) -> torch.Tensor:
        """The scalar to backpropagate from the terms summed over all rows."""
        return terms[0]

    def compute_loss(
        self, logits: torch.Tensor, batch: dict[str, Any], keep: torch.Tensor | None, denominator: float
    ) -> torch.Tensor:
        """The loss of all kept logits at once (``[N, V]``, or ``[B, S, V]`` if keep is None)."""
        return self.total_loss(self.loss_terms(logits, self.loss_targets(batch, keep), denominator))

    def chunked_loss_head(
        self, batch: dict[str, Any], keep: torch.Tensor, denominator: float
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The model's ``lm_head_fn``: :meth:`loss_terms` over ``bard.loss.chunk_tokens`` rows at a time."""
        targets = self.loss_targets(batch, keep)

        def chunk_loss(logits: torch.Tensor, start: int) -> torch.Tensor:
            rows = {name: value[start : start + logits.shape[0]] for name, value in targets.items()}
            return self.loss_terms(logits, rows, denominator)

        return lambda hidden, weight: chunked_head_loss(hidden, weight, chunk_loss, self.bard.loss.chunk_tokens)

    def model_loss(
        self, model: Any, inputs: dict[str, Any], batch: dict[str, Any], denominator: float
    ) -> torch.Tensor:
        """Forward and loss of one micro-batch.

        With ``bard.loss.chunk_tokens`` > 0 and a Bard-VL model the loss runs inside the
        model's forward (``lm_head_fn``), a chunk of logits at a time: never ``[N, V]``.
        Otherwise the model returns the kept logits and :meth:`compute_loss` reads them.
        """
        keep = self.loss_positions(batch)
        if keep is not None:
            inputs = {**inputs, "logits_to_keep": keep}
        if keep is not None and self.bard.loss.chunk_tokens > 0:
            terms = model(**inputs, lm_head_fn=self.chunked_loss_head(batch, keep, denominator)).head_output
            return self.total_loss(terms)
        return self.compute_loss(model(**inputs).logits, batch, keep, denominator)

    def _denominator(self, batches: list[dict[str, Any]]) -> float:
        """The loss normaliser of one optimizer step, summed over micro-batches and DP ranks."""
        if self.bard.loss.normalization == "sample_mean":
            local = sum(int(b["num_samples"]) for b in batches)
        else:
            local = sum(int(b["loss_mask"].sum()) for b in batches)
        return float(self._dp_allreduce(torch.tensor(local, dtype=torch.long)).item())

    # ------------------------------------------------------------------ AutoModel overrides
    def run_train_validation_loop(self):
        """AutoModel's loop, then the datasets' skip/drop/truncation totals (never silent);
        the checkpoint-folder lock is released however it ends."""
        try:
            result = super().run_train_validation_loop()
            self._log_data_summary()
            return result
        finally:
            self.checkpoint_lock.release()

    def _log_data_summary(self) -> None:
        for loader in (self.dataloader, self.val_dataloader):
            dataset = getattr(loader, "dataset", None)
            if hasattr(dataset, "summary"):
                workers = int(getattr(loader, "num_workers", 0) or 0)
                note = "" if workers == 0 else (
                    f" (rows checked at load; rows read by the {workers} dataloader workers are counted in "
                    "their own warnings above)")
                (logger.warning if dataset.stats else logger.info)("%s%s", dataset.summary(), note)

    def log_train_metrics(self, log_data):
        """AutoModel's logging, then flush training.jsonl (a SIGKILL loses no logged step)."""
        super().log_train_metrics(log_data)
        run_guard.flush_metrics(self.metric_logger_train)

    def log_val_metrics(self, *args, **kwargs):
        super().log_val_metrics(*args, **kwargs)
        run_guard.flush_metrics(self.metric_logger_valid)

    def _run_train_optim_step(self, batches, max_grad_norm: float | None = None):
        """Noise every micro-batch and fix the global loss denominator, then AutoModel's step."""
        step = int(self.step_scheduler.step)
        batches = [self.apply_noise(b, self.noise_generator(step, i)) for i, b in enumerate(batches)]
        self._loss_denominator = self._denominator(batches)
        fake = self._dp_allreduce(torch.tensor(sum(int(b.get("num_fake_media", 0)) for b in batches)))
        sample = super()._run_train_optim_step(batches, max_grad_norm)
        # Micro-batches (summed over ranks) that ran the vision tower on a fake image/video only.
        sample.metrics["fake_media"] = int(fake.item())
        return sample

    def _forward_backward_step(
        self, idx, batch, *, loss_buffer, num_label_tokens, num_batches, is_train: bool = True
    ) -> None:
        """One micro-batch: block-diffusion forward, 1/t CE, backward (AutoModel's DP convention)."""
        model = self.model_parts[0]
        inputs = self.build_model_inputs(batch, self.block_size)
        sync_ctx = (
            get_sync_ctx(model, idx == num_batches - 1,
                         defer_fsdp_grad_sync=getattr(self.distributed_config, "defer_fsdp_grad_sync", True))
            if is_train
            else nullcontext()
        )
        with sync_ctx:
            loss = self.model_loss(model, inputs, batch, self._loss_denominator)
            loss_buffer.append(loss.detach().clone())
            if is_train:
                # FSDP averages gradients over DP ranks; the loss is already a global mean.
                (loss * self._get_dp_group_size(include_cp=True)).backward()

    @torch.no_grad()
    def _run_validation_epoch(self, val_dataloader) -> MetricsSample:
        """Validation loss with fixed noise (same draws every evaluation)."""
        for part in self.model_parts:
            part.eval()
        total, samples = torch.zeros((), dtype=torch.float64), 0
        for i, batch in enumerate(val_dataloader):
            batch = self.apply_noise(batch, self.noise_generator(-1, i))
            denominator = batch["num_samples"] if self.bard.loss.normalization == "sample_mean" else int(batch["loss_mask"].sum())
            inputs = self.build_model_inputs(batch, self.block_size)
            loss = self.model_loss(self.model_parts[0], inputs, batch, 1.0)
            total += loss.double().cpu()
            samples += int(denominator)
        total = self._dp_allreduce(total.reshape(1)).item()
        samples = int(self._dp_allreduce(torch.tensor([samples], dtype=torch.long)).item())
        return MetricsSample(
            step=self.step_scheduler.step,
            epoch=self.step_scheduler.epoch,
            metrics={
                "val_loss": total / max(samples, 1),
                "lr": self.optimizer[0].param_groups[0]["lr"],
                "num_label_tokens": samples,
                "mem": torch.cuda.max_memory_allocated() / 1024**3 if torch.cuda.is_available() else 0.0,
            },
        )

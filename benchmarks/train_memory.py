"""Per-GPU peak memory of a PBM / SWD YAML under FSDP2, predicted from CPU measurements.

    python benchmarks/train_memory.py --config recipes/bard_pbm_qwen3vl_4b.yaml --gpus 8 --gpu-gib 80 --json OUT.json

Exits 1 when the prediction exceeds ``--fit-fraction`` (0.94) of the GPU memory.

What is measured and what is counted (docs/training.md, "Memory"):

* **Measured on this CPU at the model's real widths** (bf16, as FSDP2's ``param_dtype``),
  with AutoModel's own activation checkpointing (``apply_submodule_checkpointing``) when the
  YAML turns it on: the bytes held from forward to backward and the extra peak during
  backward, for 1 and 2 text layers (the difference is one layer) and 1 and 2 vision blocks,
  at a short sequence. Tensors are followed by a ``TorchDispatchMode`` that records every
  storage an op creates until it is freed; each is classed *linear* (grows with tokens) or
  *square* (has two sequence-long dimensions: masks), so both scale exactly to the real row
  length. Parameter gradients are dropped as they are accumulated (FSDP2 reduce-scatters
  them into the sharded fp32 gradients counted below). The loss head (LM head + the
  recipe's loss, SWD: CE + top-k KL) is measured per loss token at the real vocabulary, the
  way the YAML runs it: all ``[N, V]`` logits at once (``bard.loss.chunk_tokens: 0``), or in
  chunks recomputed in backward (``diffusion/chunked_head.py``), whose backward peak grows
  with the chunk, not with N (measured per chunk row), plus one ``[V, H]`` bf16 weight
  gradient of a chunk before it is added to the head's (counted from shapes).
* **Counted from shapes**: parameters (meta-device build of the Bard-VL subclass), fp32
  master weights + fp32 gradients + AdamW's two fp32 states, all sharded over the GPUs; the
  bf16 all-gather of the unit being run and the one prefetched, the unsharded gradient of
  one unit (bf16 + its fp32 reduce copy), the embedding / LM-head units; the recipe's
  ``[B,1,S,S]`` fp32 additive mask held through the step (sdpa) or the BlockMask (flex); a
  fixed reserve for the CUDA context and NCCL buffers.
* **Worst case assumed**: every row of the micro-batch is ``pack_size`` long (one sample's
  longest layout when packing is off), half of it is the noisy copy, ``--vision-tokens``
  merged vision tokens a row (default: the whole ``max_length``). Loss positions:
  ``--loss-fraction`` (0.7) of the noisy half. The corrupted fraction has mean 1/2 (mask
  noise) or 2/pi (mixed) and, with per-block t stratified over a response's blocks, a
  standard deviation below ``0.5 / sqrt(R)`` of it: 0.7 is over 10 deviations above either mean at
  R = 8192 (only rows of a few short samples can exceed it, and then by few tokens).

Attention: the sdpa figure is what the shipped YAMLs run today (``attn_implementation: sdpa``,
a dense mask, one S x S bias saved per layer without checkpointing); the flex figure drops
every square term and adds the BlockMask (its per-token terms are taken from sdpa's, which
also holds K/V repeated to all heads: an upper bound).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

GIB = 1024**3
RESERVE_GIB = 2.0  # CUDA context (~0.5-1 GiB) + NCCL buffers; not measurable on a CPU
ADAM_BYTES_PER_PARAM = 4 + 4 + 8  # fp32 master weight, fp32 gradient, two fp32 AdamW states

# Qwen3-VL shapes (HF config.json of Qwen/Qwen3-VL-{4B,8B}-Instruct; scale_facts.md).
PRESETS: dict[str, dict[str, Any]] = {
    "qwen3vl-4b": {
        "text": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, vocab_size=151936),
        "vision": dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2560,
                       deepstack_visual_indexes=[5, 11, 17]),
        "tie_word_embeddings": True,
    },
    "qwen3vl-8b": {
        "text": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, vocab_size=151936),
        "vision": dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096,
                       deepstack_visual_indexes=[8, 16, 24]),
        "tie_word_embeddings": False,
    },
}
_COMMON_VISION = dict(patch_size=16, temporal_patch_size=2, spatial_merge_size=2, in_channels=3,
                      num_position_embeddings=2304)


# ---------------------------------------------------------------------------------------------- shapes
def resolve_preset(path: str | None, *hints: str) -> str:
    """The preset of a model section: a local config.json's width, else '4b'/'8b' in its path or the YAML name."""
    if path and (Path(path) / "config.json").is_file():
        text = json.loads((Path(path) / "config.json").read_text()).get("text_config", {})
        for name, preset in PRESETS.items():
            if text.get("hidden_size") == preset["text"]["hidden_size"]:
                return name
    for hint in (path or "", *hints):
        low = Path(hint).name.lower() if hint else ""
        for size in ("8b", "4b"):
            if size in low or size in (hint or "").lower():
                return f"qwen3vl-{size}"
    raise SystemExit(f"cannot tell the model size of {path!r}: use --model / --teacher (one of {list(PRESETS)})")


def bard_config(preset: str, *, text_layers: int | None = None, vision_depth: int | None = None,
                vocab: int | None = None):
    from nemo_automodel_bard.models.bard_vl import BardVLConfig

    spec = PRESETS[preset]
    text = dict(spec["text"], max_position_embeddings=32768,
                rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20],
                                 "mrope_interleaved": True})
    vision = dict(_COMMON_VISION, **spec["vision"])
    if text_layers is not None:
        text["num_hidden_layers"] = text_layers
    if vision_depth is not None:
        vision["depth"] = vision_depth
        vision["deepstack_visual_indexes"] = [i for i in vision["deepstack_visual_indexes"] if i < vision_depth] or [0]
    if vocab is not None:
        text["vocab_size"] = vocab
    return BardVLConfig(text_config=text, vision_config=vision, tie_word_embeddings=spec["tie_word_embeddings"],
                        mask_token_id=min(151671, text["vocab_size"] - 1), image_token_id=min(151655, text["vocab_size"] - 2),
                        video_token_id=min(151656, text["vocab_size"] - 3),
                        vision_start_token_id=min(151652, text["vocab_size"] - 4),
                        vision_end_token_id=min(151653, text["vocab_size"] - 5))


@dataclass
class ParamCounts:
    total: int
    text_layer: int
    vision_block: int
    embedding: int  # input embedding + LM head (once if tied)


@functools.lru_cache(maxsize=None)
def param_counts(preset: str) -> ParamCounts:
    """Exact parameter counts: a meta-device build with one text layer and one vision block, scaled.

    Layers (and blocks) are identical, so the full count is the 1-layer count plus the others.
    """
    from nemo_automodel_bard.models.bard_vl import BardVLForConditionalGeneration

    with torch.device("meta"):
        model = BardVLForConditionalGeneration(bard_config(preset, text_layers=1, vision_depth=1))
    unique = {id(p): p for p in model.parameters()}
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    embed = {id(p): p for p in (*model.get_input_embeddings().parameters(), *model.lm_head.parameters())}
    layer, block = count(model.model.language_model.layers[0]), count(model.model.visual.blocks[0])
    spec = PRESETS[preset]
    # deepstack mergers depend on the depth: count them from the full index list.
    merger = count(model.model.visual.deepstack_merger_list[0]) if len(model.model.visual.deepstack_merger_list) else 0
    extra_mergers = len(spec["vision"]["deepstack_visual_indexes"]) - len(model.model.visual.deepstack_merger_list)
    total = (sum(p.numel() for p in unique.values()) + (spec["text"]["num_hidden_layers"] - 1) * layer
             + (spec["vision"]["depth"] - 1) * block + extra_mergers * merger)
    return ParamCounts(total=total, text_layer=layer, vision_block=block,
                       embedding=sum(p.numel() for p in embed.values()))


# ---------------------------------------------------------------------------------------------- tracking
_MATMULS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
            torch.ops.aten.baddbmm.default}


def _call(func, args, kwargs):
    """Run an op; bf16 matmuls in fp32, rounded back (same output shape and dtype: only speed changes).

    bf16 matmuls are ~20x slower than fp32 on CPUs without bf16 units; the byte counts only see
    the op's outputs, and the fp32 temporaries inside this call are not tracked.
    """
    if func in _MATMULS and any(isinstance(a, torch.Tensor) and a.dtype == torch.bfloat16 for a in args):
        up = [a.float() if isinstance(a, torch.Tensor) and a.dtype == torch.bfloat16 else a for a in args]
        return func(*up, **kwargs).to(torch.bfloat16)
    return func(*args, **kwargs)


class LiveBytes(TorchDispatchMode):
    """Bytes of tensor storages created under the mode and still alive: now and at the peak.

    A storage is *square* if the tensor that created it has two dimensions equal to
    ``square_len`` (the sequence length): masks and attention biases. Storages are followed
    with weak references (a storage lives as long as any tensor or saved variable uses it).
    """

    def __init__(self, square_len: int, existing: list[torch.Tensor] = ()) -> None:
        super().__init__()
        self.square_len = square_len
        # Storages from before the step (parameters, inputs): views of them are not new memory.
        self._existing = {t.untyped_storage().data_ptr() for t in existing}
        self.live = {"linear": 0, "square": 0}
        self.peak_total, self.peak = 0, {"linear": 0, "square": 0}
        self._tracked: dict[int, tuple[str, int, StorageWeakRef]] = {}

    def _sweep(self) -> None:
        for key in [k for k, (_, _, ref) in self._tracked.items() if ref.expired()]:
            kind, nbytes, _ = self._tracked.pop(key)
            self.live[kind] -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = _call(func, args, kwargs or {})
        self._sweep()
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
                continue
            storage = tensor.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or key in self._tracked or key in self._existing:
                continue
            kind = "square" if sum(d == self.square_len for d in tensor.shape) >= 2 else "linear"
            self._tracked[key] = (kind, nbytes, StorageWeakRef(storage))
            self.live[kind] += nbytes
        total = self.live["linear"] + self.live["square"]
        if total > self.peak_total:
            self.peak_total, self.peak = total, dict(self.live)
        return out


@dataclass
class Measured:
    """Bytes held from forward to backward (by class), and the extra peak above them during backward."""

    held: dict[str, int]
    extra_square: int  # square bytes above the held ones at the peak
    extra_linear: int  # the rest of the extra peak


def _run_step(forward, square_len: int, existing: list[torch.Tensor]) -> Measured:
    """Forward (returns a scalar loss), then backward, under :class:`LiveBytes`."""
    tracker = LiveBytes(square_len, existing)
    with tracker:
        loss = forward()
        tracker._sweep()  # what forward's locals dropped on return
        held = dict(tracker.live)
        tracker.peak_total, tracker.peak = sum(held.values()), dict(held)
        loss.backward()
        del loss
    extra_square = max(tracker.peak["square"] - held["square"], 0)
    extra_linear = max(tracker.peak_total - sum(held.values()) - extra_square, 0)
    return Measured(held=held, extra_square=extra_square, extra_linear=extra_linear)


def _drop_grads(model: torch.nn.Module) -> None:
    # FSDP2 reduce-scatters each unit's gradient into the sharded fp32 one (counted from shapes).
    for param in model.parameters():
        if param.requires_grad:
            param.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))


def _checkpoint(layers) -> None:
    from nemo_automodel.components.distributed.activation_checkpointing import apply_submodule_checkpointing

    apply_submodule_checkpointing(list(layers), False)


def _build(preset: str, text_layers: int, vision_depth: int, vocab: int, checkpointing: bool):
    from nemo_automodel_bard.models.bard_vl import BardVLForConditionalGeneration

    config = bard_config(preset, text_layers=text_layers, vision_depth=vision_depth, vocab=vocab)
    config._attn_implementation = "sdpa"
    config.text_config._attn_implementation = "sdpa"
    config.vision_config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = BardVLForConditionalGeneration(config).to(torch.bfloat16).train()
    if checkpointing:
        _checkpoint(model.model.language_model.layers)
        _checkpoint(model.model.visual.blocks)
    _drop_grads(model)
    return model


def measure_text(preset: str, seq: int, layers: int, checkpointing: bool, block_size: int = 4) -> Measured:
    """One packed row of ``seq`` tokens (prompt S/2, response S/4 twice) through ``layers`` text layers."""
    from nemo_automodel_bard.diffusion.layout import apply_noise, collate_layout, layout_attention_mask

    vocab = 512
    model = _build(preset, layers, 1, vocab, checkpointing)
    response = seq // 4
    gen = torch.Generator().manual_seed(0)
    sample = {"prompt_ids": torch.randint(20, 400, (seq - 2 * response,), generator=gen),
              "response_ids": torch.randint(20, 400, (response,), generator=gen)}
    batch = collate_layout([sample], block_size=block_size, pad_token_id=1)
    batch = apply_noise(batch, block_size=block_size, mask_token_id=model.config.mask_token_id, generator=gen)
    assert batch["input_ids"].shape[1] == seq
    mask = layout_attention_mask(batch, block_size)  # fp32 additive, as the recipe builds it (held: counted apart)
    positions = torch.arange(seq).expand(3, 1, seq)

    keep = batch["loss_mask"]

    def forward():
        # The recipe's call (BardVL turns the mask into bool for sdpa); a tiny vocabulary here, the
        # real LM head and loss are measured apart. No KV cache in training (AutoModel turns it
        # off; a checkpoint replay would append to it twice).
        out = model(input_ids=batch["input_ids"], position_ids=positions, attention_mask=mask, logits_to_keep=keep,
                    use_cache=False)
        return out.logits.float().sum()

    existing = [*model.parameters(), *model.buffers(), mask, positions, keep, *batch_tensors(batch)]
    return _run_step(forward, seq, existing)


def measure_vision(preset: str, patches_side: int, depth: int, checkpointing: bool) -> Measured:
    """One image of ``patches_side**2`` patches through ``depth`` vision blocks."""
    model = _build(preset, 1, depth, 512, checkpointing)
    visual = model.model.visual
    dim = 3 * _COMMON_VISION["temporal_patch_size"] * _COMMON_VISION["patch_size"] ** 2
    pixels = torch.randn(patches_side**2, dim, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    grid = torch.tensor([[1, patches_side, patches_side]])

    def forward():
        out = visual(pixels, grid_thw=grid, return_dict=True)
        return out.pooler_output.float().sum() + sum(f.float().sum() for f in out.deepstack_features)

    return _run_step(forward, -1, [*model.parameters(), *model.buffers(), pixels, grid])


def measure_loss_head(preset: str, tokens: int, kind: str, hidden: int = 8, chunk_tokens: int = 0) -> Measured:
    """LM head + loss over ``tokens`` loss positions at the real vocabulary (bf16 logits, fp32 loss).

    ``chunk_tokens`` 0: the head on all rows, then the loss (the recipe keeps the logits
    until backward); > 0: the recipe's chunked head (``chunked_head_loss``).
    """
    from nemo_automodel_bard.diffusion.chunked_head import chunked_head_loss
    from nemo_automodel_bard.diffusion.distill import teacher_topk, topk_kl_to_student
    from nemo_automodel_bard.diffusion.loss import weighted_cross_entropy

    vocab = PRESETS[preset]["text"]["vocab_size"]
    gen = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(hidden, vocab, bias=False).to(torch.bfloat16)
    _drop_grads(head)
    states = torch.randn(tokens, hidden, generator=gen).to(torch.bfloat16).requires_grad_()
    labels = torch.randint(0, vocab, (tokens,), generator=gen)
    weights = torch.rand(tokens, generator=gen)
    with torch.no_grad():
        targets = teacher_topk(torch.randn(tokens, vocab, generator=gen), top_k=16)

    kept = []  # the recipe keeps `logits` referenced until its backward has run

    def loss_of(logits, rows):
        loss = weighted_cross_entropy(logits, labels[rows], weights[rows], 1.0)
        if kind == "swd":
            loss = loss + (topk_kl_to_student(logits, *(t[rows] for t in targets)) * weights[rows]).sum()
        return loss.reshape(1)

    def forward():
        if chunk_tokens:
            chunk_loss = lambda logits, start: loss_of(logits, slice(start, start + logits.shape[0]))  # noqa: E731
            return chunked_head_loss(states, head.weight, chunk_loss, chunk_tokens).sum()
        logits = head(states)
        kept.append(logits)
        return loss_of(logits, slice(None)).sum()

    result = _run_step(forward, -1, [head.weight, states, labels, weights, *targets])
    # The head's weight gradient [V, hidden] is dropped; at real width it is one unit's gradient (counted apart).
    return result


def batch_tensors(batch: dict[str, Any]) -> list[torch.Tensor]:
    return [v for v in batch.values() if isinstance(v, torch.Tensor)]


# ---------------------------------------------------------------------------------------------- model
@dataclass
class Rates:
    """Per-token (linear) and per-token-squared (square) bytes, for one layer and for the rest of the model."""

    layer_held: tuple[float, float]
    base_held: tuple[float, float]
    extra: tuple[float, float]


@functools.lru_cache(maxsize=None)
def text_rates(preset: str, seq: int, checkpointing: bool) -> Rates:
    """Held bytes of one layer and of the rest from 1 vs 2 layers; the backward extra from seq vs 2 seq.

    The extra peak has a per-step constant (a unit's unsharded weight gradients before they
    are dropped, counted from shapes) and a per-token part: the slope over two lengths.
    """
    one, two = measure_text(preset, seq, 1, checkpointing), measure_text(preset, seq, 2, checkpointing)
    longer = measure_text(preset, 2 * seq, 1, checkpointing)
    layer = {k: two.held[k] - one.held[k] for k in one.held}
    base = {k: one.held[k] - layer[k] for k in one.held}
    return Rates(
        layer_held=(layer["linear"] / seq, layer["square"] / seq**2),
        base_held=(base["linear"] / seq, base["square"] / seq**2),
        extra=(max(longer.extra_linear - one.extra_linear, 0) / seq, longer.extra_square / (2 * seq) ** 2),
    )


@functools.lru_cache(maxsize=None)
def vision_rates(preset: str, side: int, checkpointing: bool) -> tuple[float, float, float]:
    """(held per patch per block, held per patch outside the blocks, backward extra per patch)."""
    one, two = measure_vision(preset, side, 1, checkpointing), measure_vision(preset, side, 2, checkpointing)
    larger = measure_vision(preset, 2 * side, 1, checkpointing)
    patches = side * side
    block = (sum(two.held.values()) - sum(one.held.values())) / patches
    base = (sum(larger.held.values()) - sum(one.held.values())) / (3 * patches) - block
    extra = max(larger.extra_linear - one.extra_linear, 0) / (3 * patches)
    return block, base, extra


@functools.lru_cache(maxsize=None)
def loss_rates(preset: str, kind: str, chunked: bool = False) -> tuple[float, float]:
    """(held, backward extra) bytes per loss token: slopes over two token counts.

    Chunked: the held slope over 16 vs 32 tokens (8-row chunks), and the extra per *chunk
    row*: the slope over 8- vs 16-row chunks at 32 tokens.
    """
    chunk = 8 if chunked else 0
    small, large = measure_loss_head(preset, 16, kind, chunk_tokens=chunk), measure_loss_head(preset, 32, kind, chunk_tokens=chunk)
    held = (sum(large.held.values()) - sum(small.held.values())) / 16
    if chunked:
        larger_chunk = measure_loss_head(preset, 32, kind, chunk_tokens=2 * chunk)
        return held, max(larger_chunk.extra_linear - large.extra_linear, 0) / chunk
    extra = max(large.extra_linear - small.extra_linear, 0) / 16
    return held, extra


def block_mask_bytes(rows: int, seq: int, tile: int = 128) -> int:
    """A BlockMask: (kv and q) x (partial and full) x (num_blocks [n] + indices [n, n]) int32 per row."""
    n = math.ceil(seq / tile)
    return rows * 4 * (n + n * n) * 4


# ---------------------------------------------------------------------------------------------- config
def read_config(path: str) -> dict[str, Any]:
    from nemo_automodel_bard.diffusion.layout import max_layout_length

    config = yaml.safe_load(Path(path).read_text())
    bard = config.get("bard") or {}
    packing = bard.get("packing") or {}
    stages = (config.get("pbm") or {}).get("stages") or []
    block = max([int(bard.get("block_size", 4))] + [int(s["block_size"]) for s in stages])
    max_length = int((config.get("dataset") or {}).get("max_length", 8192))
    pad = int(packing.get("pad_to_multiple_of", 1))
    pack = packing.get("pack_size")
    seq = int(pack) if pack else max_layout_length(max_length, block)
    seq = math.ceil(seq / pad) * pad
    chunk = (bard.get("loss") or {}).get("chunk_tokens")
    distributed = config.get("distributed") or {}
    teacher = config.get("teacher") or {}
    has_teacher = "teacher_model" in config and teacher.get("kind", "anchor") != "none"
    return {
        "recipe": "swd" if "teacher" in config or "distill" in config else "pbm",
        "model_path": (config.get("model") or {}).get("pretrained_model_name_or_path"),
        "teacher_path": (config.get("teacher_model") or {}).get("pretrained_model_name_or_path") if has_teacher else None,
        "checkpointing": bool(distributed.get("activation_checkpointing", False)),
        "rows": int((config.get("step_scheduler") or {}).get("local_batch_size", 1)),
        "seq": seq,
        "max_length": max_length,
        "block_size": block,
        "pack_size": pack,
        "chunk_tokens": _default_chunk_tokens() if chunk is None else int(chunk),
    }


def _default_chunk_tokens() -> int:
    from nemo_automodel_bard.recipes.config_check import LossSettings

    return LossSettings().chunk_tokens


def predict(cfg: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    gpus = args.gpus
    preset = args.model or resolve_preset(cfg["model_path"], args.config)
    teacher = (args.teacher or resolve_preset(cfg["teacher_path"])) if cfg["teacher_path"] else None
    counts = param_counts(preset)
    rows, seq, ac = cfg["rows"], cfg["seq"], cfg["checkpointing"]
    spec = PRESETS[preset]
    hidden, layers = spec["text"]["hidden_size"], spec["text"]["num_hidden_layers"]
    depth = spec["vision"]["depth"]

    text = text_rates(preset, args.measure_seq, ac)
    v_block, v_base, v_extra = vision_rates(preset, args.measure_patches_side, ac)
    chunk = cfg["chunk_tokens"] if args.chunk_tokens is None else args.chunk_tokens
    l_held, l_extra = loss_rates(preset, cfg["recipe"], chunk > 0)
    vision_tokens = args.vision_tokens if args.vision_tokens is not None else cfg["max_length"] - 1
    patches = rows * 4 * min(vision_tokens, seq)
    loss_tokens = int(args.loss_fraction * rows * seq // 2)

    gib = {}
    gib["params_grads_adam_sharded"] = counts.total * ADAM_BYTES_PER_PARAM / gpus / GIB
    unit = max(counts.text_layer, counts.vision_block)
    # bf16 all-gather of the running and the prefetched unit, one unit's unsharded gradient (bf16 + fp32 reduce).
    gib["unsharded_units"] = (2 * 2 * unit + 6 * unit + 2 * counts.embedding + 2 * counts.embedding) / GIB
    if teacher:
        t_counts = param_counts(teacher)
        gib["teacher_params_sharded"] = 2 * t_counts.total / gpus / GIB
        gib["teacher_unsharded_units"] = (2 * 2 * max(t_counts.text_layer, t_counts.vision_block)) / GIB
    lin = lambda rate: rate[0] * seq * rows  # noqa: E731
    sq = lambda rate: rate[1] * seq * seq * rows  # noqa: E731
    gib["text_activations_linear"] = (layers * lin(text.layer_held) + lin(text.base_held)) / GIB
    gib["vision_activations"] = (depth * v_block + v_base) * patches / GIB
    gib["loss_head"] = l_held * loss_tokens / GIB
    if chunk:  # one chunk's recomputed logits and their gradients, and that chunk's bf16 [V, H] weight gradient
        loss_extra = l_extra * min(chunk, loss_tokens) + 2 * spec["text"]["vocab_size"] * hidden
    else:
        loss_extra = l_extra * loss_tokens
    backward_extra = max(lin(text.extra), v_extra * patches, loss_extra)
    gib["backward_transient"] = backward_extra / GIB
    gib["reserve_cuda_nccl"] = RESERVE_GIB
    common = sum(gib.values())
    masks = {
        "sdpa": {"recipe_mask_fp32": 4 * rows * seq * seq / GIB,
                 "saved_square_terms": (layers * sq(text.layer_held) + sq(text.base_held) + sq(text.extra)) / GIB},
        "flex": {"block_mask": block_mask_bytes(rows, seq) / GIB},
    }
    totals = {name: common + sum(parts.values()) for name, parts in masks.items()}
    return {
        "config": args.config, "recipe": cfg["recipe"], "model": preset, "teacher": teacher,
        "params": counts.total, "gpus": gpus, "gpu_gib": args.gpu_gib, "rows": rows, "seq": seq,
        "activation_checkpointing": ac, "vision_tokens_per_row": min(vision_tokens, seq), "loss_tokens": loss_tokens,
        "chunk_tokens": chunk, "loss_head_backward_gib": round(loss_extra / GIB, 3),
        "measured": {
            "text_layer_bytes_per_token": text.layer_held[0], "text_layer_bytes_per_token2": text.layer_held[1],
            "text_base_bytes_per_token": text.base_held[0], "text_base_bytes_per_token2": text.base_held[1],
            "text_backward_extra_bytes_per_token": text.extra[0],
            "vision_block_bytes_per_patch": v_block, "vision_base_bytes_per_patch": v_base,
            "loss_head_bytes_per_loss_token": l_held,
            # chunked: per row of one chunk (the backward recomputes one chunk at a time)
            "loss_backward_extra_bytes_per_loss_token" if not chunk else "loss_backward_extra_bytes_per_chunk_row": l_extra,
            "measure_seq": args.measure_seq, "measure_patches": args.measure_patches_side**2,
        },
        "breakdown_gib": {k: round(v, 3) for k, v in gib.items()},
        "attention_gib": {name: {k: round(v, 4) for k, v in parts.items()} for name, parts in masks.items()},
        "predicted_peak_gib_by_attention": {k: round(v, 2) for k, v in totals.items()},
        "attention": args.attention,
        "predicted_peak_gib": round(totals[args.attention], 2),
        "limit_gib": round(args.fit_fraction * args.gpu_gib, 2),
    }


def table(cfg: dict[str, Any], args: argparse.Namespace, packs: list[int]) -> str:
    """Markdown rows: the YAML's model at other row lengths, with and without checkpointing."""
    lines = ["| model | recipe | row tokens (pack_size) | activation checkpointing | sdpa GiB | flex GiB | fits |",
             "|---|---|---|---|---|---|---|"]
    for seq in packs:
        for ac in (True, False):
            row = predict({**cfg, "seq": seq, "checkpointing": ac}, args)
            peaks = row["predicted_peak_gib_by_attention"]
            lines.append(f"| {row['model']} | {row['recipe']} | {seq} | {'on' if ac else 'off'} | {peaks['sdpa']:.1f} | "
                         f"{peaks['flex']:.1f} | {'yes' if peaks[args.attention] <= row['limit_gib'] else 'no'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--gpu-gib", type=float, default=80.0)
    parser.add_argument("--fit-fraction", type=float, default=0.94)
    parser.add_argument("--json")
    parser.add_argument("--model", choices=sorted(PRESETS), help="default: from the YAML's model path/name")
    parser.add_argument("--teacher", choices=sorted(PRESETS), help="SWD teacher (default: from its path)")
    parser.add_argument("--attention", choices=("sdpa", "flex"), default="sdpa",
                        help="which figure decides the exit code (the YAMLs run sdpa today)")
    parser.add_argument("--vision-tokens", type=int, help="merged vision tokens a row (default: max_length - 1)")
    parser.add_argument("--measure-seq", type=int, default=48, help="row length of the CPU measurement")
    parser.add_argument("--measure-patches-side", type=int, default=8, help="vision measurement: side^2 patches")
    parser.add_argument("--loss-fraction", type=float, default=0.7,
                        help="loss positions as a fraction of a row's noisy half (mean 1/2 for mask noise, 2/pi mixed)")
    parser.add_argument("--chunk-tokens", type=int,
                        help="LM head + loss chunk rows (0: all logits at once; default: the YAML's bard.loss.chunk_tokens)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--table", type=int, nargs="*", metavar="SEQ",
                        help="also print a markdown table at these row lengths, checkpointing on and off")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = read_config(args.config)
    result = predict(cfg, args)
    fits = result["predicted_peak_gib"] <= result["limit_gib"]
    result["fits"] = fits
    print(json.dumps({k: result[k] for k in ("config", "model", "teacher", "rows", "seq", "activation_checkpointing",
                                             "chunk_tokens", "loss_head_backward_gib", "breakdown_gib", "attention_gib", "predicted_peak_gib_by_attention")},
                     indent=1))
    print(f"predicted peak {result['predicted_peak_gib']:.1f} GiB/GPU ({args.attention}) vs limit "
          f"{result['limit_gib']:.1f} GiB ({args.fit_fraction} x {args.gpu_gib}): {'fits' if fits else 'DOES NOT FIT'}")
    if args.table:
        print(table(cfg, args, args.table))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if fits else 1


if __name__ == "__main__":
    sys.exit(main())

"""Tiny, fully local Bard-VL pieces for tests, examples and benchmarks (no hub, no network).

Public API (stable; other areas' tests may use it):

* ``TINY_IDS``: the special-token ids of the tiny tokenizer (pad, im_start, eos, vision
  start/end, image, video, mask).
* ``tiny_config(**overrides) -> BardVLConfig``: text hidden 64, 2 layers, 4 heads / 2 KV heads,
  head_dim 16, interleaved mRoPE ``[2, 3, 3]``, vocab 256; vision depth 2, hidden 32, patch 4,
  out 64, DeepStack ``[0]``. ``overrides`` go to the top-level config; ``text=`` / ``vision=``
  dicts update the sub-configs.
* ``tiny_model(seed=0, attn_implementation="sdpa", **overrides) -> BardVLForConditionalGeneration``:
  random fp32 weights (deterministic for a seed), eval mode.
* ``tiny_tokenizer() -> PreTrainedTokenizerFast``: character-level with the Qwen chat
  specials and a Qwen-style chat template.
* ``tiny_processor() -> Qwen3VLProcessor``: that tokenizer + Qwen2-VL image and Qwen3-VL video
  processors with patch 4, merge 2 (a 16x16 image gives 4 image tokens).
* ``tiny_image(seed=0, size=16) -> PIL.Image``: a random RGB image.
* ``chat_batch(processor, prompts, images=None) -> BatchFeature``: left-padded processor output
  for user turns ``prompts[i]`` (each with ``images[i]`` if given), generation prompt added.
* ``save_tiny_checkpoint(path, *, seed=0, processor=True, **overrides) -> Path``: a local
  Bard-VL checkpoint directory (safetensors + config + processor files naming
  ``BardVLProcessor``).
* ``save_tiny_released_checkpoint(path, *, legacy_files=False, seed=0) -> Path``: a tiny Bard-VL
  checkpoint whose processor files name ``Qwen3VLProcessor``, as released ones (copied from
  Qwen3-VL) do; ``legacy_files`` writes transformers 4.57's layout (``preprocessor_config.json``,
  ``video_preprocessor_config.json``, ``chat_template.json``) instead of ``processor_config.json``.
* ``save_tiny_qwen3vl_checkpoint(path, *, seed=0) -> Path``: the autoregressive counterpart
  (stock HF Qwen3-VL class and config, ``<|reserved|>`` instead of ``<|mask|>``), the input of
  ``bard-convert``.
* ``released_layout_config(config) -> dict``: ``config.json`` as the released Bard-VL
  checkpoints write it (transformers 4.57 keys, ``bard_vl`` sub-config model types,
  ``rope_scaling``, misspelled ``architectures``, no ``mask_token_id``/``block_size``).
* ``write_tiny_video(path, *, frames=8, size=32, fps=4) -> Path``: a small ``.mp4`` / ``.webm``
  written with PyAV (a qwen-vl-utils dependency), for the video-file paths.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from nemo_automodel_bard.models.bard_vl import BardVLConfig, BardVLForConditionalGeneration

__all__ = [
    "vision_sample",
    "TINY_IDS",
    "tiny_config",
    "tiny_model",
    "tiny_tokenizer",
    "tiny_processor",
    "tiny_image",
    "chat_batch",
    "save_tiny_checkpoint",
    "save_tiny_released_checkpoint",
    "save_tiny_qwen3vl_checkpoint",
    "released_layout_config",
    "write_tiny_video",
]

_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|mask|>",
    "<unk>",
]
TINY_IDS = {
    "pad": 0,
    "im_start": 1,
    "eos": 2,
    "vision_start": 3,
    "vision_end": 4,
    "image": 5,
    "video": 6,
    "mask": 7,
    "unk": 8,
}
TINY_VOCAB_SIZE = 256

# Same shape as Qwen3-VL's template (system prompt, vision placeholders, generation prompt).
_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_config(**overrides: Any) -> BardVLConfig:
    """A tiny Bard-VL config (see module docstring); ``text=``/``vision=`` update sub-configs."""
    text = dict(
        vocab_size=TINY_VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3], "mrope_interleaved": True},
        eos_token_id=TINY_IDS["eos"],
        bos_token_id=TINY_IDS["im_start"],
    )
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        patch_size=4,
        temporal_patch_size=2,
        spatial_merge_size=2,
        out_hidden_size=64,
        num_position_embeddings=64,
        deepstack_visual_indexes=[0],
    )
    text.update(overrides.pop("text", {}))
    vision.update(overrides.pop("vision", {}))
    kwargs = dict(
        text_config=text,
        vision_config=vision,
        image_token_id=TINY_IDS["image"],
        video_token_id=TINY_IDS["video"],
        vision_start_token_id=TINY_IDS["vision_start"],
        vision_end_token_id=TINY_IDS["vision_end"],
        mask_token_id=TINY_IDS["mask"],
        eos_token_id=TINY_IDS["eos"],
        tie_word_embeddings=False,
        architectures=["BardVLForConditionalGeneration"],
    )
    kwargs.update(overrides)
    return BardVLConfig(**kwargs)


def tiny_model(seed: int = 0, attn_implementation: str = "sdpa", **overrides: Any) -> BardVLForConditionalGeneration:
    """Random fp32 tiny model in eval mode; the same ``seed`` gives the same weights."""
    config = tiny_config(**overrides)
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = BardVLForConditionalGeneration(config)
    # HF init gives near-zero logits; a wider init makes greedy decisions well separated.
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        for param in model.parameters():
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    return model.float().eval()


def tiny_tokenizer(mask_token: str = "<|mask|>"):
    """Character-level fast tokenizer with the Qwen chat specials at the ids of ``TINY_IDS``.

    ``mask_token`` names the special at ``TINY_IDS["mask"]`` (an AR checkpoint would call it
    something else, e.g. ``"<|reserved|>"``).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(32, 127)] + ["\n", "\t"]
    specials = [mask_token if t == "<|mask|>" else t for t in _SPECIALS]
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        additional_special_tokens=[t for t in specials if t not in ("<unk>", "<|endoftext|>", "<|im_end|>")],
        padding_side="left",
        chat_template=_CHAT_TEMPLATE,
    )
    return tokenizer


def tiny_processor(mask_token: str = "<|mask|>"):
    """``Qwen3VLProcessor`` around the tiny tokenizer, patch 4 / merge 2 image and video processors."""
    from transformers import Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    size = {"shortest_edge": 8 * 8, "longest_edge": 32 * 32}
    image_processor = Qwen2VLImageProcessor(patch_size=4, temporal_patch_size=2, merge_size=2, size=size)
    video_processor = Qwen3VLVideoProcessor(
        patch_size=4, temporal_patch_size=2, merge_size=2, size=size, min_frames=2, max_frames=4
    )
    return Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tiny_tokenizer(mask_token),
        video_processor=video_processor,
        chat_template=_CHAT_TEMPLATE,
    )


def tiny_image(seed: int = 0, size: int = 16):
    """A random ``size`` x ``size`` RGB PIL image."""
    from PIL import Image

    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size, size, 3), generator=gen, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())



def vision_sample(processor: Any, text: str, response: str, seed: int) -> dict[str, Any]:
    """One image + ``text`` prompt and its ``response`` as the per-sample dict the layout takes."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    enc = processor(text=[prompt], images=[tiny_image(seed)], return_tensors="pt")
    ids = enc["input_ids"][0]
    return {
        "prompt_ids": ids,
        "response_ids": torch.tensor(processor.tokenizer(response, add_special_tokens=False)["input_ids"]),
        "mm_token_type_ids": (ids == TINY_IDS["image"]).long(),
        "pixel_values": enc["pixel_values"],
        "image_grid_thw": enc["image_grid_thw"],
    }

def chat_batch(processor, prompts: list[str], images: list | None = None):
    """Left-padded processor output for one user turn per sample (generation prompt added)."""
    texts = []
    for i, prompt in enumerate(prompts):
        content = ([{"type": "image"}] if images is not None and images[i] is not None else []) + [
            {"type": "text", "text": prompt}
        ]
        messages = [{"role": "user", "content": content}]
        texts.append(processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    image_list = [im for im in images if im is not None] if images is not None else None
    processor.tokenizer.padding_side = "left"
    return processor(text=texts, images=image_list or None, padding=True, return_tensors="pt")


def save_tiny_checkpoint(path: str | Path, *, seed: int = 0, processor: bool = True, **overrides: Any) -> Path:
    """Write a tiny Bard-VL checkpoint (+ processor files) to ``path`` and return it."""
    path = Path(path)
    model = tiny_model(seed=seed, **overrides)
    model.save_pretrained(path, safe_serialization=True)
    if processor:
        from nemo_automodel_bard.models.bard_vl.processing import as_bard_processor

        as_bard_processor(tiny_processor()).save_pretrained(path)  # AutoProcessor -> BardVLProcessor
    return path


def save_tiny_released_checkpoint(path: str | Path, *, legacy_files: bool = False, seed: int = 0) -> Path:
    """A tiny Bard-VL checkpoint whose processor files name ``Qwen3VLProcessor`` (released layout)."""
    path = save_tiny_checkpoint(path, seed=seed, processor=False)
    tiny_processor().save_pretrained(path)  # processor_class: Qwen3VLProcessor
    if legacy_files:
        combined = json.loads((path / "processor_config.json").read_text())
        for key, name in (("image_processor", "preprocessor_config.json"),
                          ("video_processor", "video_preprocessor_config.json")):
            data = {**combined[key], "processor_class": combined["processor_class"]}
            (path / name).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        template = path / "chat_template.jinja"
        (path / "chat_template.json").write_text(json.dumps({"chat_template": template.read_text()}, indent=2))
        template.unlink()
        (path / "processor_config.json").unlink()
    return path


def save_tiny_qwen3vl_checkpoint(path: str | Path, *, seed: int = 0) -> Path:
    """A tiny *autoregressive* Qwen3-VL checkpoint (stock HF class, ``model_type: qwen3_vl``)
    with its processor; the tokenizer calls id ``TINY_IDS["mask"]`` ``<|reserved|>``."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    path = Path(path)
    bard = tiny_model(seed=seed)
    data = bard.config.to_dict()
    for key in ("mask_token_id", "block_size", "prompt_attention", "model_type", "architectures"):
        data.pop(key, None)
    config = Qwen3VLConfig(**data, architectures=["Qwen3VLForConditionalGeneration"])
    model = Qwen3VLForConditionalGeneration(config)
    model.load_state_dict(bard.state_dict())
    model.save_pretrained(path, safe_serialization=True)
    tiny_processor(mask_token="<|reserved|>").save_pretrained(path)
    return path


def released_layout_config(config: BardVLConfig) -> dict:
    """``config.json`` of ``config`` in the released Bard-VL layout (bard_spec.md section 1)."""
    data = copy.deepcopy(config.to_dict())
    for key in ("mask_token_id", "block_size", "prompt_attention"):
        data.pop(key, None)
    data["architectures"] = ["BardVLForConditonalGeneration"]  # upstream's typo (D1)
    data["model_type"] = "bard_vl"
    data["transformers_version"] = "4.57.3"
    data["auto_map"] = {
        "AutoConfig": "configuration_bard_vl.BardVLConfig",
        "AutoModelForImageTextToText": "modeling_bard_vl.BardVLForConditionalGeneration",
    }
    text = data["text_config"]
    text["model_type"] = "bard_vl_text"
    rope = dict(text.pop("rope_parameters"))
    text["rope_theta"] = rope.pop("rope_theta")
    text["rope_scaling"] = rope  # 4.57 kept mrope_section / mrope_interleaved here
    data["vision_config"]["model_type"] = "bard_vl"
    return json.loads(json.dumps(data))


def write_tiny_video(path: str | Path, *, frames: int = 8, size: int = 32, fps: int = 4) -> Path:
    """Encode a small moving-gradient video (``.mp4``: MPEG-4, ``.webm``: VP8) with PyAV."""
    import av
    import numpy as np

    path = Path(path)
    codec = {".mp4": "mpeg4", ".webm": "libvpx"}[path.suffix.lower()]
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        for index in range(frames):
            red = np.broadcast_to((ramp + 16 * index) % 256, (size, size))
            pixels = np.stack([red, red.T, np.full_like(red, 32 * (index % 8))], -1).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path

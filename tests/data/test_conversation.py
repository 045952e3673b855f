"""AutoModel conversation items read as BARD samples: the same model inputs as the jsonl reader."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from nemo_automodel_bard.data.chat import BadSampleError
from nemo_automodel_bard.data.collate import bard_collate
from nemo_automodel_bard.data.conversation import build_conversation_dataset
from nemo_automodel_bard.data.dataset import BardChatDataset
from nemo_automodel_bard.diffusion.layout import apply_noise, layout_attention_mask, layout_position_ids
from nemo_automodel_bard.testing import TINY_IDS, tiny_image, tiny_model, tiny_processor

MOCK = "nemo_automodel.components.datasets.vlm.mock.build_mock_vlm_dataset"


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


def _samples(tmp_path):
    """The same samples twice: upstream ``messages`` rows with image paths, AutoModel items with PIL images."""
    for i in range(3):
        tiny_image(i).save(tmp_path / f"img{i}.png")
    for i in range(3):
        tiny_image(10 + i).save(tmp_path / f"frame{i}.png")
    frames = {"type": "video", "video": [f"frame{i}.png" for i in range(3)], "min_pixels": 256, "max_pixels": 256}
    image = lambda i: {"type": "image", "image": f"img{i}.png"}  # noqa: E731
    rows = [
        # several images in one turn
        [{"role": "user", "content": [image(0), image(1), {"type": "text", "text": "Compare them."}]},
         {"role": "assistant", "content": [{"type": "text", "text": "Both are noise."}]}],
        # multi-turn with a system prompt: the last assistant turn is the response
        [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
         {"role": "user", "content": [image(2), {"type": "text", "text": "Colour?"}]},
         {"role": "assistant", "content": [{"type": "text", "text": "Mixed."}]},
         {"role": "user", "content": [{"type": "text", "text": "Sure?"}]},
         {"role": "assistant", "content": [{"type": "text", "text": "Yes, mixed."}]}],
        # text only
        [{"role": "user", "content": [{"type": "text", "text": "Say hi."}]},
         {"role": "assistant", "content": "hi"}],
        # a video given as frame files
        [{"role": "user", "content": [frames, {"type": "text", "text": "What happens?"}]},
         {"role": "assistant", "content": [{"type": "text", "text": "It flickers."}]}],
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps({"messages": r}) for r in rows) + "\n")

    def as_conversation(turn):
        content = turn["content"]
        if isinstance(content, list):
            content = [
                {**c, "image": Image.open(tmp_path / c["image"])} if c["type"] == "image" else c for c in content
            ]
        return {**turn, "content": content}

    items = [{"conversation": [as_conversation(t) for t in r]} for r in rows]
    return path, items


def test_conversation_items_give_the_model_inputs_of_the_jsonl_rows(tmp_path, processor):
    path, items = _samples(tmp_path)
    jsonl = BardChatDataset(str(path), processor=processor, block_size=4)
    conv = build_conversation_dataset(items, root_dir=str(tmp_path), processor=processor, block_size=4)
    assert len(conv) == len(jsonl) == 4
    for i in range(4):
        a, b = jsonl[i], conv[i]
        assert set(a) == set(b)
        for key in a:
            if key != "source":
                assert torch.equal(a[key], b[key]), (i, key)
    assert int((conv[0]["prompt_ids"] == TINY_IDS["image"]).sum()) == 8  # two 16x16 images, 4 tokens each
    assert "pixel_values" not in conv[2] and "pixel_values_videos" in conv[3]
    assert processor.tokenizer.decode(conv[1]["response_ids"]) == "Yes, mixed.<|im_end|>"

    batches = [bard_collate([d[i] for i in range(4)], processor, block_size=4, pack_size=1024) for d in (jsonl, conv)]
    model = tiny_model()
    inputs = []
    for batch in batches:
        noised = apply_noise(batch, block_size=4, mask_token_id=TINY_IDS["mask"], generator=torch.Generator().manual_seed(0))
        inputs.append({
            **{k: v for k, v in noised.items() if isinstance(v, torch.Tensor)},
            "position_ids": layout_position_ids(noised, model.rope_positions),
            "attention_mask": layout_attention_mask(noised, 4),
        })
    assert set(inputs[0]) == set(inputs[1])
    for key in inputs[0]:
        assert torch.equal(inputs[0][key], inputs[1][key]), key


def test_builder_sections_are_built_as_automodel_builds_them(processor):
    ds = build_conversation_dataset(
        {"_target_": MOCK, "num_samples": 3, "image_size": [16, 16], "responses": ["noise"]}, processor=processor
    )
    assert len(ds) == 3 and ds[2]["source"] == "build_mock_vlm_dataset[item 2]"
    assert processor.tokenizer.decode(ds[0]["response_ids"]) == "noise<|im_end|>"
    with pytest.raises(TypeError, match="unexpected dataset config field.*path_or_dataset"):  # AutoModel's typed check
        build_conversation_dataset({"_target_": MOCK, "path_or_dataset": "x"})


def test_bad_items_are_named(tmp_path, processor):
    good = {"conversation": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    with pytest.raises(BadSampleError, match=r"list\[item 1\]: no 'conversation'"):
        build_conversation_dataset([good, {"text": "no turns"}])
    no_answer = {"conversation": [{"role": "user", "content": [{"type": "image", "image": tiny_image(0)}]}]}
    with pytest.raises(BadSampleError, match=r"list\[item 0\]: no assistant turn"):
        build_conversation_dataset([no_answer])
    missing = {"conversation": [{"role": "user", "content": [{"type": "image", "image": "nope.png"}]},
                                {"role": "assistant", "content": "a"}]}
    skipping = build_conversation_dataset([missing, good], root_dir=str(tmp_path), on_bad_sample="skip", processor=processor)
    assert len(skipping) == 1
    assert [k for k in skipping.stats if k.startswith("skipped: missing image file")] and sum(skipping.stats.values()) == 1

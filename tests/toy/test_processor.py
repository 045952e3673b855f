"""The toy tokenizer/processor: Qwen3-VL classes, save/reload, one vision token per cell."""

from __future__ import annotations

import pytest
from transformers import AutoProcessor

from nemo_automodel_bard.toy.processor import (
    MASK_TOKEN,
    SPECIALS,
    ar_config,
    build_processor,
    vocabulary,
)
from nemo_automodel_bard.toy.task import COLOURS, TASKS, answer_for, render


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    path = tmp_path_factory.mktemp("proc")
    build_processor().save_pretrained(str(path))
    return AutoProcessor.from_pretrained(str(path))


def test_reloads_as_qwen3vl_processor(processor):
    assert type(processor).__name__ == "Qwen3VLProcessor"
    tok = processor.tokenizer
    # specials first, at the ids the AR config names
    assert [tok.convert_tokens_to_ids(t) for t in SPECIALS] == list(range(len(SPECIALS)))
    config = ar_config()
    assert config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert config.text_config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert config.text_config.vocab_size == len(tok) == len(vocabulary())
    assert tok.convert_tokens_to_ids(MASK_TOKEN) == 7


def test_every_task_word_is_in_vocabulary(processor):
    tok = processor.tokenizer
    words = set(" ".join(TASKS.values()).split()) | set(COLOURS) | {str(d) for d in range(10)}
    assert tok.unk_token_id not in tok.convert_tokens_to_ids(sorted(words))


@pytest.mark.parametrize("cells", [4, 8])
def test_one_merged_vision_token_per_cell_and_roundtrip(processor, cells):
    digits = tuple(range(cells))
    colours = tuple(list(COLOURS)[i % len(COLOURS)] for i in range(cells))
    answer = answer_for(digits, colours, "describe")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": TASKS["describe"]}]},
                {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    text = processor.apply_chat_template(messages, tokenize=False)
    batch = processor(text=[text], images=[render(digits, colours)], return_tensors="pt")
    ids = batch["input_ids"][0].tolist()
    assert ids.count(processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")) == cells
    assert batch["image_grid_thw"].tolist() == [[1, 2, 2 * cells]]
    # the answer words come back unchanged after the assistant header
    decoded = processor.tokenizer.decode(ids, skip_special_tokens=True)
    assert decoded.endswith("assistant " + answer)


def test_dataset_words_processor_keeps_special_ids_and_sizes_the_config(tmp_path):
    words = ["circle", "and", "square", "what", "?", "user"]  # a role word twice is kept once
    path = tmp_path / "p"
    build_processor(words).save_pretrained(str(path))
    tok = AutoProcessor.from_pretrained(str(path)).tokenizer
    assert [tok.convert_tokens_to_ids(t) for t in SPECIALS] == list(range(len(SPECIALS)))
    assert len(tok) == len(SPECIALS) + 3 + 5 == ar_config(vocab_size=len(tok)).text_config.vocab_size
    ids = tok("circle and square", add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids and tok.decode(ids) == "circle and square"
    assert tok("triangle", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]


def test_words_of_keeps_first_appearance_order():
    from nemo_automodel_bard.toy.processor import words_of

    assert words_of(["b a b", " c  a "]) == ["b", "a", "c"]

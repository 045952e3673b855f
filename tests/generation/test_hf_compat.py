"""Hugging Face calling convention of ``model.generate`` (generation/hf_compat.py).

The reference for every HF-style call is the positional call ``generate(batch, ...)`` with the
same options (which the block-decode tests check against uncached decoding): the HF call must
return the caller's ``input_ids`` followed by exactly those response tokens.
"""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig

from nemo_automodel_bard.testing import TINY_IDS, chat_batch, tiny_image, tiny_model, tiny_processor

PROMPTS = ["hi there", "describe the picture please"]
IMAGES = [None, tiny_image(1)]
BARD = dict(block_size=4, denoising_steps=4)


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0)


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


@pytest.fixture(scope="module")
def batch(processor):
    return chat_batch(processor, PROMPTS, images=IMAGES)


def _split(out, batch):
    P = batch["input_ids"].shape[1]
    return out[:, :P], out[:, P:]


def test_greedy_hf_call_is_prompt_plus_positional_response(model, batch):
    ref = model.generate(batch, 10, **BARD)
    out = model.generate(**batch, max_new_tokens=10, do_sample=False, **BARD)
    prompt, response = _split(out, batch)
    assert torch.equal(prompt, batch["input_ids"])
    assert torch.equal(response, ref)


def test_sampled_hf_call_matches_positional_with_same_generator(model, batch):
    sampling = dict(temperature=0.8, top_k=20, top_p=0.9)
    ref = model.generate(batch, 10, **BARD, **sampling, generator=torch.Generator().manual_seed(3))
    out = model.generate(
        **batch, max_new_tokens=10, do_sample=True, **sampling, **BARD, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(_split(out, batch)[1], ref)
    greedy = model.generate(batch, 10, **BARD)
    assert not torch.equal(ref, greedy)  # the sampled path was really taken


def test_do_sample_false_ignores_sampling_options_as_hf_does(model, batch):
    out = model.generate(**batch, max_new_tokens=10, temperature=0.8, top_k=5, **BARD)
    assert torch.equal(_split(out, batch)[1], model.generate(batch, 10, **BARD))


def test_generation_config_eos_and_pad(model, batch):
    # An EOS the greedy rows actually produce, so rows end at different lengths.
    free = model.generate(batch, 12, **BARD)
    eos = int(free[1, 2])
    ref = model.generate(batch, 12, **BARD, eos_token_id=eos)
    config = GenerationConfig(max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=TINY_IDS["pad"])
    out = model.generate(**batch, generation_config=config, **BARD)
    response = _split(out, batch)[1]
    assert response.shape == ref.shape
    for row_out, row_ref in zip(response, ref):
        hits = (row_ref == eos).nonzero()
        end = int(hits[0]) + 1 if len(hits) else len(row_ref)
        assert torch.equal(row_out[:end], row_ref[:end])
        assert bool((row_out[end:] == TINY_IDS["pad"]).all())
    assert bool((response == TINY_IDS["pad"]).any())  # some row did finish early


def test_max_length_counts_the_prompt(model, batch):
    P = batch["input_ids"].shape[1]
    out = model.generate(**batch, max_length=P + 6, **BARD)
    assert torch.equal(_split(out, batch)[1], model.generate(batch, 6, **BARD))
    with pytest.raises(ValueError, match="max_length"):
        model.generate(**batch, max_length=P, **BARD)


def test_input_ids_positionally_text_only(model, processor):
    text = chat_batch(processor, ["only text here"])
    ref = model.generate(text, 8, **BARD)
    out = model.generate(text["input_ids"], max_new_tokens=8, **BARD)
    assert torch.equal(out[:, text["input_ids"].shape[1] :], ref)


def test_right_padded_batch_gives_the_left_padded_result(model, processor, batch):
    processor.tokenizer.padding_side = "right"
    try:
        texts = [
            processor.apply_chat_template(
                [{"role": "user", "content": ([{"type": "image"}] if im is not None else []) + [{"type": "text", "text": p}]}],
                tokenize=False,
                add_generation_prompt=True,
            )
            for p, im in zip(PROMPTS, IMAGES)
        ]
        right = processor(text=texts, images=[im for im in IMAGES if im is not None], padding=True, return_tensors="pt")
    finally:
        processor.tokenizer.padding_side = "left"
    assert bool((right["attention_mask"][:, -1] == 0).any())  # really right-padded
    out = model.generate(**right, max_new_tokens=10, **BARD)
    prompt, response = _split(out, right)
    assert torch.equal(prompt, right["input_ids"])
    assert torch.equal(response, model.generate(batch, 10, **BARD))


def test_return_dict_and_step_stats(model, batch):
    out, stats = model.generate(**batch, max_new_tokens=8, return_dict_in_generate=True, return_step_stats=True, **BARD)
    ref, ref_stats = model.generate(batch, 8, **BARD, return_step_stats=True)
    assert torch.equal(_split(out.sequences, batch)[1], ref)
    assert stats.to_dict() == ref_stats.to_dict()


def test_neutral_values_of_unsupported_options_are_accepted(model, batch):
    out = model.generate(**batch, max_new_tokens=6, num_beams=1, num_return_sequences=1, repetition_penalty=1.0, **BARD)
    assert torch.equal(_split(out, batch)[1], model.generate(batch, 6, **BARD))


@pytest.mark.parametrize(
    "option, match",
    [
        (dict(num_beams=2), "num_beams=2"),
        (dict(do_sample=True, num_return_sequences=2), "num_return_sequences=2"),
        (dict(repetition_penalty=1.3), "repetition_penalty=1.3"),
        (dict(no_repeat_ngram_size=3), "no_repeat_ngram_size=3"),
        (dict(output_scores=True), "output_scores=True"),
        (dict(logits_processor=[lambda ids, scores: scores]), "logits_processor"),
        (dict(do_sample=True, temperature=0.0), "temperature > 0"),
    ],
)
def test_unsupported_hf_options_are_refused_by_name(model, batch, option, match):
    with pytest.raises(ValueError, match=match):
        model.generate(**batch, max_new_tokens=4, **option)


def test_unknown_argument_and_mixed_conventions_raise(model, batch):
    with pytest.raises(TypeError, match="colour"):
        model.generate(**batch, max_new_tokens=4, colour="red")
    with pytest.raises(TypeError, match=r"generate\(\*\*batch"):
        model.generate(batch, 4, do_sample=False)
    with pytest.raises(ValueError, match="input_ids given twice"):
        model.generate(batch["input_ids"], input_ids=batch["input_ids"], max_new_tokens=4)

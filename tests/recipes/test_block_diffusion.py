"""BardDiffusionRecipe's hooks on the recipe's own code path: mixed noise (D11), chunked loss head.

The recipe is built without ``setup()`` (no AutoModel loop): only the attributes ``setup()``
sets for the hook under test. Mixed noise: the reference is the tokenizer itself: any id it
lists as added (special or not) must never be drawn as a substitute. Chunked loss head: one
training step with ``bard.loss.chunk_tokens`` on must give the loss, gradients and update of
the step that computes all ``[N, V]`` logits at once.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from nemo_automodel_bard.data.collate import bard_collate
from nemo_automodel_bard.data.dataset import build_chat_dataset
from nemo_automodel_bard.data.synthetic import write_color_dataset
from nemo_automodel_bard.diffusion.layout import apply_noise
from nemo_automodel_bard.models.bard_vl import BardVLForConditionalGeneration
from nemo_automodel_bard.recipes.block_diffusion import BardDiffusionRecipe
from nemo_automodel_bard.recipes.config_check import BardSettings
from nemo_automodel_bard.testing import TINY_IDS, tiny_config, tiny_processor

BLOCK = 4


def test_mixed_noise_substitutes_exclude_every_added_token(tmp_path):
    processor = tiny_processor()
    tokenizer = processor.tokenizer
    tokenizer.add_tokens(["<think>", "</think>"])  # added without the `special` flag
    think = tokenizer.convert_tokens_to_ids(["<think>", "</think>"])
    assert not any(tokenizer.added_tokens_decoder[i].special for i in think)

    recipe = BardDiffusionRecipe.__new__(BardDiffusionRecipe)
    recipe.processor, recipe.mask_token_id, recipe.block_size = processor, TINY_IDS["mask"], BLOCK
    recipe.bard = BardSettings.from_mapping({"noise": {"schedule": "mixed"}})
    recipe.substitute_ids = recipe._substitute_ids(tiny_config())

    added = set(tokenizer.added_tokens_decoder)
    allowed = set(recipe.substitute_ids.tolist())
    assert allowed and not allowed & added
    assert allowed == set(range(len(tokenizer))) - added  # every ordinary token stays available

    data = write_color_dataset(tmp_path, num_samples=4)
    dataset = build_chat_dataset(str(data), processor=processor, block_size=BLOCK, max_length=256)
    batch = bard_collate([dataset[i] for i in range(4)], processor, block_size=BLOCK)
    substituted = 0
    for seed in range(20):
        noised = recipe.apply_noise(batch, torch.Generator().manual_seed(seed))
        changed = (noised["input_ids"] != batch["input_ids"]) & (noised["input_ids"] != TINY_IDS["mask"])
        drawn = noised["input_ids"][changed]
        substituted += drawn.numel()
        assert not torch.isin(drawn, torch.tensor(sorted(added))).any()
    assert substituted > 50  # the uniform channel really ran


def _pbm_recipe(model, chunk_tokens, normalization):
    recipe = BardDiffusionRecipe.__new__(BardDiffusionRecipe)
    recipe.bard = BardSettings.from_mapping({"loss": {"chunk_tokens": chunk_tokens, "normalization": normalization}})
    recipe.model_parts, recipe.block_size, recipe.prompt_attention = [model], BLOCK, "block"
    recipe.dist_env = SimpleNamespace(device=torch.device("cpu"))
    return recipe


def one_step(recipe, model, batch, denominator):
    """Loss, gradients and the parameters after one SGD step (a copy of ``model`` is trained)."""
    inputs = recipe.build_model_inputs(batch, BLOCK)
    loss = recipe.model_loss(model, inputs, batch, denominator)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    torch.optim.SGD(model.parameters(), lr=0.1).step()  # AdamW would amplify rounding where |grad| ~ eps
    return loss.detach(), grads, {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_same_step(got, want):
    torch.testing.assert_close(got[0], want[0], atol=1e-6, rtol=1e-6)
    assert got[1].keys() == want[1].keys() and "lm_head.weight" in got[1]
    for name in want[1]:
        torch.testing.assert_close(got[1][name], want[1][name], atol=1e-6, rtol=1e-5, msg=name)
    for name in want[2]:
        torch.testing.assert_close(got[2][name], want[2][name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("normalization", ["sample_mean", "token_mean"])
def test_chunked_loss_head_gives_the_unchunked_step(tmp_path, normalization):
    processor = tiny_processor()
    data = write_color_dataset(tmp_path, num_samples=5)
    dataset = build_chat_dataset(str(data), processor=processor, block_size=BLOCK, max_length=256)
    batch = bard_collate([dataset[i] for i in range(5)], processor, block_size=BLOCK, pack_size=200)
    config = tiny_config(block_size=BLOCK)
    batch = apply_noise(batch, block_size=BLOCK, mask_token_id=config.mask_token_id,
                        generator=torch.Generator().manual_seed(0), normalization=normalization)
    scored = int(batch["loss_mask"].sum())
    denominator = float(batch["num_samples"]) if normalization == "sample_mean" else float(scored)
    torch.manual_seed(0)
    model = BardVLForConditionalGeneration(config).train()

    steps = {}
    for chunk in (0, 7, scored):  # all logits at once; several chunks (the last one partial); one chunk
        trained = copy.deepcopy(model)
        steps[chunk] = one_step(_pbm_recipe(trained, chunk, normalization), trained, batch, denominator)
    assert scored > 2 * 7
    assert_same_step(steps[7], steps[0])
    assert_same_step(steps[scored], steps[0])

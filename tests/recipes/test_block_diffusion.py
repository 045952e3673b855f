"""BardDiffusionRecipe's mixed-noise hook (decision D11) on the recipe's own code path.

The recipe is built without ``setup()`` (no model, no AutoModel loop): only the attributes
``setup()`` sets for the noise hook. The reference is the tokenizer itself: any id it lists
as added (special or not) must never be drawn as a substitute.
"""

from __future__ import annotations

import torch

from nemo_automodel_bard.data.collate import bard_collate
from nemo_automodel_bard.data.dataset import build_chat_dataset
from nemo_automodel_bard.data.synthetic import write_color_dataset
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

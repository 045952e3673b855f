"""``bard finetune`` argument handling and packaged-YAML resolution (no training here)."""

from __future__ import annotations

import pytest

from nemo_automodel_bard.recipes.launch import RECIPES, list_packaged_yamls, packaged_yaml, parse_argv, resolve_config


def test_packaged_yamls_are_found():
    assert {"bard_pbm_tiny", "bard_pbm_qwen3vl_4b"} <= set(list_packaged_yamls())
    assert packaged_yaml("bard_pbm_tiny").name == "bard_pbm_tiny.yaml"
    with pytest.raises(FileNotFoundError, match="available"):
        packaged_yaml("nope")


def test_recipe_name_resolves_default_yaml_and_target(tmp_path):
    data, path = resolve_config("bard_pbm", None)
    assert path.name == "bard_pbm_qwen3vl_4b.yaml"
    assert data["recipe"] == {"_target_": RECIPES["bard_pbm"][0]}
    own = tmp_path / "mine.yaml"
    own.write_text("recipe: {_target_: something.Else}\nseed: 3\n")
    data, path = resolve_config("bard_pbm", str(own))
    assert path == own and data["recipe"]["_target_"] == RECIPES["bard_pbm"][0] and data["seed"] == 3
    with pytest.raises(SystemExit, match="names no recipe"):
        (tmp_path / "bare.yaml").write_text("seed: 1\n")
        resolve_config(None, str(tmp_path / "bare.yaml"))


def test_overrides_are_split_from_our_options():
    options, rest = parse_argv(
        ["--recipe", "bard_pbm_tiny", "--nproc-per-node", "2", "--step_scheduler.max_steps", "3", "--optimizer.lr=1e-4",
         "--checkpoint.enabled", "--config=x.yaml"]
    )
    assert options == {"recipe": "bard_pbm_tiny", "config": "x.yaml", "nproc_per_node": 2, "list": False}
    assert rest == ["--step_scheduler.max_steps", "3", "--optimizer.lr=1e-4", "--checkpoint.enabled"]
    options, rest = parse_argv(["cfg.yaml", "--seed", "5"])
    assert options["config"] == "cfg.yaml" and rest == ["--seed", "5"]


@pytest.mark.parametrize(
    "override, named",
    [("--bard.nois.schedule=mask", "nois"), ("--pbm.stages=[{block_size: 4, lr: 1}]", "`lr`"),
     ("--optimiser.lr=1", "optimiser"), ("--bard.noise.schedule=uniform", "schedule")],
)
def test_bad_keys_fail_before_launch_with_their_name(override, named, capsys):
    from nemo_automodel_bard.recipes.launch import main

    assert main(["--recipe", "bard_pbm_tiny", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bard finetune: ") and named in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--recipe", "nonexistent"], "unknown recipe 'nonexistent'"),
        (["--recipe", "bard_pbm_tiny", "--nproc-per-node", "abc"], "--nproc-per-node must be a positive integer, got 'abc'"),
        (["--recipe", "bard_pbm_tiny", "--nproc-per-node=0"], "--nproc-per-node must be a positive integer"),
    ],
)
def test_bad_options_exit_with_a_message(argv, message):
    from nemo_automodel_bard.recipes.launch import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert message in str(info.value.code)


def test_config_problems_name_the_yaml_and_come_before_any_model(tmp_path, capsys, monkeypatch):
    from nemo_automodel_bard.recipes import launch

    monkeypatch.setattr(launch, "run_in_process", lambda *a: pytest.fail("the recipe started"))
    code = launch.main(["--recipe", "bard_pbm_tiny", f"--model.pretrained_model_name_or_path={tmp_path / 'none'}",
                        "--bard.block_size=4.5", "--step_scheduler.max_steps=1"])
    err = capsys.readouterr().err
    assert code == 2 and "bard_pbm_tiny.yaml: 3 problem(s)" in err
    assert "folder not found" in err and "bard.block_size" in err and "below lr_scheduler.lr_warmup_steps" in err

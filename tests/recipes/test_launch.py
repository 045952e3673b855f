"""``bard finetune`` argument handling and packaged-YAML resolution (no training here)."""

from __future__ import annotations

import pytest

from nemo_automodel_bard.recipes.launch import (
    RECIPES,
    list_packaged_yamls,
    packaged_yaml,
    parse_argv,
    resolve_config,
    torchrun_command,
)


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
    assert options == {"recipe": "bard_pbm_tiny", "config": "x.yaml", "nproc_per_node": 2, "list": False,
                       "dry_run": False, "torchrun": {}}
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


# ---------------------------------------------------------------------------- multi-node (issue 16)
def test_torchrun_multi_node_options_pass_through():
    options, rest = parse_argv(["--recipe", "bard_pbm", "--nproc-per-node", "8", "--nnodes", "4", "--node-rank=3",
                                "--rdzv-endpoint", "head:29500", "--rdzv_id", "77", "--max-restarts", "2",
                                "--optimizer.lr", "1e-5"])
    assert options["torchrun"] == {"nnodes": "4", "node-rank": "3", "rdzv-endpoint": "head:29500", "rdzv-id": "77",
                                   "max-restarts": "2"}
    assert rest == ["--optimizer.lr", "1e-5"]
    command = torchrun_command(options, "cfg.yaml", ["--optimizer.lr=1e-5"])
    assert command[1:3] == ["-m", "torch.distributed.run"] and "--standalone" not in command
    for flag in ("--nproc-per-node=8", "--nnodes=4", "--node-rank=3", "--rdzv-endpoint=head:29500",
                 "--rdzv-backend=c10d", "--rdzv-id=77", "--max-restarts=2"):
        assert flag in command
    assert command[-4:] == ["-m", "nemo_automodel_bard.recipes.launch", "cfg.yaml", "--optimizer.lr=1e-5"]
    single = torchrun_command({"nproc_per_node": 2, "torchrun": {}}, "c.yaml", [])
    assert "--standalone" in single and "--nproc-per-node=2" in single
    static = torchrun_command({"nproc_per_node": 8, "torchrun": {"master-addr": "h", "master-port": "1"}}, "c.yaml", [])
    assert "--master-addr=h" in static and not any(a.startswith("--rdzv-backend") for a in static)


def test_bad_nproc_is_a_clear_error():
    with pytest.raises(SystemExit, match="--nproc-per-node must be a positive integer"):
        parse_argv(["--nproc-per-node", "abc"])


def test_dry_run_prints_the_node_command(capsys, monkeypatch):
    from nemo_automodel_bard.recipes.launch import main

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert main(["--recipe", "bard_pbm_tiny", "--nproc-per-node", "2", "--nnodes", "2", "--node-rank", "1",
                 "--rdzv-endpoint", "h:1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would run:" in out and "--node-rank=1" in out and "--nnodes=2" in out


def test_srun_ranks_with_exported_env_run_in_process(capsys, monkeypatch, tmp_path):
    """srun with one task per GPU (RANK/WORLD_SIZE/LOCAL_RANK exported, no torchrun): no second launcher."""
    from nemo_automodel_bard.recipes import launch

    model = f"--model.pretrained_model_name_or_path={tmp_path}"  # the config check wants the folder to exist

    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "16")
    monkeypatch.setenv("LOCAL_RANK", "5")
    ran = []
    monkeypatch.setattr(launch, "run_in_process", lambda path, overrides: ran.append(overrides))
    monkeypatch.setattr(launch.subprocess, "call", lambda *a, **k: pytest.fail("relaunched under torchrun"))
    assert launch.main(["--recipe", "bard_pbm_tiny", "--nproc-per-node", "8", "--seed", "3", model]) == 0
    assert ran == [["--seed=3", model]]
    assert launch.main(["--recipe", "bard_pbm_tiny", "--dry-run"]) == 0
    assert "in-process (rank 5 of 16)" in capsys.readouterr().out

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

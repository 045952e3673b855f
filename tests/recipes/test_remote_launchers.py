"""The commented ``skypilot:`` / ``nemo_run:`` sections of the 4B YAMLs, through AutoModel's own launchers
with only their submit step stubbed: what job would be submitted (issue 16)."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import yaml

from nemo_automodel_bard.recipes import launch

ROOT = Path(__file__).resolve().parents[2]


def _uncommented(yaml_name: str, section: str, tmp_path: Path, **extra) -> tuple[Path, dict]:
    """The packaged YAML with its commented ``section:`` example switched on (as a user would)."""
    text = (ROOT / "recipes" / yaml_name).read_text()
    block = re.search(rf"^# {section}:.*?(?=^#\s*$|\Z)", text, flags=re.M | re.S).group(0)
    lines = [line[2:] for line in block.splitlines() if not line.lstrip("# ").startswith("#")]
    section_data = yaml.safe_load("\n".join(lines))[section]
    section_data.update(extra)
    config = yaml.safe_load(text)
    config[section] = section_data
    path = tmp_path / yaml_name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, config


@pytest.mark.parametrize("yaml_name, module", [("bard_pbm_qwen3vl_4b.yaml", "pbm"), ("bard_swd_qwen3vl_4b.yaml", "swd")])
def test_skypilot_job_installs_the_package_and_runs_our_recipe_with_the_users_yaml(tmp_path, monkeypatch, yaml_name, module):
    from nemo_automodel.components.launcher.skypilot import utils as sky_utils

    submitted = {}
    monkeypatch.setattr(sky_utils, "submit_skypilot_job",
                        lambda config, job_dir: submitted.update(config=config, job_dir=job_dir) or 0)
    path, user = _uncommented(yaml_name, "skypilot", tmp_path, job_dir=str(tmp_path / "jobs"))
    assert launch.main(["--config", str(path), "--step_scheduler.max_steps", "300"]) == 0

    config = submitted["config"]
    assert config.num_nodes == 2 and config.accelerators == "H100:8"
    # setup: installs the synced checkout (this repository) with pip
    setup = config.setup or sky_utils._DEFAULT_SETUP
    assert "pip install" in setup and "~/sky_workdir" in setup
    assert 'name = "nemo-automodel-bard"' in (ROOT / "pyproject.toml").read_text()
    # run: torchrun on every node over our recipe module's file, with the uploaded YAML and the overrides
    command = config.command
    script = f"~/sky_workdir/nemo_automodel_bard/recipes/{module}.py"
    for part in ("torchrun", "--nproc_per_node=8", "--nnodes=$SKYPILOT_NUM_NODES", "--node_rank=$SKYPILOT_NODE_RANK",
                 script, f"-c {sky_utils.REMOTE_CONFIG_PATH}", "--step_scheduler.max_steps=300"):
        assert part in command
    source = (ROOT / script.replace("~/sky_workdir/", "")).read_text()
    assert 'if __name__ == "__main__"' in source and "parse_args_and_load_config" in source
    # the uploaded YAML is the user's, without the launcher section, backend left to the cluster
    job = yaml.safe_load((Path(submitted["job_dir"]) / "job_config.yaml").read_text())
    expected = {k: v for k, v in user.items() if k != "skypilot"}
    assert job == expected and job["dist_env"]["backend"] == "auto"
    assert job["recipe"]["_target_"] == launch.RECIPES[f"bard_{module}"][0]


class _FakeExecutor:
    def __init__(self):
        self.nodes, self.ntasks_per_node, self.launcher, self.packager = 1, 1, None, None
        self.env_vars: dict = {}

    def nproc_per_node(self):
        return self.ntasks_per_node


def test_nemo_run_job_runs_our_recipe_module_under_torchrun_with_the_users_yaml(tmp_path, monkeypatch):
    from nemo_automodel.components.launcher.nemo_run import launcher as nr_launcher

    fake = types.ModuleType("nemo_run")
    fake.Script = lambda **kwargs: kwargs
    fake.PatternPackager = lambda **kwargs: ("packager", kwargs)
    fake.LocalExecutor = _FakeExecutor
    monkeypatch.setitem(sys.modules, "nemo_run", fake)
    monkeypatch.setattr(nr_launcher, "load_executor_from_file", lambda name, path: _FakeExecutor())
    submitted = {}
    monkeypatch.setattr(nr_launcher, "submit_nemo_run_job", lambda **kwargs: submitted.update(kwargs) or 0)

    path, user = _uncommented("bard_pbm_qwen3vl_4b.yaml", "nemo_run", tmp_path, job_dir=str(tmp_path / "jobs"))
    assert launch.main(["--config", str(path), "--optimizer.lr", "1e-5"]) == 0

    executor, script = submitted["executor"], submitted["script"]
    assert executor.nodes == 2 and executor.ntasks_per_node == 8 and executor.launcher == "torchrun"
    assert script == {"path": "nemo_automodel_bard.recipes.pbm", "m": True, "entrypoint": "python",
                      "args": ["-c", "/nemo_run/code/automodel_config.yaml", "--optimizer.lr=1e-5"]}
    packaged = Path(executor.packager[1]["include_pattern"])
    job = yaml.safe_load(packaged.read_text())
    assert job == {k: v for k, v in user.items() if k != "nemo_run"}

"""The explicit package list in pyproject.toml must cover every package in the tree."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "nemo_automodel_bard").rglob("__init__.py")
    }
    assert on_disk - listed == set(), "add these packages to [tool.setuptools] packages"
    assert config["package-dir"]["nemo_automodel_bard.recipe_configs"] == "recipes"


def test_recipe_yamls_are_importable_package_data():
    import importlib.resources

    names = {p.name for p in importlib.resources.files("nemo_automodel_bard.recipe_configs").iterdir()}
    on_disk = {p.name for p in (ROOT / "recipes").glob("*.yaml")}
    assert on_disk and on_disk <= names

"""Packaged recipe YAMLs (installed as ``nemo_automodel_bard.recipe_configs``)."""

"""Recipes: one TOML file per source package, validated strictly.

A recipe pins its source to a full git commit. A human ``ref`` (tag or branch) may be given, but it is only
checked against the commit when the source is fetched, never followed: the commit is the identity.

Every problem found while loading names the file, the field and the fix; all problems in a directory are
reported together. :mod:`~farm.recipes.schema` holds the schema and its checks, :mod:`~farm.recipes.model` the
recipe, :mod:`~farm.recipes.load` the loading of a file or a directory, :mod:`~farm.recipes.patches` the patches a
recipe applies on top of its commit, :mod:`~farm.recipes.inputs` the files its build reads.
"""

from __future__ import annotations

from farm.recipes.inputs import Input
from farm.recipes.load import RecipeSet, check_patches, load_dir, load_file
from farm.recipes.model import Recipe, Source, parse
from farm.recipes.patches import Patch
from farm.recipes.schema import KINDS, PIN_KEYS, RESERVED_ENV, SCHEMA, check_output_path

__all__ = [
    "KINDS",
    "PIN_KEYS",
    "RESERVED_ENV",
    "SCHEMA",
    "Input",
    "Patch",
    "Recipe",
    "RecipeSet",
    "Source",
    "check_output_path",
    "check_patches",
    "load_dir",
    "load_file",
    "parse",
]

"""The smallest valid Debian recipe, for tests that publish builds of it by hand (a store record, a signed .deb).

``image build`` takes a recipe's farm packages from the build of the recipe as written: the record's and the signed
provenance's recipe digest must be the recipe's (farm.image.inputs.farm_debs). A test that writes the record itself
names the digest this returns."""

from __future__ import annotations

from pathlib import Path

from farm.recipes.load import load_file

TEMPLATE = """name = "{name}"
version = "{version}"
outputs = ["*.deb"]

[source]
dsc = "{name}={version}"
commit = "{commit}"

[build]
kind = "debian"
environment = "bookworm-amd64"
"""


def write_debian_recipe(recipes: Path, name: str, commit: str, version: str = "1.0-1") -> str:
    """Write ``recipes/NAME.toml`` pinned at ``commit``; its recipe digest."""
    recipes.mkdir(parents=True, exist_ok=True)
    path = recipes / f"{name}.toml"
    path.write_text(TEMPLATE.format(name=name, version=version, commit=commit))
    return load_file(path).digest

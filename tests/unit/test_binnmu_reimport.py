"""A new binNMU of an unchanged source is noticed: ``recipes update`` re-imports a recipe whose source version is the
archive's but whose binNMU is older (``bash 5.2.15-2`` while the archive installs ``5.2.15-2+b13``), and
``recipes import --image`` imports again a recipe of the image's source version but another binNMU instead of
keeping it. Stop 23 found both ignoring it: the recipes kept building binaries older than the archive's."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from farm.archive.image_import import is_the_build
from farm.archive.import_ import existing_binnmu
from farm.archive.update import Reimport, Status, Target, find_moves, read_recipes, update_recipes

pytestmark = pytest.mark.unit


def recipe(directory: Path, name: str, version: str, binnmu: int = 0) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.toml"
    nmu = f'binnmu = {binnmu}\nbinnmu-message = "Rebuild as the archive\'s binNMU."\n' if binnmu else ""
    path.write_text(
        f'name = "{name}"\nversion = "{version}"\nbuild-depends = []\n\n[source]\ndsc = "{name}={version}"\n'
        f'commit = "{"0" * 40}"\n\n[build]\nkind = "debian"\nenvironment = "bookworm-amd64"\n{nmu}archive = []\n'
    )
    return path


def test_a_recipe_behind_the_archives_binnmu_is_a_move(tmp_path: Path) -> None:
    recipe(tmp_path, "bash", "5.2.15-2")
    recipe(tmp_path, "bzip2", "1.0.8-5", binnmu=1)
    recipe(tmp_path, "e2fsprogs", "1.47.0-2", binnmu=1)
    recipe(tmp_path, "dash", "0.5.12-2")
    recipes = read_recipes(tmp_path)
    assert {n: r.binnmu for n, r in recipes.items()} == {"bash": 0, "bzip2": 1, "dash": 0, "e2fsprogs": 1}
    targets = {
        "bash": Target("5.2.15-2", "Debian bookworm", binnmu=13),  # a binNMU the recipe does not build
        "bzip2": Target("1.0.8-5", "Debian bookworm", binnmu=1),  # the recipe builds it already
        "e2fsprogs": Target("1.47.0-2", "Debian bookworm", binnmu=2),  # a later binNMU than the recipe's
        "dash": Target("0.5.12-2", "Debian bookworm"),
    }
    moves = find_moves(recipes, targets)
    assert [(m.name, m.reason) for m in moves] == [
        ("bash", "binNMU bash 5.2.15-2 → 5.2.15-2+b13"),
        ("e2fsprogs", "binNMU e2fsprogs 1.47.0-2+b1 → 1.47.0-2+b2"),
    ]
    # a newer source version is an update whatever the binNMUs
    assert [m.reason for m in find_moves(recipes, {"bzip2": Target("1.0.8-6", "Debian bookworm")})] == [
        "update bzip2 1.0.8-5+b1 → 1.0.8-6"
    ]


def test_update_reimports_a_new_binnmu_and_reports_it(tmp_path: Path) -> None:
    recipe(tmp_path, "bash", "5.2.15-2")
    recipe(tmp_path, "dash", "0.5.12-2")
    asked: list[list[str]] = []

    def importer(names: Sequence[str]) -> list[Reimport]:
        asked.append(list(names))
        for name in names:  # what recipes import writes: the archive's binNMU in the recipe
            recipe(tmp_path, name, "5.2.15-2", binnmu=13)
        return [Reimport(n, "5.2.15-2", changelog=None) for n in names]

    targets = {"bash": Target("5.2.15-2", "Debian bookworm", binnmu=13), "dash": Target("0.5.12-2", "Debian bookworm")}
    outcomes = {o.name: o for o in update_recipes(tmp_path, importer, targets=targets)}
    assert asked == [["bash"]]
    bash, dash = outcomes["bash"].to_json(), outcomes["dash"].to_json()
    assert (bash["status"], bash["kind"], bash["reason"]) == (
        Status.UPDATED.value,
        "update",
        "binNMU bash 5.2.15-2 → 5.2.15-2+b13",
    )
    assert (bash["from"], bash["to"], bash["from_binnmu"], bash["to_binnmu"]) == ("5.2.15-2", "5.2.15-2", 0, 13)
    assert (dash["status"], dash["reason"], dash["from_binnmu"], dash["to_binnmu"]) == ("up to date", None, 0, 0)
    # the second run finds the recipe at the archive's binNMU: nothing to do
    assert read_recipes(tmp_path)["bash"].binnmu == 13
    again = {o.name: o.status for o in update_recipes(tmp_path, importer, targets=targets)}
    assert again == {"bash": Status.UP_TO_DATE, "dash": Status.UP_TO_DATE} and asked == [["bash"]]


def test_an_image_import_keeps_only_the_recipe_of_the_images_binnmu(tmp_path: Path) -> None:
    plain = recipe(tmp_path / "a", "bash", "5.2.15-2")
    nmu = recipe(tmp_path / "b", "bash", "5.2.15-2", binnmu=13)
    assert (existing_binnmu(plain), existing_binnmu(nmu), existing_binnmu(tmp_path / "none.toml")) == (0, 13, 0)
    assert is_the_build(plain, "5.2.15-2", "5.2.15-2", 0)
    assert not is_the_build(plain, "5.2.15-2", "5.2.15-2", 13)  # the image installs 5.2.15-2+b13: import again
    assert is_the_build(nmu, "5.2.15-2", "5.2.15-2", 13)
    assert not is_the_build(nmu, "5.2.15-2", "5.2.15-2", 14)
    assert not is_the_build(nmu, "5.2.15-1", "5.2.15-2", 13)  # another source version
    assert not is_the_build(tmp_path / "none.toml", None, "5.2.15-2", 0)  # no recipe
    (tmp_path / "bad.toml").write_text('[build]\nbinnmu = "13"\n')  # not a number: as if none (check says why)
    assert existing_binnmu(tmp_path / "bad.toml") == 0

"""binNMUs: the recipe field (strict, in the key only when given), the changelog entry a Debian build adds, and
``recipes import`` finding the archive's binNMU of a source (``libbz2-1.0 1.0.8-5+b1``, ``Source: bzip2 (1.0.8-5)``)."""

from __future__ import annotations

import os
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from farm.archive import Pin, recipe_toml
from farm.archive.image_import import image_binnmus
from farm.archive.recipe_text import binnmu_message
from farm.archive.versions import ArchiveVersions, binnmu_number, choose_source, parse_packages
from farm.build import binnmu
from farm.errors import E, ErrorGroup, FarmError, RecipeError
from farm.identity import build_key
from farm.recipes import Recipe, parse
from farm.recipes.binnmu import DEFAULT_MESSAGE
from tests.unit.test_buildd import KEY, RECIPE

pytestmark = pytest.mark.unit

EPOCH = 1686390678  # Sat, 10 Jun 2023 09:51:18 +0000


def key(recipe: Recipe) -> str:
    return build_key(recipe.content(), "c" * 40, "7" * 40, "e" * 64, {})


# -- the changelog entry -----------------------------------------------------------------------------------------
def test_the_entry_is_sbuilds_binary_only_entry_dated_by_the_epoch() -> None:
    entry = binnmu.changelog_entry(
        source="bzip2",
        version="1.0.8-5",
        distribution="unstable",
        number=1,
        message="Rebuild for outdated Built-Using",
        arch="amd64",
        epoch=EPOCH,
    )
    assert entry == (
        "bzip2 (1.0.8-5+b1) unstable; urgency=low, binary-only=yes\n"
        "\n"
        "  * Binary-only non-maintainer upload for amd64; no source changes.\n"
        "  * Rebuild for outdated Built-Using\n"
        "\n"
        " -- MANGOS build farm <buildd@mangos.invalid>  Sat, 10 Jun 2023 09:51:18 +0000\n"
        "\n"
    )
    assert binnmu.binnmu_version("1:2.0-1", 3) == "1:2.0-1+b3"


CHANGELOG = (
    "dash (0.5.12-2) unstable; urgency=medium\n\n  * Upload.\n\n -- A B <a@b.c>  Mon, 02 Jan 2023 10:00:00 +0100\n"
)


def test_apply_prepends_the_entry_and_pins_the_files_time(tmp_path: Path) -> None:
    (tmp_path / "debian").mkdir()
    changelog = tmp_path / "debian" / "changelog"
    changelog.write_text(CHANGELOG)
    assert binnmu.apply(tmp_path, 2, "Rebuild for libfoo2", arch="arm64", epoch=EPOCH) == "0.5.12-2+b2"
    text = changelog.read_text()
    assert text.startswith("dash (0.5.12-2+b2) unstable; urgency=low, binary-only=yes\n\n  * Binary-only ")
    assert "upload for arm64; no source changes.\n  * Rebuild for libfoo2\n" in text
    assert text.endswith("\n\n" + CHANGELOG) and os.stat(changelog).st_mtime == EPOCH
    # A second binNMU entry on top of one is refused: the source tree is not the source any more.
    with pytest.raises(FarmError, match="already a binNMU"):
        binnmu.apply(tmp_path, 1, "again", arch="amd64", epoch=EPOCH)


def test_apply_refuses_a_tree_without_a_changelog_it_can_read(tmp_path: Path) -> None:
    with pytest.raises(FarmError, match="not a regular file") as raised:
        binnmu.apply(tmp_path, 1, "x", arch="amd64", epoch=EPOCH)
    assert raised.value.code == E.BUILD_FAILED
    (tmp_path / "debian").mkdir()
    (tmp_path / "debian" / "changelog").write_text("not a changelog\n")
    with pytest.raises(FarmError, match="does not start with"):
        binnmu.apply(tmp_path, 1, "x", arch="amd64", epoch=EPOCH)


# -- the recipe field: the key rule and strict values -------------------------------------------------------------
def _doc(build: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "probe",
        "version": "1.0",
        "outputs": ["*.deb"],
        "source": {"dsc": "probe=1.0", "commit": "c" * 40},
        "build": {"kind": "debian", "environment": "bookworm-amd64"} | build,
    }


def test_a_recipe_without_a_binnmu_keeps_its_golden_key() -> None:
    assert key(RECIPE) == KEY
    assert "binnmu" not in RECIPE.content()["build"] and "binnmu-message" not in RECIPE.content()["build"]
    plain = parse(_doc({}), Path("probe.toml"))
    assert plain.binnmu == 0 and "binnmu" not in plain.content()["build"]


def test_a_binnmu_changes_the_key_and_round_trips() -> None:
    one = replace(RECIPE, binnmu=1, binnmu_message=DEFAULT_MESSAGE)
    keys = {key(RECIPE), key(one), key(replace(one, binnmu=2)), key(replace(one, binnmu_message="Rebuild for x"))}
    assert len(keys) == 4
    assert one.content()["build"]["binnmu"] == 1 and one.content()["build"]["binnmu-message"] == DEFAULT_MESSAGE
    again = Recipe.from_content(one.content())
    assert (again.binnmu, again.binnmu_message) == (1, DEFAULT_MESSAGE) and key(again) == key(one)
    parsed = parse(_doc({"binnmu": 3, "binnmu-message": "Rebuild for libfoo2"}), Path("probe.toml"))
    assert (parsed.binnmu, parsed.binnmu_message) == (3, "Rebuild for libfoo2")
    assert parse(_doc({"binnmu": 1}), Path("probe.toml")).binnmu_message == DEFAULT_MESSAGE


@pytest.mark.parametrize(
    ("build", "field", "code", "words"),
    [
        ({"binnmu": 0}, "build.binnmu", E.RECIPE_VALUE, "not a binNMU number"),
        ({"binnmu": 100}, "build.binnmu", E.RECIPE_VALUE, "not a binNMU number"),
        ({"binnmu": True}, "build.binnmu", E.RECIPE_VALUE, "not a binNMU number"),
        ({"binnmu": "1"}, "build.binnmu", E.RECIPE_TYPE, "expected int"),
        ({"binnmu": 1, "binnmu-message": ""}, "build.binnmu-message", E.RECIPE_VALUE, "one non-empty line"),
        ({"binnmu": 1, "binnmu-message": "a\nb"}, "build.binnmu-message", E.RECIPE_VALUE, "one non-empty line"),
        ({"binnmu-message": "why"}, "build.binnmu-message", E.RECIPE_VALUE, "without build.binnmu"),
        (
            {"kind": "script", "steps": ["make"], "environment": "", "binnmu": 1},
            "build.binnmu",
            E.RECIPE_VALUE,
            "debian",
        ),
    ],
)
def test_bad_binnmu_values_are_refused_naming_file_and_field(
    build: dict[str, Any], field: str, code: str, words: str
) -> None:
    with pytest.raises(ErrorGroup) as raised:
        parse(_doc(build), Path("probe.toml"))
    found = [e for e in raised.value.errors if e.field == field]
    assert len(found) == 1, [e.render() for e in raised.value.errors]
    error = found[0]
    assert isinstance(error, RecipeError) and error.code == code and words in error.message
    assert error.hint and error.file == "probe.toml"
    assert "probe.toml" in error.render() and field in error.render()


# -- recipes import: the archive's binNMU ---------------------------------------------------------------------------
PACKAGES = """\
Package: libbz2-1.0
Source: bzip2 (1.0.8-5)
Version: 1.0.8-5+b1
Architecture: amd64

Package: bzip2
Source: bzip2 (1.0.8-5)
Version: 1.0.8-5+b1
Architecture: amd64

Package: bzip2-doc
Source: bzip2
Version: 1.0.8-5
Architecture: all

Package: libfoo1
Source: foo
Version: 2.0-1
Architecture: amd64
"""


def _archive() -> ArchiveVersions:
    archive = ArchiveVersions()
    for entry in parse_packages(PACKAGES, "Debian bookworm"):
        archive.by_package.setdefault(entry.package, []).append(entry)
    return archive


def test_the_binnmu_of_a_binary_version() -> None:
    assert binnmu_number("1.0.8-5+b1", "1.0.8-5") == 1
    assert binnmu_number("2:1.0-1+b12", "2:1.0-1") == 12
    assert binnmu_number("1.0.8-5", "1.0.8-5") == 0
    assert binnmu_number("1.0.8-5+b1", "1.0.8-4") == 0  # not a binNMU of that source version


def test_choose_source_records_the_archives_binnmu() -> None:
    archive = _archive()
    bins = ["bzip2", "bzip2-doc", "libbz2-1.0"]
    choice = choose_source("bzip2", None, ["1.0.8-5"], bins, archive=archive, arch="amd64")
    assert (choice.version, choice.binnmu) == ("1.0.8-5", 1)
    assert choose_source("bzip2", "1.0.8-5", ["1.0.8-5"], bins, archive=archive).binnmu == 1
    assert choose_source("bzip2", "1.0.8-4", ["1.0.8-4", "1.0.8-5"], bins, archive=archive).binnmu == 0
    assert choose_source("foo", None, ["2.0-1"], ["libfoo1"], archive=archive).binnmu == 0


def test_an_image_import_takes_the_binnmu_of_the_installed_binaries() -> None:
    pins = [Pin("libbz2-1.0", "1.0.8-5+b1", "amd64", "a" * 64), Pin("libfoo1", "2.0-1", "amd64", "b" * 64)]
    wanted = {"bzip2": ("1.0.8-5", ("libbz2-1.0",)), "foo": ("2.0-1", ("libfoo1",))}
    assert image_binnmus(pins, wanted) == {"bzip2": 1}


def _recipe_text(**extra: Any) -> str:
    return recipe_toml(
        name="bzip2",
        version="1.0.8-5",
        description="d",
        build_depends=[],
        outputs=["*.deb"],
        dsc="bzip2=1.0.8-5",
        commit="c" * 40,
        environment="bookworm-amd64",
        archive=[Pin("debhelper", "13.11.4", "all", "a" * 64)],
        **extra,
    )


def test_an_imported_recipe_carries_the_binnmu_and_only_then() -> None:
    plain = _recipe_text()
    assert "binnmu" not in plain
    text = _recipe_text(binnmu=1, binnmu_message=binnmu_message("1.0.8-5", 1))
    data = tomllib.loads(text)
    assert data["build"]["binnmu"] == 1
    assert data["build"]["binnmu-message"] == "Rebuild as the archive's binNMU 1.0.8-5+b1."
    recipe = parse(data, Path("bzip2.toml"))
    assert recipe.binnmu == 1 and key(recipe) != key(parse(tomllib.loads(plain), Path("bzip2.toml")))
    assert _recipe_text(binnmu=1, binnmu_message=binnmu_message("1.0.8-5", 1)) == text  # the same bytes every time

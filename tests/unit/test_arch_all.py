"""``build.arch-all = false``: a debian build of only its architecture's binary packages (``dpkg-buildpackage -B``,
sbuild's ``--no-arch-all``), for a source whose Architecture: all packages the image installs none of (gcc-12's
source tarball, documentation and locales; glibc's). The key rule (a recipe without the field keeps its golden
key), strict values naming file and field, the build type it asks for, and a re-import that keeps it with its
reason."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from farm.build import binnmu
from farm.errors import E, ErrorGroup, RecipeError
from farm.identity import build_key
from farm.recipes import Recipe, parse
from tests.unit.test_binnmu import _doc
from tests.unit.test_buildd import KEY, RECIPE
from tests.unit.test_reimport_trims import OLD, _reimport

pytestmark = pytest.mark.unit


def key(recipe: Recipe) -> str:
    return build_key(recipe.content(), "c" * 40, "7" * 40, "e" * 64, {})


def test_a_recipe_without_the_field_keeps_its_golden_key_and_builds_every_package() -> None:
    assert key(RECIPE) == KEY and RECIPE.arch_all and "arch-all" not in RECIPE.content()["build"]
    plain = parse(_doc({}), Path("probe.toml"))
    assert plain.arch_all and "arch-all" not in plain.content()["build"]
    assert key(parse(_doc({"arch-all": True}), Path("probe.toml"))) == key(plain)  # the default, written out
    assert binnmu.build_type(0, arch_all=True) == "-b"


def test_arch_only_changes_the_key_round_trips_and_builds_with_dash_b() -> None:
    only = replace(RECIPE, arch_all=False)
    assert key(only) != key(RECIPE) and only.content()["build"]["arch-all"] is False
    again = Recipe.from_content(only.content())
    assert again.arch_all is False and key(again) == key(only)  # what a worker receives
    assert parse(_doc({"arch-all": False}), Path("probe.toml")).arch_all is False
    assert binnmu.build_type(0, arch_all=False) == binnmu.build_type(1, arch_all=False) == "-B"


@pytest.mark.parametrize(
    ("build", "code", "words"),
    [
        ({"arch-all": "no"}, E.RECIPE_TYPE, "expected bool"),
        ({"arch-all": 0}, E.RECIPE_TYPE, "expected bool"),
        ({"kind": "script", "steps": ["make"], "environment": "", "arch-all": False}, E.RECIPE_VALUE, "debian"),
    ],
)
def test_bad_values_are_refused_naming_file_and_field(build: dict[str, Any], code: str, words: str) -> None:
    with pytest.raises(ErrorGroup) as raised:
        parse(_doc(build), Path("probe.toml"))
    found = [e for e in raised.value.errors if e.field == "build.arch-all"]
    assert len(found) == 1, [e.render() for e in raised.value.errors]
    error = found[0]
    assert isinstance(error, RecipeError) and error.code == code and words in error.message
    assert error.hint and error.file == "probe.toml" and "build.arch-all" in error.render()


def test_a_reimport_keeps_arch_all_false_with_its_reason(tmp_path: Path) -> None:
    old = OLD.replace(
        "archive = []", "# Only the arch-specific packages: the image installs none of the others.\narch-all = false\n"
        "archive = []",
    )  # fmt: skip
    text = _reimport(tmp_path, old.format(old="a" * 40))
    assert "# Only the arch-specific packages: the image installs none of the others.\narch-all = false" in text
    assert 'options = [\n  # the test suite takes hours\n  "nocheck",' in text  # the other trims, as before

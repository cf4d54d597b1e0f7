"""The buildd build root (user, home, environment, dpkg-buildpackage argv) and a debian recipe's options and
profiles: in the key and the provenance, while parallel=N, memory and timeout are in the provenance only."""

from __future__ import annotations

import copy
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from farm.build import buildd
from farm.build import debian as debian_build
from farm.build.variation import Variation
from farm.errors import E, ErrorGroup
from farm.identity import build_key
from farm.recipes import Recipe, Source, parse
from farm.recipes.model import BUILDD

pytestmark = pytest.mark.unit

PIN = (("arch", "all"), ("package", "debhelper"), ("sha256", "a" * 64), ("version", "13.11.4"))
RECIPE = Recipe(
    name="probe",
    version="1.0",
    source=Source(git="", commit="c" * 40, dsc="probe=1.0"),
    steps=(),
    outputs=("*.deb", "*.buildinfo"),
    kind="debian",
    environment="bookworm-amd64",
    archive=(PIN,),
)
# The key of RECIPE before debian recipes recorded their build root version (and so before options and profiles).
KEY_BEFORE_BUILDD = "2c883fb6ff7f1939f38f99b279de2ca80f1ed29dc7086c8889a3caded6b08598"
# Its key now: the same content plus build.buildd = 1.
KEY = "54e4c7120ed814bdcffc7d0a44d5b6adec556a08238ee5c79fe378eaeea8b522"


def key(recipe: Recipe | dict[str, Any]) -> str:
    content = recipe.content() if isinstance(recipe, Recipe) else recipe
    return build_key(content, "c" * 40, "7" * 40, "e" * 64, {})


def test_a_debian_recipe_without_options_or_profiles_keeps_its_golden_key() -> None:
    assert BUILDD == 1
    assert key(RECIPE) == KEY
    content = RECIPE.content()
    assert "options" not in content["build"] and "profiles" not in content["build"]
    before = copy.deepcopy(content)
    del before["build"]["buildd"]  # the build root's version is the only difference from the key it had before
    assert key(before) == KEY_BEFORE_BUILDD


def test_options_and_profiles_change_the_key_and_round_trip() -> None:
    keys = {
        key(RECIPE),
        key(replace(RECIPE, options=("nocheck",))),
        key(replace(RECIPE, options=("nocheck", "nodoc"))),
        key(replace(RECIPE, profiles=("nocheck",))),
        key(replace(RECIPE, options=("nocheck",), profiles=("nocheck",))),
    }
    assert len(keys) == 5
    both = replace(RECIPE, options=("nocheck", "noopt"), profiles=("nocheck", "nodoc"))
    assert both.content()["build"]["options"] == ["nocheck", "noopt"]
    again = Recipe.from_content(both.content())
    assert (again.options, again.profiles) == (both.options, both.profiles) and key(again) == key(both)


def test_the_machine_changes_no_key_only_the_provenance() -> None:
    small = buildd.provenance_parameters(options=("nocheck",), profiles=(), jobs=2, memory=4 << 30, timeout=9000.0)
    big = buildd.provenance_parameters(options=("nocheck",), profiles=(), jobs=64, memory=256 << 30, timeout=3600)
    assert small["debBuildOptions"] == "nocheck parallel=2" and big["debBuildOptions"] == "nocheck parallel=64"
    assert small["resources"] == {"parallel": 2, "memoryBytes": 4 << 30, "timeoutSeconds": 9000}
    assert small["buildd"] == BUILDD and small["buildProfiles"] == []
    # The key is a function of the recipe's content, which holds no parallelism, memory or timeout.
    recipe = replace(RECIPE, options=("nocheck",))
    assert "parallel" not in str(recipe.content()) and key(Recipe.from_content(recipe.content())) == key(recipe)
    assert debian_build.inner_script(5, 2, options=("nocheck",)) != debian_build.inner_script(
        5, 64, options=("nocheck",)
    )


def _doc(build: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "probe",
        "version": "1.0",
        "outputs": ["*.deb"],
        "source": {"dsc": "probe=1.0", "commit": "c" * 40},
        "build": {"kind": "debian", "environment": "bookworm-amd64"} | build,
    }


@pytest.mark.parametrize(
    ("build", "field", "words"),
    [
        ({"options": ["parallel=4"]}, "build.options", "set by the worker"),
        ({"options": ["nocheck", "nocheck"]}, "build.options", "twice"),
        ({"options": ["no check"]}, "build.options", "malformed"),
        ({"profiles": ["Bad!"]}, "build.profiles", "malformed"),
        ({"options": "nocheck"}, "build.options", "expected list"),
        ({"buildd": 0}, "build.buildd", "this farm makes version"),
        ({"kind": "script", "steps": ["make"], "environment": "", "options": ["nocheck"]}, "build.options", "debian"),
    ],
)
def test_bad_options_and_profiles_are_refused(build: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(ErrorGroup) as raised:
        parse(_doc(build), Path("probe.toml"))
    found = [e for e in raised.value.errors if e.field == field]
    assert found and words in found[0].message, [e.render() for e in raised.value.errors]
    assert found[0].code in (E.RECIPE_VALUE, E.RECIPE_TYPE)


def test_a_recipe_file_may_name_the_current_build_root_version() -> None:
    recipe = parse(_doc({"buildd": BUILDD, "options": ["nocheck"], "profiles": ["nocheck"]}), Path("p.toml"))
    assert recipe.content()["build"]["buildd"] == BUILDD and recipe.options == ("nocheck",)


def test_the_build_user_is_a_buildds() -> None:
    user = buildd.build_user(1000)
    assert user.passwd_line() == "sbuild:x:1000:1000:Debian source builder,,,:/build/home:/bin/bash"
    assert user.group_line() == "sbuild:x:1000:"
    assert buildd.build_user(1234, "rechecker").passwd_line().startswith("rechecker:x:1234:1234:")
    env = buildd.build_env(user, epoch=5, jobs=3, options=("nocheck", "nodoc"))
    assert {k: env[k] for k in ("USER", "LOGNAME", "HOME", "SHELL", "LC_ALL")} == {
        "USER": "sbuild",
        "LOGNAME": "sbuild",
        "HOME": "/build/home",
        "SHELL": "/bin/sh",
        "LC_ALL": "C.UTF-8",
    }
    assert env["DEB_BUILD_OPTIONS"] == "nocheck nodoc parallel=3" and env["SOURCE_DATE_EPOCH"] == "5"
    assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def test_profiles_reach_build_dep_and_dpkg_buildpackage() -> None:
    assert buildd.dpkg_buildpackage_argv() == ["dpkg-buildpackage", "-b", "-us", "-uc"]
    assert buildd.dpkg_buildpackage_argv(("nocheck", "nodoc"))[-1] == "--build-profiles=nocheck,nodoc"
    assert "--build-profiles=nodoc" in buildd.build_dep_argv(("nodoc",))
    script = debian_build.inner_script(5, 1, profiles=("nodoc",))
    assert shlex.join(buildd.build_dep_argv(("nodoc",))) in script
    assert "--build-profiles=nodoc" in script.split("setpriv", 1)[1]


def test_the_account_is_made_before_the_build_runs_and_only_where_missing() -> None:
    script = debian_build.inner_script(5, 1)
    lines = buildd.account_script(buildd.build_user(1000))
    assert all(line in script for line in lines)
    assert script.index(lines[0]) < script.index("setpriv")
    assert lines[0].startswith("grep -q '^sbuild:' /etc/group ||")
    assert "USER=sbuild" in script and "LOGNAME=sbuild" in script
    varied = debian_build.inner_script(5, 1, Variation())
    assert "rechecker:x:1234:1234:" in varied and "sbuild:x:" not in varied and varied.count(">> /etc/passwd") == 1

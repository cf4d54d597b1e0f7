"""Coverage of an image by farm builds: each archive package gets the first reason that holds (a fallback from an
older farm build, Debian's kernel, a source listed unavailable, a recipe not built, a build that yields no such
binary, no recipe), the counts are by binary package, and ``--require-farm`` / ``--min-farm`` refuse with one error
naming every archive package. The sources come from a Packages index in a temporary lists directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from farm.errors import E, FarmError
from farm.image import coverage
from farm.image.packages import ARCHIVE, FARM, Package

pytestmark = pytest.mark.unit

INDEX = """\
Package: libfoo1
Version: 1.0-1
Architecture: amd64
Source: foo

Package: libbar1
Version: 2.0-1+b1
Architecture: amd64
Source: bar (2.0-1)

Package: libother9
Version: 9-1
Architecture: amd64
Source: other
"""


def _pkg(name: str, origin: str = ARCHIVE, recipe: str = "", commit: str = "", reason: str = "") -> Package:
    return Package(name, "1", "amd64", "0" * 64, origin, Path(f"{name}.deb"), recipe, commit, reason=reason)


@pytest.fixture
def recipes_dir(tmp_path: Path) -> Path:
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "deb.example_debian_dists_bookworm_main_binary-amd64_Packages").write_text(INDEX)
    d = tmp_path / "recipes"
    d.mkdir()
    rows = [{"name": "zlib", "version": "1:1.2.13", "binaries": ["zlib1g"], "reason": "no suite serves its files"}]
    (d / "unavailable.json").write_text(json.dumps({"unavailable": rows}))
    return d


def _coverage(recipes_dir: Path) -> coverage.Coverage:
    packages = [
        _pkg("hello", FARM, recipe="hello", commit="c" * 40),
        _pkg("libfoo1"),  # recipe foo, no build at its commit
        _pkg("libbar1"),  # recipe bar built, without this binary
        _pkg("libother9"),  # source other: no recipe
        _pkg("zlib1g"),  # listed unavailable
        _pkg("linux-image-amd64"),
        _pkg("libold1", reason="farm build 1-1 older than archive 1-1+deb12u1"),
        _pkg("unindexed"),  # no Packages entry: its own source
    ]
    recipes = {"hello": "c" * 40, "foo": "f" * 40, "bar": "b" * 40}
    return coverage.of(
        packages,
        recipes=recipes,
        built={"hello", "bar"},
        recipes_dir=recipes_dir,
        lists_dir=recipes_dir.parent / "lists",
    )


def test_every_archive_package_gets_the_first_reason_that_holds(recipes_dir: Path) -> None:
    cov = _coverage(recipes_dir)
    kinds = {e.package: (e.kind, e.source) for e in cov.archive()}
    assert kinds == {
        "libfoo1": ("not-built", "foo"),
        "libbar1": ("not-produced", "bar"),
        "libother9": ("no-recipe", "other"),
        "zlib1g": ("unavailable", "zlib"),
        "linux-image-amd64": ("kernel", "linux-image-amd64"),
        "libold1": ("older", "libold1"),
        "unindexed": ("no-recipe", "unindexed"),
    }
    why = {e.package: e.reason for e in cov.archive()}
    assert "no farm build at ffffffffffff" in why["libfoo1"] and "no suite serves" in why["zlib1g"]
    assert why["libold1"] == "farm build 1-1 older than archive 1-1+deb12u1"
    assert (cov.farm_packages, cov.archive_packages, cov.total, cov.percent) == (1, 7, 8, 12.5)
    data = cov.to_json()
    assert {k: data[k] for k in ("farm_packages", "archive_packages", "total", "percent")} == {
        "farm_packages": 1,
        "archive_packages": 7,
        "total": 8,
        "percent": 12.5,
    }
    by_name = {p["package"]: p for p in data["packages"]}
    assert by_name["hello"] == {
        "package": "hello", "version": "1", "arch": "amd64", "origin": "farm", "source": "hello",
        "recipe": "hello", "commit": "c" * 40,
    }  # fmt: skip
    assert by_name["libfoo1"]["kind"] == "not-built" and by_name["libfoo1"]["recipe"] == "foo"
    assert cov.line().startswith("coverage: 1 of 8 binary packages farm-built (12.5%), 7 from the archive (")


def test_require_farm_and_min_farm_refuse_naming_every_archive_package(recipes_dir: Path) -> None:
    cov = _coverage(recipes_dir)
    with pytest.raises(FarmError) as refused:
        coverage.check(cov, require_all=True)
    assert refused.value.code == E.IMAGE_COVERAGE and refused.value.hint
    for e in cov.archive():
        assert f"  {e.package} 1 [{e.kind}]: {e.reason}" in refused.value.message
    assert "hello" not in refused.value.message
    coverage.check(cov, min_percent=12.5)  # at the threshold: admitted
    with pytest.raises(FarmError, match=r"--min-farm 13 wants at least 13%") as below:
        coverage.check(cov, min_percent=13)
    assert below.value.message.count("\n  ") == 7
    coverage.check(coverage.Coverage(cov.entries[:1]), require_all=True)  # all farm-built: admitted
    coverage.check(cov)  # no flag: never refused


def test_manifest_packages_keep_origin_and_reason(tmp_path: Path) -> None:
    manifest = tmp_path / "m.json"
    rows = [
        {"name": "a", "version": "1", "arch": "amd64", "sha256": "0" * 64, "origin": "farm", "file": "a.deb",
         "recipe": "a", "commit": "c" * 40, "build_key": "k"},
        {"name": "b", "version": "2", "arch": "all", "sha256": "1" * 64, "origin": "archive", "file": "b.deb",
         "reason": "farm build 1 older than archive 2"},
    ]  # fmt: skip
    manifest.write_text(json.dumps({"packages": rows}))
    got = coverage.manifest_packages(manifest)
    assert [(p.name, p.origin, p.recipe, p.commit, p.reason) for p in got] == [
        ("a", FARM, "a", "c" * 40, ""),
        ("b", ARCHIVE, "", "", "farm build 1 older than archive 2"),
    ]


def test_the_profile_sysext_takes_the_farm_builds_it_has_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``gather`` with a profile: a farm build of a package only the profile installs goes into the sysext."""
    from farm.archive import Pin
    from farm.image import inputs

    farm = {n: _pkg(n, FARM, recipe=n, commit="c" * 40) for n in ("hello", "runc")}
    base = [Pin(n, "1", "amd64", "0" * 64) for n in ("hello", "libc6")]
    profile = [Pin(n, "1", "amd64", "0" * 64) for n in ("docker.io", "runc")]
    monkeypatch.setattr(inputs, "farm_debs", lambda *a: dict(farm))
    monkeypatch.setattr(inputs, "essential_packages", lambda *a: [])

    def resolve(names: list[str], work: Path, cache: Path | None = None) -> list[Pin]:
        return base + (profile if "docker.io" in names else [])

    monkeypatch.setattr(inputs, "resolve_install", resolve)
    monkeypatch.setattr(inputs, "_archive", lambda pins, *a: [_pkg(p.package) for p in pins])
    (tmp_path / "recipes").mkdir()
    (tmp_path / "lists").mkdir()
    got = inputs.gather(
        store=None,  # type: ignore[arg-type]  # (nothing is fetched: _archive stands in)
        recipes_dir=tmp_path / "recipes", trusted=[], work=tmp_path / "work", payload=(), profile="docker",
        lists_dir=tmp_path / "lists",
    )  # fmt: skip
    assert [(p.name, p.origin) for p in got.packages] == [("hello", FARM), ("libc6", ARCHIVE)]
    assert [(p.name, p.origin) for p in got.profile_packages] == [("docker.io", ARCHIVE), ("runc", FARM)]


def test_a_locked_profile_farm_package_must_be_the_verified_build() -> None:
    from farm.image.inputs import _locked_farm
    from farm.image.lock import ImageLock, LockedPackage

    lock = ImageLock(source_date_epoch=1, requested=(), packages=())
    locked = LockedPackage("runc", "amd64", "1", "0" * 64, FARM, "runc", "c" * 40)
    built = _pkg("runc", FARM, recipe="runc", commit="c" * 40)
    assert _locked_farm(lock, locked, {"runc": built}) is built
    for farm in ({}, {"runc": _pkg("runc", FARM, recipe="runc", commit="d" * 40)}):
        with pytest.raises(FarmError, match="profile package runc is locked to runc at cccccccccccc") as stale:
            _locked_farm(lock, locked, farm)
        assert stale.value.code == E.IMAGE_LOCK

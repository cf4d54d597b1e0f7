"""Pure parts of farm.archive: apt's simulate output, pins, exclusion, the Packages/Sources parsers, TOML."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from farm.archive import Pin, SourcesIndex, deb_name, exclude_pins, parse_simulation, recipe_dependencies, recipe_toml
from farm.archive.import_ import existing_patches, split_spec
from farm.archive.index import packages_entries, parse_sources
from farm.archive.resolve import build_dep_argv, install_argv
from farm.errors import E, FarmError
from farm.run import Result
from farm.sources import apt

SHA_A = "a" * 64
SHA_B = "b" * 64

SIMULATE = """\
NOTE: This is only a simulation!
Reading package lists...
The following NEW packages will be installed:
  debhelper libfoo-dev libfoo1 zlib1g-dev
Inst libfoo1 (1.0-1 Debian:12.15/oldstable [amd64])
Inst libicu72 (72.1-3+deb12u1 Debian:12.15/oldstable, Debian-Security:12/oldstable-security [amd64])
Inst libc6 [2.36-9+deb12u10] (2.36-9+deb12u14 Debian:12.15/oldstable [amd64]) []
Inst zlib1g-dev (1:1.2.13.dfsg-1 Debian:12.15/oldstable [amd64])
Inst debhelper (13.11.4 Debian:12.15/oldstable [all])
Conf libfoo1 (1.0-1 Debian:12.15/oldstable [amd64])
Conf debhelper (13.11.4 Debian:12.15/oldstable [all])
"""


def test_parse_simulation_reads_inst_lines_only() -> None:
    pins = parse_simulation(SIMULATE)
    assert pins == [
        Pin("debhelper", "13.11.4", "all"),
        Pin("libc6", "2.36-9+deb12u14", "amd64"),  # an upgrade: the new version, not the installed one
        Pin("libfoo1", "1.0-1", "amd64"),
        Pin("libicu72", "72.1-3+deb12u1", "amd64"),
        Pin("zlib1g-dev", "1:1.2.13.dfsg-1", "amd64"),
    ]
    assert all(p.sha256 == "" for p in pins)


def test_exclusion_drops_farm_built_packages_but_keeps_their_dependencies() -> None:
    # zlib1g-dev is built by another recipe: it goes; libfoo1, which only it needed, was resolved with it and stays.
    pins = exclude_pins(parse_simulation(SIMULATE), {"zlib1g-dev", "zlib1g", "not-installed-anyway"})
    assert [p.package for p in pins] == ["debhelper", "libc6", "libfoo1", "libicu72"]
    assert exclude_pins(parse_simulation(SIMULATE), set()) == parse_simulation(SIMULATE)


def test_simulate_argv_uses_the_env_status_and_no_lock() -> None:
    argv = build_dep_argv(Path("/t/status"), Path("/t/src"))
    assert argv[:2] == ["apt-get", "-s"]
    assert "Dir::State::status=/t/status" in argv and "Debug::NoLocking=1" in argv
    assert argv[-2:] == ["build-dep", "/t/src"]
    assert not [a for a in argv if a.startswith("Dir::Cache")]  # apt's own cache settings


def test_an_install_simulation_keeps_apts_list_cache_where_asked_and_no_other() -> None:
    argv = install_argv(Path("/t/status"), ["hello", "/d/x.deb"], cache=Path("/c/apt"))
    assert "Dir::Cache::srcpkgcache=/c/apt/srcpkgcache.bin" in argv
    assert "Dir::Cache::pkgcache=" in argv  # (it would hold the empty status and the .debs of this one call)
    assert argv[-3:] == ["install", "hello", "/d/x.deb"]


def test_an_apt_list_is_read_once_while_it_stays_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, ...]] = []

    def cat(argv: list[str]) -> Result:
        calls.append(tuple(argv))
        return Result(tuple(argv), 0, Path(argv[-1]).read_bytes(), b"")

    monkeypatch.setattr(apt, "run", cat)
    index = tmp_path / "x_Packages"
    index.write_text("Package: a\n")
    assert apt.read_list(index) == apt.read_list(index) == "Package: a\n" and len(calls) == 1
    index.write_text("Package: ab\n")
    assert apt.read_list(index) == "Package: ab\n" and len(calls) == 2


def test_pin_round_trip() -> None:
    pin = Pin("debhelper", "13.11.4", "all", SHA_A)
    assert pin.to_toml() == {"package": "debhelper", "version": "13.11.4", "arch": "all", "sha256": SHA_A}
    assert Pin.from_dict(pin.to_toml()) == pin
    assert pin.spec == "debhelper=13.11.4"
    with pytest.raises(FarmError) as exc:
        Pin.from_dict({"package": "x", "version": "1"})
    assert "arch" in exc.value.message
    with pytest.raises(FarmError) as exc:
        Pin.from_dict({"package": "x", "version": "1", "arch": "all", "sha256": "XYZ"})
    assert exc.value.code == E.RECIPE_VALUE


def test_deb_name_escapes_the_epoch() -> None:
    assert deb_name(Pin("automake", "1:1.16.5-1.3", "all")) == "automake_1%3a1.16.5-1.3_all.deb"


PACKAGES = f"""\
Package: debhelper
Version: 13.11.4
Architecture: all
Filename: pool/main/d/debhelper/debhelper_13.11.4_all.deb
SHA256: {SHA_A}

Package: debhelper
Version: 13.11.3
Architecture: all
SHA256: {SHA_B}

Package: other
Version: 13.11.4
Architecture: amd64
SHA256: {SHA_B}
"""


def test_packages_entries_match_name_and_version() -> None:
    found = packages_entries(PACKAGES, {("debhelper", "13.11.4")})
    assert found == {("debhelper", "13.11.4", "all"): SHA_A}
    assert packages_entries(PACKAGES, {("missing", "1")}) == {}


SOURCES = """\
Package: zlib
Binary: zlib1g, zlib1g-dev,
 lib32z1
Version: 1:1.2.13.dfsg-1
Build-Depends: debhelper-compat (= 13), gcc-multilib [amd64 i386] <!nobiarch>, dpkg-dev (>= 1.16.1~)

Package: libpng1.6
Binary: libpng16-16, libpng-dev
Version: 1.6.39-2
Build-Depends: debhelper-compat (= 13), zlib1g-dev | libz-dev
Build-Depends-Indep: libfoo:native

Package: libpng1.6
Binary: libpng16-16, libpng-dev
Version: 1.6.40-1
Build-Depends: debhelper-compat (= 13)
"""


def _index() -> SourcesIndex:
    index = SourcesIndex()
    for entry in parse_sources(SOURCES):
        index.by_name.setdefault(entry.name, []).append(entry)
    return index


def test_sources_binaries_and_build_depends() -> None:
    zlib, png, _ = parse_sources(SOURCES)
    assert zlib.binaries == ("zlib1g", "zlib1g-dev", "lib32z1")
    assert zlib.build_depends == ("debhelper-compat", "dpkg-dev", "gcc-multilib")
    assert png.build_depends == ("debhelper-compat", "libfoo", "libz-dev", "zlib1g-dev")
    assert [e.name for e in parse_sources(SOURCES, {"zlib"})] == ["zlib"]


def test_pick_candidate_or_explicit_version() -> None:
    index = _index()
    assert index.pick("libpng1.6", None).version == "1.6.40-1"
    assert index.pick("libpng1.6", "1.6.39-2").version == "1.6.39-2"
    with pytest.raises(FarmError) as exc:
        index.pick("libpng1.6", "9.9-9")
    assert exc.value.code == E.DSC_UNKNOWN and "1.6.39-2, 1.6.40-1" in exc.value.message
    assert "apt-cache showsrc" in exc.value.hint
    with pytest.raises(FarmError):
        index.pick("zlib1g", None)


def test_split_spec() -> None:
    assert split_spec("hello") == ("hello", None)
    assert split_spec("hello=2.10-3") == ("hello", "2.10-3")
    with pytest.raises(FarmError):
        split_spec("--option")


def test_recipe_toml_is_the_schema() -> None:
    pins = [Pin("debhelper", "13.11.4", "all", SHA_A), Pin("automake", "1:1.16.5-1.3", "all", SHA_B)]
    text = recipe_toml(
        name="libpng1.6",
        version="1.6.39-2",
        description='PNG "library"',
        build_depends=["zlib"],
        outputs=["*.deb", "*.buildinfo"],
        dsc="libpng1.6=1.6.39-2",
        commit="c" * 40,
        environment="bookworm-amd64",
        archive=pins,
    )
    assert text.startswith("# Generated by `mangos-farm recipes import`")
    data = tomllib.loads(text)
    assert list(data) == ["name", "version", "description", "build-depends", "outputs", "source", "build"]
    assert data["description"] == 'PNG "library"'
    assert data["build-depends"] == ["zlib"]
    assert data["source"] == {"dsc": "libpng1.6=1.6.39-2", "commit": "c" * 40}
    assert list(data["build"]) == ["kind", "environment", "archive"]
    assert data["build"]["kind"] == "debian"
    assert [Pin.from_dict(p) for p in data["build"]["archive"]] == pins
    empty = recipe_toml(
        name="x",
        version="1",
        description="",
        build_depends=[],
        outputs=["*.deb"],
        dsc="x=1",
        commit="c" * 40,
        environment="e",
        archive=[],
    )
    assert tomllib.loads(empty)["build"]["archive"] == []


def test_a_reimport_keeps_the_recipes_patches(tmp_path: Path) -> None:
    """recipes import / update rewrite a recipe when the source moves; the farm's own patches stay in it."""
    old = tmp_path / "hello.toml"
    old.write_text('name = "hello"\npatches = ["patches/hello/0001-a.patch", "patches/hello/0002-b.patch"]\n')
    kept = existing_patches(old)
    assert kept == ["patches/hello/0001-a.patch", "patches/hello/0002-b.patch"]
    assert existing_patches(tmp_path / "absent.toml") == []
    text = recipe_toml(
        name="hello",
        version="2.10-3+deb12u1",
        description="",
        build_depends=[],
        outputs=["*.deb"],
        dsc="hello=2.10-3+deb12u1",
        commit="c" * 40,
        environment="e",
        archive=[],
        patches=kept,
    )
    data = tomllib.loads(text)
    assert data["patches"] == kept
    assert list(data)[:6] == ["name", "version", "description", "build-depends", "outputs", "patches"]


def test_recipe_dependencies_only_from_direct_build_depends() -> None:
    zlib, png, _ = parse_sources(SOURCES)
    produced_by = {b: e.name for e in (zlib, png) for b in e.binaries}
    # libpng names zlib1g-dev directly; its own binaries never make it depend on itself
    assert recipe_dependencies(png, [], produced_by) == ["zlib"]
    # zlib names nothing the set builds; a package only in its closure stays a pinned archive package (else
    # tool chains make cycles: debhelper needs file, file needs zlib)
    assert recipe_dependencies(zlib, [], produced_by) == []
    assert recipe_dependencies(zlib, [Pin("libpng16-16", "1.6.39-2", "amd64")], produced_by) == []
    assert recipe_dependencies(zlib, [Pin("zlib1g", "1", "amd64")], produced_by) == []

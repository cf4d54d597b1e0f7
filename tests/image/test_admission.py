"""No downgrade at admission: a farm build older than the archive's version never replaces the archive's package.

The unit tests decide over parsed Packages indexes (Debian ordering: binNMU, epoch, ``~``). The integration tests
drive the CLI: against a local two-suite archive (``tests.lib.debarchive``, seen through ``APT_CONFIG``) with a
farm build of ``x`` in the store, recorded and signed as the farm records its builds (a .deb made by dpkg-deb, its
provenance signed by the home's builder key); and against this machine's archive, where the farm's zlib1g and
libpcre2-8-0 at their bookworm versions are older than bookworm-security's.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from farm.archive.versions import ArchiveVersions, parse_packages
from farm.errors import FarmError
from farm.image import admission, inputs, lock
from tests.lib.debarchive import tiny_deb
from tests.lib.minirecipe import write_debian_recipe

CLI = str(Path(sys.executable).parent / "mangos-farm")
SHA = "a" * 64
COMMIT = "1" * 40


Entry = tuple[str, str, str]


def _index(*entries: Entry) -> str:
    """A Packages index text of (package, version, arch) entries, each its own source."""
    return "\n".join(f"Package: {p}\nVersion: {v}\nArchitecture: {a}\nSource: {p}\n" for p, v, a in entries)


def _archive(security: Sequence[Entry], main: Sequence[Entry] = ()) -> ArchiveVersions:
    got = ArchiveVersions()
    for label, entries in (("Debian bookworm", main), ("Debian bookworm-security", security)):
        for e in parse_packages(_index(*entries), label):
            got.by_package.setdefault(e.package, []).append(e)
    return got


# -- unit: the decision -------------------------------------------------------------------------------------------
@pytest.mark.unit
@pytest.mark.parametrize(
    ("farm", "archive", "older"),
    [
        ("1.0-1", "1.0-1+b1", False),  # a binNMU of the same source is not newer code
        ("1.0-1+b2", "1.0-1+b1", False),
        ("1.0-1", "1.0-1+deb12u1", True),  # the security update
        ("1.0-1+deb12u1", "1.0-1+deb12u1", False),
        ("1.0-1+deb12u1", "1.0-1+deb12u1+b1", False),
        ("1.0-1", "1:0.9-1", True),  # the epoch wins over everything after it
        ("1:1.0-1", "2.0-1", False),
        ("1.0~rc1-1", "1.0-1", True),  # ~ sorts before the release
        ("1.0-1", "1.0~rc1-1", False),
        ("3.0.20-1~deb12u1", "3.0.22-1~deb12u2", True),
        ("10.42-1+deb12u2", "10.42-1+deb12u1", False),  # newer than the archive: admitted
    ],
)
def test_a_farm_build_older_code_than_the_candidate_is_a_downgrade(farm: str, archive: str, older: bool) -> None:
    got = admission.downgrades([admission.FarmBuild("x", farm, "amd64", "x")], _archive([("x", archive, "amd64")]))
    assert bool(got) is older, got
    if older:
        assert got[0] == admission.Downgrade("x", "amd64", farm, archive, "Debian bookworm-security", "x")
        assert got[0].reason == f"farm build {farm} older than archive {archive}"


@pytest.mark.unit
def test_the_candidate_is_the_highest_of_all_suites_for_the_arch() -> None:
    archive = _archive(
        security=[("x", "1.0-1+deb12u1", "amd64"), ("y", "2.0-1", "i386")],
        main=[("x", "1.0-1", "amd64"), ("y", "1.0-1", "amd64"), ("z", "1.0-2", "all")],
    )
    builds = [
        admission.FarmBuild("x", "1.0-1", "amd64"),  # bookworm has it too, but security is newer
        admission.FarmBuild("y", "1.5-1", "amd64"),  # the newer y is for another architecture
        admission.FarmBuild("z", "1.0-1", "amd64"),  # Architecture: all counts for amd64
        admission.FarmBuild("w", "0.1-1", "amd64"),  # not in the archive: nothing to fall below
    ]
    got = admission.downgrades(builds, archive)
    assert [(d.package, d.archive_version, d.archive) for d in got] == [
        ("x", "1.0-1+deb12u1", "Debian bookworm-security"),
        ("z", "1.0-2", "Debian bookworm"),
    ]


@pytest.mark.unit
def test_every_downgrade_is_refused_at_once_naming_both_versions_and_the_fix(tmp_path: Path) -> None:
    sec = "Debian bookworm-security"
    found = [
        admission.Downgrade("zlib1g", "amd64", "1:1.2.13.dfsg-1", "1:1.2.13.dfsg-1+deb12u1", sec, "zlib"),
        admission.Downgrade("libssl3", "amd64", "3.0.20-1~deb12u1", "3.0.22-1~deb12u2", sec, "openssl"),
    ]
    err = admission.refusal(found)
    assert err.code == "E-IMAGE-DOWNGRADE" and err.exit_code == 2
    for d in found:
        assert d.package in err.message and d.farm_version in err.message and d.archive_version in err.message
    assert "mangos-farm recipes update" in err.hint and "--allow-archive-fallback" in err.hint
    assert "openssl, zlib" in err.hint
    locked = admission.refusal(found, locked_in=str(tmp_path / "image.lock"))
    assert locked.file == str(tmp_path / "image.lock") and "image lock --allow-archive-fallback" in locked.hint


@pytest.mark.unit
def test_check_reads_every_suite_of_the_lists_and_refuses_or_falls_back(tmp_path: Path) -> None:
    """:func:`admission.check` over lists as apt keeps them (plain files here; apt-helper reads any format)."""
    (tmp_path / "a_dists_bookworm_main_binary-amd64_Packages").write_text(_index(("x", "1.0-1", "amd64")))
    (tmp_path / "a_dists_bookworm-security_main_binary-amd64_Packages").write_text(
        _index(("x", "1.0-1+deb12u1", "amd64"))
    )
    builds = [admission.FarmBuild("x", "1.0-1", "amd64", "x"), admission.FarmBuild("h", "2.10-3", "amd64", "hello")]
    with pytest.raises(FarmError) as exc:
        admission.check(builds, allow_fallback=False, lists_dir=tmp_path)
    assert (
        exc.value.code == "E-IMAGE-DOWNGRADE" and "1.0-1, older than the archive's 1.0-1+deb12u1" in exc.value.message
    )
    got = admission.check(builds, allow_fallback=True, lists_dir=tmp_path)
    assert list(got) == ["x"] and got["x"].reason == "farm build 1.0-1 older than archive 1.0-1+deb12u1"
    with pytest.raises(FarmError):  # a lock cannot fall back by itself
        admission.check(builds, allow_fallback=True, lists_dir=tmp_path, locked_in="image.lock")
    rebuilt = replace(builds[0], version="1.0-1+deb12u1")
    assert admission.check([rebuilt], allow_fallback=False, lists_dir=tmp_path) == {}


@pytest.mark.unit
def test_the_reason_goes_into_the_manifest_the_sbom_and_the_lock(tmp_path: Path) -> None:
    reason = "farm build 1:1.2.13.dfsg-1 older than archive 1:1.2.13.dfsg-1+deb12u1"
    got = inputs.Inputs(
        (
            inputs.Package("zlib1g", "1:1.2.13.dfsg-1+deb12u1", "amd64", SHA, inputs.ARCHIVE, tmp_path / "z.deb",
                           reason=reason),
            inputs.Package("libc6", "2.36-9", "amd64", "b" * 64, inputs.ARCHIVE, tmp_path / "l.deb"),
        ),
        ("hello",),
    )  # fmt: skip
    manifest = {p["name"]: p for p in got.to_json()["packages"]}
    assert manifest["zlib1g"]["reason"] == reason and manifest["zlib1g"]["origin"] == "archive"
    assert "reason" not in manifest["libc6"]
    sbom = {p["name"]: p for p in inputs.spdx(got, name="t", created="2023-11-14T22:13:20Z")["packages"]}
    assert sbom["zlib1g"]["comment"] == f"origin: archive; reason: {reason}" and reason in sbom["zlib1g"]["sourceInfo"]
    assert sbom["libc6"]["comment"] == "origin: archive"

    text = lock.dumps(got.lock(1700000000))
    entry = next(p for p in tomllib.loads(text)["package"] if p["name"] == "zlib1g")
    assert entry == {"name": "zlib1g", "version": "1:1.2.13.dfsg-1+deb12u1", "arch": "amd64", "origin": "archive",
                     "sha256": SHA, "reason": reason}  # fmt: skip
    path = tmp_path / "image.lock"
    path.write_text(text)
    back = lock.load(path)
    assert back.reasons() == {("zlib1g", "amd64"): reason} and lock.dumps(back) == text
    # a reason on a farm entry is not something the farm writes
    farm = text + (
        f'\n[[package]]\nname = "hello"\nversion = "2.10-3"\narch = "amd64"\norigin = "farm"\nsha256 = "{SHA}"\n'
        f'recipe = "hello"\ncommit = "{COMMIT}"\nreason = "x"\n'
    )
    path.write_text(farm)
    with pytest.raises(FarmError) as exc:
        lock.load(path)
    assert exc.value.code == "E-IMAGE-LOCK" and exc.value.field is not None and exc.value.field.endswith(".reason")


# -- integration: the CLI ------------------------------------------------------------------------------------------
def _cli(home: Path, cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MANGOS_FARM_") and k != "SOURCE_DATE_EPOCH"}
    base.pop("APT_CONFIG", None)
    run_env = base | (env or {}) | {"MANGOS_FARM_HOME": str(home)}
    proc = subprocess.run([CLI, *args], cwd=cwd, env=run_env, capture_output=True, text=True, timeout=600, check=False)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def _ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _statement(deb: Path, recipe: str, commit: str, build_key: str, recipe_digest: str = "0" * 64) -> dict[str, Any]:
    from farm.trust.provenance import statement

    digest = hashlib.sha256(deb.read_bytes()).hexdigest()
    return statement(
        subjects=[(deb.name, digest)], recipe={"name": recipe}, recipe_digest=recipe_digest,
        source_url=f"dsc:{recipe}", commit=commit, tree="0" * 40, environment="0" * 64, dependencies=[],
        builder_id="test-admission", build_key=build_key, started="2023-11-14T22:13:20Z",
        finished="2023-11-14T22:13:21Z",
    )  # fmt: skip


def _signed_deb(home: Path, dest: Path, name: str, version: str, recipe: str) -> Path:
    """A farm .deb given on disk (``--deb``): its provenance beside it, signed by the home's builder key."""
    from farm.trust.keys import load_builder
    from farm.trust.provenance import sign
    from farm.trust.verify import ENVELOPE_SUFFIX

    deb = tiny_deb(dest, name, version)
    envelope = sign(_statement(deb, recipe, COMMIT, "0" * 64), load_builder(home / "keys"))
    (dest / (deb.name + ENVELOPE_SUFFIX)).write_text(json.dumps(envelope))
    return deb


def _record_build(home: Path, recipes: Path, name: str, version: str, commit: str) -> None:
    """The farm's record of a build of recipe ``name`` at ``commit`` in the home's store, as a worker publishes it:
    the .deb and its signed provenance as blobs, the record naming them; the recipe pinned at that commit."""
    from farm.store import BuildRecord, open_store
    from farm.trust.keys import load_builder
    from farm.trust.provenance import sign

    store = open_store(str(home / "store"))
    work = home.parent / "debs" / commit[:8]
    work.mkdir(parents=True, exist_ok=True)
    deb = tiny_deb(work, name, version)
    build_key = hashlib.sha256(f"{name}@{commit}".encode()).hexdigest()
    recipe_digest = write_debian_recipe(recipes, name, commit, version)
    envelope = sign(_statement(deb, name, commit, build_key, recipe_digest), load_builder(home / "keys"))
    artifact = store.put_file(deb)
    record = BuildRecord(
        build_key=build_key, recipe=name, version=version, recipe_digest=recipe_digest,
        source_url=f"dsc:{name}={version}", commit=commit, tree="0" * 40, environment="0" * 64, artifacts=(artifact,),
        provenance=store.put_bytes(json.dumps(envelope).encode()), log=store.put_bytes(b"log\n"),
        builder="test-admission", started="2023-11-14T22:13:20Z", finished="2023-11-14T22:13:21Z",
    )  # fmt: skip
    assert store.put_record(record)


@pytest.fixture(scope="module")
def farm_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A farm home with a builder key whose store already holds the image's archive packages (one check-inputs)."""
    from tests.conftest import require

    require("apt-get")
    require("dpkg-deb")
    root = tmp_path_factory.mktemp("admission")
    (root / "recipes").mkdir()
    home = root / "home"
    _ok(_cli(home, root, "keys", "generate"))
    _ok(_cli(home, root, "image", "build", "--check-inputs"))
    return root, home


@pytest.mark.integration
def test_check_inputs_refuses_a_farm_build_older_than_the_security_suite(
    farm_home: tuple[Path, Path], tmp_path: Path
) -> None:
    from tests.lib.debarchive import LocalArchive

    root, home = farm_home
    archive = LocalArchive(tmp_path / "archive")
    archive.add(name="x", version="1.0-1", suite="bookworm")
    archive.add(name="x", version="1.0-1+deb12u1", suite="bookworm-security", changes="Fix CVE-2099-1.")
    archive.publish()
    apt = {"APT_CONFIG": str(archive.config)}
    recipes = tmp_path / "recipes"

    _record_build(home, recipes, "x", "1.0-1", "a" * 40)
    proc = _cli(home, root, "image", "build", "--check-inputs", "--recipes", str(recipes), env=apt)
    assert proc.returncode == 2 and "E-IMAGE-DOWNGRADE" in proc.stderr, proc.stderr
    assert "x: the farm build (recipe x) is 1.0-1, older than the archive's 1.0-1+deb12u1" in proc.stderr
    assert "Debian bookworm-security" in proc.stderr and "--allow-archive-fallback" in proc.stderr
    proc = _cli(home, root, "image", "lock", "--recipes", str(recipes), "-o", str(tmp_path / "x.lock"), env=apt)
    assert proc.returncode == 2 and "E-IMAGE-DOWNGRADE" in proc.stderr and not (tmp_path / "x.lock").exists()

    _record_build(home, recipes, "x", "1.0-1+deb12u1", "b" * 40)  # rebuilt from the security update's source
    got = json.loads(_ok(_cli(home, root, "image", "build", "--check-inputs", "--recipes", str(recipes), "--json",
                              env=apt)).stdout)  # fmt: skip
    assert not any(p.get("reason") for p in got["packages"])


@pytest.mark.integration
def test_the_archive_fallback_is_explicit_said_in_the_sbom_and_kept_by_the_lock(
    farm_home: tuple[Path, Path], tmp_path: Path
) -> None:
    """On this machine's archive: farm builds of zlib1g and libpcre2-8-0 at their bookworm versions."""
    root, home = farm_home
    archive = ArchiveVersions.load(["zlib1g", "libpcre2-8-0"])
    old = {"zlib1g": ("1:1.2.13.dfsg-1", "zlib"), "libpcre2-8-0": ("10.42-1", "pcre2")}
    newer = {n: c.version for n in old if (c := archive.candidate(n, "amd64")) and c.version != old[n][0]}
    if set(newer) != set(old):
        pytest.skip(f"this machine's archive has no newer zlib1g and libpcre2-8-0 than bookworm's: {newer}")
    debs: list[str] = []
    for name, (version, recipe) in old.items():
        debs += ["--deb", str(_signed_deb(home, tmp_path, name, version, recipe))]

    proc = _cli(home, root, "image", "build", "--check-inputs", *debs)
    assert proc.returncode == 2 and "E-IMAGE-DOWNGRADE" in proc.stderr, proc.stderr
    assert "2 farm-built package(s)" in proc.stderr  # every one at once
    for name, (version, _) in old.items():
        assert f"{name}: the farm build" in proc.stderr and version in proc.stderr and newer[name] in proc.stderr

    got = json.loads(_ok(_cli(home, root, "image", "build", "--check-inputs", *debs, "--allow-archive-fallback",
                              "--json")).stdout)  # fmt: skip
    by_name = {p["name"]: p for p in got["packages"]}
    for name, (version, _) in old.items():
        assert by_name[name]["origin"] == "archive" and by_name[name]["version"] == newer[name]
        assert by_name[name]["reason"] == f"farm build {version} older than archive {newer[name]}"

    lock_path = tmp_path / "fallback.lock"
    out = _ok(_cli(home, root, "image", "lock", *debs, "--allow-archive-fallback", "-o", str(lock_path))).stdout
    assert "zlib1g: the archive's" in out
    entries = {p["name"]: p for p in tomllib.loads(lock_path.read_text())["package"]}
    assert entries["zlib1g"]["origin"] == "archive" and "older than archive" in entries["zlib1g"]["reason"]
    # a locked build keeps the decisions without the flag, and says so in its inputs
    locked = json.loads(_ok(_cli(home, root, "image", "build", "--check-inputs", "--lock", str(lock_path), *debs,
                                 "--json")).stdout)  # fmt: skip
    assert {p["name"]: p.get("reason") for p in locked["packages"] if p.get("reason")} == {
        n: by_name[n]["reason"] for n in old
    }
    text = _ok(_cli(home, root, "image", "build", "--check-inputs", "--lock", str(lock_path), *debs)).stdout
    assert f"archive (farm build {old['zlib1g'][0]} older than archive {newer['zlib1g']})" in text

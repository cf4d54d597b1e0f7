"""The image's closure with the farm's .debs in sight of apt (:mod:`farm.image.closure`).

A farm package may depend on a package that only the farm builds (systemd 254's ``systemd`` and ``udev`` Depend on
``systemd-dev (>= 254.26-1~bpo12+1)``, which bookworm lacks). Here one farm recipe, ``mangos-pair``, builds two real
.debs (``dpkg-deb``): ``mangos-a`` Depends on ``mangos-b (>= 2.0-1)`` and on the archive's ``hello``; the archive has
neither mangos package. Real apt resolves against this machine's apt lists (nothing is downloaded): apt alone cannot
install mangos-a, the farm's closure can, and :func:`farm.image.inputs.gather` takes mangos-b from the farm with its
recipe, commit and sha256 into the SBOM and the lock, like every farm package.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from farm.archive import Pin, resolve_install
from farm.errors import FarmError
from farm.image import closure, inputs, lock
from farm.image.packages import ARCHIVE, FARM, Package
from farm.trust.keys import BuilderKey
from tests.conftest import require
from tests.lib.debarchive import tiny_deb
from tests.lib.minirecipe import write_debian_recipe

RECIPE = "mangos-pair"
COMMIT = "d" * 40


def _farm(*debs: Path) -> dict[str, Package]:
    """Farm packages as :func:`closure.resolve` sees them (name, version, .deb path)."""
    found = {}
    for deb in debs:
        name, version, arch = closure.deb_fields(deb)
        digest = hashlib.sha256(deb.read_bytes()).hexdigest()
        found[name] = Package(name, version, arch, digest, FARM, deb, RECIPE, COMMIT)
    return found


def _versions(pins: list[Pin]) -> dict[str, str]:
    return {p.package: p.version for p in pins}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    require("apt-get")
    dest = tmp_path_factory.mktemp("pair")
    return [tiny_deb(dest, "mangos-a", "2.0-1", "mangos-b (>= 2.0-1), hello"), tiny_deb(dest, "mangos-b", "2.0-1")]


@pytest.mark.integration
def test_a_dependency_only_the_farm_builds_comes_into_the_closure_from_the_farm(
    pair: list[Path], tmp_path: Path
) -> None:
    with pytest.raises(FarmError) as alone:  # the archive's view: neither mangos package is anywhere
        resolve_install(["mangos-a"], tmp_path)
    assert alone.value.code == "E-ARCHIVE-UNSATISFIABLE"
    with pytest.raises(FarmError) as one:  # the farm's mangos-a alone in sight (by name): its dependency is not
        closure.resolve(["mangos-a"], _farm(pair[0]), tmp_path, resolve_install)
    assert one.value.code == "E-ARCHIVE-UNSATISFIABLE" and "mangos-b" in one.value.message

    got = _versions(closure.resolve(["mangos-a"], _farm(*pair), tmp_path, resolve_install))
    assert got["mangos-a"] == "2.0-1" and got["mangos-b"] == "2.0-1"
    assert "hello" in got and "libc6" in got  # the farm package's archive dependencies, resolved as before
    # a farm package nothing depends on is in sight, never installed
    assert "mangos-b" not in _versions(closure.resolve(["hello"], _farm(*pair), tmp_path, resolve_install))


@pytest.mark.integration
def test_a_farm_package_is_resolved_as_the_farm_deb_with_its_own_dependencies(pair: list[Path], tmp_path: Path) -> None:
    """The farm's hello Depends on mangos-c, the archive's does not: the image installs the farm's hello by name, so
    the closure must be that of the farm's hello, mangos-c included; both when apt prefers the archive's hello (the
    same version, or a higher one) and whether hello is a dependency or a wish naming a suite."""
    (archive_hello,) = [p for p in resolve_install(["hello"], tmp_path) if p.package == "hello"]
    mangos_c = tiny_deb(tmp_path, "mangos-c", "1.0-1")
    for version, wishes in ((archive_hello.version, ["mangos-a"]), ("0.1-1", ["hello/bookworm"])):
        farm = _farm(*pair, tiny_deb(tmp_path / version, "hello", version, "mangos-c"), mangos_c)
        got = _versions(closure.resolve(wishes, farm, tmp_path, resolve_install))
        assert got["hello"] == version and got["mangos-c"] == "1.0-1", (wishes, got)


@pytest.mark.integration
def test_gather_takes_the_dependency_from_the_farm_into_the_sbom_and_the_lock(
    pair: list[Path], builder_key: BuilderKey, tmp_path: Path
) -> None:
    """Through the store as a worker publishes a build: both .debs of one recipe, their provenance signed."""
    from farm.store import BuildRecord, open_store
    from farm.trust.provenance import sign, statement

    store = open_store(str(tmp_path / "store"))
    recipes = tmp_path / "recipes"
    recipe_digest = write_debian_recipe(recipes, RECIPE, COMMIT, "2.0-1")
    artifacts = tuple(store.put_file(deb) for deb in pair)
    build_key = "e" * 64
    subjects = [(deb.name, hashlib.sha256(deb.read_bytes()).hexdigest()) for deb in pair]
    envelope = sign(statement(
        subjects=subjects, recipe={"name": RECIPE}, recipe_digest=recipe_digest, source_url=f"dsc:{RECIPE}",
        commit=COMMIT, tree="0" * 40, environment="0" * 64, dependencies=[], builder_id="test-farm-closure",
        build_key=build_key, started="2023-11-14T22:13:20Z", finished="2023-11-14T22:13:21Z",
    ), builder_key)  # fmt: skip
    assert store.put_record(BuildRecord(
        build_key=build_key, recipe=RECIPE, version="2.0-1", recipe_digest=recipe_digest, source_url=f"dsc:{RECIPE}",
        commit=COMMIT, tree="0" * 40, environment="0" * 64, artifacts=artifacts,
        provenance=store.put_bytes(json.dumps(envelope).encode()), log=store.put_bytes(b"log\n"),
        builder="test-farm-closure", started="2023-11-14T22:13:20Z", finished="2023-11-14T22:13:21Z",
    ))  # fmt: skip

    got = inputs.gather(
        store=store, recipes_dir=recipes, trusted=[builder_key.public], work=tmp_path / "work", payload=(),
        extra=("mangos-a",), fetch=False,
    )  # fmt: skip
    by_name = {p.name: p for p in got.packages}
    for name, (deb, digest) in zip(("mangos-a", "mangos-b"), subjects, strict=True):
        p = by_name[name]
        assert (p.origin, p.recipe, p.commit, p.sha256, p.build_key) == (FARM, RECIPE, COMMIT, digest, build_key), p
        assert p.filename == deb
    assert by_name["hello"].origin == ARCHIVE and by_name["libc6"].origin == ARCHIVE
    assert "mangos-b" not in got.requested  # in the image as mangos-a's dependency, not as a wish

    sbom = {p["name"]: p for p in inputs.spdx(got, name="t", created="2023-11-14T22:13:20Z")["packages"]}
    assert sbom["mangos-b"]["comment"] == "origin: farm"
    assert f"source commit {COMMIT} (recipe {RECIPE}, build key {build_key})" in sbom["mangos-b"]["sourceInfo"]
    assert sbom["mangos-b"]["checksums"] == [{"algorithm": "SHA256", "checksumValue": subjects[1][1]}]

    path = tmp_path / "image.lock"
    path.write_text(lock.dumps(got.lock(1700000000)))
    locked = lock.load(path)
    assert {(p.name, p.recipe, p.commit, p.sha256) for p in locked.farm()} == {
        (name, RECIPE, COMMIT, digest) for name, (_, digest) in zip(("mangos-a", "mangos-b"), subjects, strict=True)
    }
    locked.check_farm({p.name: (p.sha256, p.recipe, p.commit) for p in got.farm()})  # the lock holds as resolved

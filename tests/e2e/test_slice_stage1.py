"""``rebuild --stage 1`` on issue #12's CI slice (:mod:`tests.lib.slice`), in the session image's farm home.

Stage 0 is the session's own build of the slice (``built_image``): zlib against the archive's ``file`` (its bootstrap
edge), file against the farm's zlib. Stage 1 builds zlib once more, against the farm's stage-0 ``file``: the
archive pins of the packages that build made are dropped, its .debs go into zlib's build root instead, and the
provenance says so. zlib's build is reproducible and ``file`` only identifies files for debhelper, so its .debs are
expected byte-identical to stage 0's (``equal``, exit 0); a ``different`` verdict must come with diffoscope's report.

Stage 1 adds a second record of recipe zlib at its commit to the session's store. The image's zlib1g is the archive's
either way (both farm builds are older than it), so later ``image build`` calls of the session are not changed.
"""

from __future__ import annotations

import base64
import json
import tomllib
from typing import Any

import pytest

from farm.store import BuildRecord, Store, open_store
from tests.e2e.image_fixtures import BuiltImage
from tests.lib.slice import BOOTSTRAP_FROM, BOOTSTRAP_TO, SLICE_DIR

pytestmark = pytest.mark.e2e

FILE_PACKAGES = {"file", "libmagic1", "libmagic-mgc"}  # made by the farm's file and pinned by zlib.toml
UNPACK = "Preparing to unpack .../"  # apt's dpkg line before each .deb of the build-dependencies it installs


def dependencies(store: Store, record: BuildRecord) -> dict[str, dict[str, Any]]:
    """A build's signed ``resolvedDependencies`` by name."""
    envelope = json.loads(store.get_bytes(record.provenance))
    statement = json.loads(base64.b64decode(envelope["payload"]))
    deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
    return {d["name"]: d for d in deps if "name" in d}


def test_stage1_rebuilds_zlib_against_the_farms_file(built_image: BuiltImage) -> None:
    img = built_image
    proc = img.farm.run("rebuild", SLICE_DIR, "--stage", "1", "--json", check=False)
    result = json.loads(proc.stdout)
    (entry,) = result["stage1"]
    if entry["outcome"] == "different":  # not expected; the report must say why
        assert all(d.get("report", {}).get("text") for d in entry["differences"] if d["stage0"] and d["stage1"])
    assert entry["outcome"] == "equal" and entry["differences"] == [] and entry["error"] is None, entry
    assert proc.returncode == 0 and result["ok"] and result["summary"] == {"equal": 1, "different": 0, "failed": 0}
    assert (entry["recipe"], entry["depends_on_farm"]) == (BOOTSTRAP_FROM, [BOOTSTRAP_TO])
    assert entry["stage0_key"] == img.build_keys["zlib"] != entry["stage1_key"]
    assert entry["dropped_pins"] == sorted(FILE_PACKAGES)

    store = open_store(str(img.farm.home / "store"))
    stage0, stage1, file0 = (
        store.get_record(k) for k in (entry["stage0_key"], entry["stage1_key"], img.build_keys["file"])
    )
    assert stage0 is not None and stage1 is not None and file0 is not None
    assert stage1.recipe == "zlib" and stage1.commit == stage0.commit == img.commits["zlib"]
    # stage 0 built against the archive's file, as zlib.toml pins it; stage 1 against the farm's, by digest
    pins = tomllib.loads((img.slice / "zlib.toml").read_text())["build"]["archive"]
    pinned = {p["package"]: p["sha256"] for p in pins if p["package"] in FILE_PACKAGES}
    deps0, deps1 = dependencies(store, stage0), dependencies(store, stage1)
    archive0 = {
        n.split("/", 1)[1].split("_", 1)[0]: d["digest"]["sha256"] for n, d in deps0.items() if n.startswith("archive/")
    }
    assert {n: archive0[n] for n in FILE_PACKAGES} == pinned and not any(n.startswith("file/") for n in deps0)
    assert not {n.split("/", 1)[1].split("_", 1)[0] for n in deps1 if n.startswith("archive/")} & FILE_PACKAGES
    farm_file = {n.split("/", 1)[1]: d for n, d in deps1.items() if n.startswith("file/")}
    assert {n: d["digest"]["sha256"] for n, d in farm_file.items()} == file0.outputs()
    assert {d["annotations"]["buildKey"] for d in farm_file.values()} == {img.build_keys["file"]}
    # the farm's file .deb is not the archive's (another build), so stage 1 really installed something else
    farm_debs = {n.split("_", 1)[0]: digest for n, digest in file0.outputs().items() if n.endswith(".deb")}
    assert all(farm_debs[n] != pinned[n] for n in FILE_PACKAGES)
    # the build logs say so too: stage 1's local repository has the farm's file .debs in place of the three pins, and
    # apt unpacks the farm's .debs (named as the farm built them; the archive's names carry the %3a-encoded epoch)
    log0, log1 = (store.get_bytes(r.log).decode(errors="replace") for r in (stage0, stage1))
    assert f"==> local repository: {len(pins)} pinned and dependency packages" in log0
    assert f"==> local repository: {len(pins) - len(pinned) + len(farm_debs)} pinned and dependency packages" in log1
    unpacked0, unpacked1 = (
        {ln.rsplit("/", 1)[1].split("-", 1)[1].removesuffix(" ...") for ln in log.splitlines() if UNPACK in ln}
        for log in (log0, log1)
    )
    archive_names = {f"{n}_{img.bootstrap_edge[2].replace(':', '%3a')}_amd64.deb" for n in FILE_PACKAGES}
    farm_names = {name for name in file0.outputs() if name.endswith(".deb") and name.split("_")[0] in FILE_PACKAGES}
    assert archive_names <= unpacked0 and not farm_names & unpacked0, sorted(unpacked0)
    assert farm_names <= unpacked1 and not archive_names & unpacked1, sorted(unpacked1)
    # the .debs are the same; the .buildinfo, which lists what was installed, is left out of the comparison
    debs = {n: d for n, d in stage1.outputs().items() if n.endswith(".deb")}
    assert debs == {n: d for n, d in stage0.outputs().items() if n.endswith(".deb")} and debs

    again = img.farm.json("rebuild", SLICE_DIR, "--stage", "1")  # resumable: found in the store, nothing built
    assert again["stage1"][0]["stage1_key"] == entry["stage1_key"] and again["summary"] == result["summary"]
    assert {b["recipe"]: b["state"] for b in img.farm.json("status", again["stage1"][0]["run"])["builds"]} == {
        "file": "cached", "zlib": "cached"
    }  # fmt: skip

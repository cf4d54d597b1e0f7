"""Coverage and ``trace --all`` on the session's image (``built_image``: issue #12's CI slice, :mod:`tests.lib.slice`).

The slice is hello, zlib (with a bootstrap edge to file) and file, all farm-built. ``image build`` counts the
farm-built binary packages and says why each other one is the archive's: zlib1g because the farm's zlib is older than
the archive's (``--allow-archive-fallback``); file's packages are in no image of this package set. ``--require-farm``
and ``--min-farm`` refuse with one error naming every archive package, before anything is built. ``trace --all``
walks every file of the image's root to its package and each farm package to its verified build and source commit,
with counts that add up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.image_fixtures import IMAGE_ARGS, BuiltImage
from tests.lib.slice import SLICE, SLICE_DIR

pytestmark = pytest.mark.e2e

ZLIB_FARM = "1:1.2.13.dfsg-1"  # recipes/debian/zlib.toml: bookworm's (the mirror does not serve the security source)
ZLIB_ARCHIVE = "1:1.2.13.dfsg-1+deb12u1"  # the archive's zlib1g, bookworm-security's


def test_the_slice_plans_its_one_bootstrap_edge(built_image: BuiltImage) -> None:
    img = built_image
    plan = img.farm.json("plan", SLICE_DIR)
    assert plan["bootstrap_edges"] == [["zlib", "file", "1:5.44-3"]] == [list(img.bootstrap_edge)]
    assert sorted(plan["order"]) == sorted(SLICE) and plan["summary"]["cached"] == len(SLICE)
    assert {b["recipe"]: b["build_depends"] for b in plan["builds"]} == {"hello": [], "zlib": [], "file": ["zlib"]}
    assert img.farm.json("plan", "recipes")["bootstrap_edges"] == []


def test_coverage_matches_the_slice_and_require_farm_names_every_archive_package(
    built_image: BuiltImage, tmp_path: Path
) -> None:
    img = built_image
    listed = img.farm.json("image", "build", "--check-inputs", *IMAGE_ARGS)
    cov = listed["coverage"]
    assert (cov["farm_packages"], cov["total"]) == (1, len(listed["packages"]))
    assert cov["archive_packages"] == cov["total"] - 1 and cov["percent"] == round(100 / cov["total"], 1)
    by_name = {p["package"]: p for p in cov["packages"]}
    assert by_name["hello"]["origin"] == "farm" and by_name["hello"]["commit"] == img.commits["hello"]
    assert by_name["libc6"] | {"reason": ""} == {
        "package": "libc6", "version": by_name["libc6"]["version"], "arch": "amd64", "origin": "archive",
        "source": "glibc", "kind": "no-recipe", "reason": "",
    }  # fmt: skip
    # the farm built zlib, but bookworm's 1:1.2.13.dfsg-1 is older than the archive's security update: the archive's
    assert by_name["zlib1g"] == {
        "package": "zlib1g", "version": ZLIB_ARCHIVE, "arch": "amd64", "origin": "archive", "source": "zlib",
        "recipe": "zlib", "commit": img.commits["zlib"], "kind": "older",
        "reason": f"farm build {ZLIB_FARM} older than archive {ZLIB_ARCHIVE}",
    }  # fmt: skip
    # file's packages are farm-built too, but nothing of the image needs them: absent, not taken from the archive
    assert not {"file", "libmagic1", "libmagic-mgc"} & set(by_name)
    farm = {p["package"] for p in cov["packages"] if p["origin"] == "farm"}
    assert farm == {p["name"] for p in listed["packages"] if p["origin"] == "farm"} == {"hello"}
    archive = [p["package"] for p in cov["packages"] if p["origin"] == "archive"]
    assert len(archive) == cov["archive_packages"] and all(by_name[n]["reason"] for n in archive)
    assert cov["archive_by_kind"]["older"] == 1 and sum(cov["archive_by_kind"].values()) == len(archive)
    assert img.coverage == cov  # image build counted the same of the image it made
    # the slice's image has the package set of the hello-only image: only the reason given for zlib1g is new
    plain = img.farm.json("image", "build", "--check-inputs")
    assert plain["digest"] == listed["digest"] and plain["coverage"]["total"] == cov["total"]
    assert img.version.endswith(listed["digest"][:12])

    refused = img.farm.run("image", "build", "--check-inputs", *IMAGE_ARGS, "--require-farm", check=False)
    assert refused.returncode == 2 and refused.stderr.count("error[E-IMAGE-COVERAGE]") == 1, refused.stderr
    named = {line.split()[0] for line in refused.stderr.splitlines() if line.startswith("  ") and "[" in line}
    assert named == set(archive) and "zlib1g" in named
    assert f"farm build {ZLIB_FARM} older than archive {ZLIB_ARCHIVE}" in refused.stderr

    # the threshold is checked before an image is built
    out = tmp_path / "out"
    below = img.farm.run("image", "build", "-o", str(out), *IMAGE_ARGS, "--min-farm", "50", check=False)
    assert below.returncode == 2 and "--min-farm 50 wants at least 50%" in below.stderr, below.stderr
    assert not out.exists()


def test_trace_all_maps_every_file_to_its_package_and_farm_files_to_their_commit(built_image: BuiltImage) -> None:
    img = built_image
    got = img.farm.json("trace", str(img.raw), "--all", "--cert", str(img.verity_cert))
    assert got["image_signature"] == "verified" and got["image_root_hash"] == img.root_hash
    s, files = got["summary"], {f["path"]: f for f in got["files"]}
    assert s["files"] == len(got["files"]) == len(files) > 1000
    assert s["farm_files"] + s["archive_files"] + s["unowned_files"] == s["files"]
    assert s["farm_files"] == s["farm_files_with_commit"] > 0 and s["modified_files"] == 0
    assert files["/usr/bin/hello"] == {"path": "/usr/bin/hello", "package": "hello", "origin": "farm"}
    assert files["/usr/bin/dash"]["package"] == "dash" and files["/usr/bin/dash"]["origin"] == "archive"
    assert files["/usr/lib/mangos/manifest.json"]["package"] is None  # written by the build, no package's
    packages = {p["package"]: p for p in got["packages"]}
    manifest = json.loads(next(img.out.glob("*.manifest.json")).read_text())
    assert set(packages) <= {p["name"] for p in manifest["packages"]}
    # every farm-built package of the slice image (the coverage's) reaches its commit, every file of it counted
    farm = {p["package"] for p in img.coverage["packages"] if p["origin"] == "farm"}
    assert {n for n, p in packages.items() if p["origin"] == "farm"} == farm == {"hello"}
    assert s["farm_packages"] == len(farm)
    hello = packages["hello"]
    assert hello["commit"] == img.commits["hello"] and hello["signature"] == "verified"
    assert hello["build_key"] == img.build_keys["hello"]
    assert hello["files"] == s["farm_files"] == sum(1 for f in got["files"] if f["package"] == "hello")
    zlib1g = packages["zlib1g"]  # the farm's zlib is older: the archive's, with the reason
    assert zlib1g["origin"] == "archive" and zlib1g["version"] == ZLIB_ARCHIVE and "commit" not in zlib1g
    assert zlib1g["reason"] == f"farm build {ZLIB_FARM} older than archive {ZLIB_ARCHIVE}"
    assert not {"file", "libmagic1"} & set(packages)
    assert sum(p["files"] for p in got["packages"]) == s["files"] - s["unowned_files"]

    text = img.farm.run("trace", str(img.raw), "--all").stdout.splitlines()
    assert f"/usr/bin/hello\thello\tfarm hello@{img.commits['hello'][:12]}" in text
    assert text[-1].startswith(f"{s['files']} files: {s['farm_files']} of farm-built packages reaching a commit")
    neither = img.farm.run("trace", str(img.raw), check=False)
    assert neither.returncode == 2 and "E-IMAGE-TRACE" in neither.stderr

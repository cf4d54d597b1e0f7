"""Coverage and ``trace --all`` on the session's image (``built_image``: the farm's hello, the rest from the archive).

``image build`` counts the farm-built binary packages and says why each other one is the archive's;
``--require-farm`` and ``--min-farm`` refuse with one error naming every archive package, before anything is built.
``trace --all`` walks every file of the image's root to its package and each farm package to its verified build and
source commit, with counts that add up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.image_fixtures import BuiltImage

pytestmark = pytest.mark.e2e


def test_coverage_is_counted_and_require_farm_names_every_archive_package(
    built_image: BuiltImage, tmp_path: Path
) -> None:
    img = built_image
    listed = img.farm.json("image", "build", "--check-inputs")
    cov = listed["coverage"]
    assert (cov["farm_packages"], cov["total"]) == (1, len(listed["packages"]))
    assert cov["archive_packages"] == cov["total"] - 1 and cov["percent"] == round(100 / cov["total"], 1)
    by_name = {p["package"]: p for p in cov["packages"]}
    assert by_name["hello"]["origin"] == "farm" and by_name["hello"]["commit"] == img.commits["hello"]
    assert by_name["libc6"] | {"reason": ""} == {
        "package": "libc6", "version": by_name["libc6"]["version"], "arch": "amd64", "origin": "archive",
        "source": "glibc", "kind": "no-recipe", "reason": "",
    }  # fmt: skip
    archive = [p["package"] for p in cov["packages"] if p["origin"] == "archive"]
    assert len(archive) == cov["archive_packages"] and all(by_name[n]["reason"] for n in archive)

    refused = img.farm.run("image", "build", "--check-inputs", "--require-farm", check=False)
    assert refused.returncode == 2 and refused.stderr.count("error[E-IMAGE-COVERAGE]") == 1, refused.stderr
    named = {line.split()[0] for line in refused.stderr.splitlines() if line.startswith("  ") and "[" in line}
    assert named == set(archive)

    # the threshold is checked before an image is built
    out = tmp_path / "out"
    below = img.farm.run("image", "build", "-o", str(out), "--min-farm", "50", check=False)
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
    hello = packages["hello"]
    assert hello["commit"] == img.commits["hello"] and hello["signature"] == "verified" and hello["build_key"]
    assert hello["files"] == s["farm_files"] == sum(1 for f in got["files"] if f["package"] == "hello")
    assert sum(p["files"] for p in got["packages"]) == s["files"] - s["unowned_files"]

    text = img.farm.run("trace", str(img.raw), "--all").stdout.splitlines()
    assert f"/usr/bin/hello\thello\tfarm hello@{img.commits['hello'][:12]}" in text
    assert text[-1].startswith(f"{s['files']} files: {s['farm_files']} of farm-built packages reaching a commit")
    neither = img.farm.run("trace", str(img.raw), check=False)
    assert neither.returncode == 2 and "E-IMAGE-TRACE" in neither.stderr

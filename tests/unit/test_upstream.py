"""Where a Debian source comes from upstream: the parsers of debian/watch, debian/upstream/metadata, Vcs-Git and
apt's URIs, and the provenance fields they fill (absent when unknown: a statement without them is unchanged)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from farm.sources import upstream
from farm.trust import provenance

pytestmark = pytest.mark.unit

WATCH = """\
# Compulsory line, this is a version 4 file
version=4
opts="pgpmode=auto, \\
  uversionmangle=s/-rc/~rc/" \\
  https://ftp.gnu.org/gnu/findutils/findutils-@ANY_VERSION@@ARCHIVE_EXT@
"""
METADATA = """\
---
Bug-Database: https://savannah.gnu.org/bugs/?group=findutils
Repository: https://git.savannah.gnu.org/git/findutils.git
Repository-Browse: https://git.savannah.gnu.org/cgit/findutils.git
"""
CONTROL = """\
Source: findutils
Maintainer: Andreas Metzler <ametzler@debian.org>
Vcs-Git: https://salsa.debian.org/debian/findutils.git
Build-Depends: debhelper-compat (= 13)

Package: findutils
Architecture: any
Description: utilities for finding files
"""
URIS = (
    "'http://deb.debian.org/debian/pool/main/f/findutils/findutils_4.9.0-4.dsc' findutils_4.9.0-4.dsc 2364 "
    "SHA256:" + "1" * 64 + "\n"
    "'http://deb.debian.org/debian/pool/main/f/findutils/findutils_4.9.0.orig.tar.xz' findutils_4.9.0.orig.tar.xz "
    "2046252 SHA256:" + "2" * 64 + "\n"
)


def test_the_parsers() -> None:
    assert upstream.watch_url(WATCH) == "https://ftp.gnu.org/gnu/findutils/findutils-@ANY_VERSION@@ARCHIVE_EXT@"
    assert upstream.watch_url("version=4\n# https://commented.example/\n") == ""
    assert upstream.metadata_repository(METADATA) == "https://git.savannah.gnu.org/git/findutils.git"
    assert upstream.metadata_repository("Repository-Browse: https://x\n") == ""
    assert upstream.dsc_url(URIS, "findutils_4.9.0-4.dsc").endswith("/findutils_4.9.0-4.dsc")
    assert upstream.dsc_url(URIS, "other_1.dsc") == ""
    assert [upstream.upstream_release(v) for v in ("1:1.2.13.dfsg-1", "4.9.0-4", "2.10")] == [
        "1.2.13.dfsg",
        "4.9.0",
        "2.10",
    ]
    assert upstream.is_orig("x_1.orig.tar.xz") and upstream.is_orig("x_1.orig-docs.tar.gz")
    assert not upstream.is_orig("x_1.orig.tar.xz.asc") and not upstream.is_orig("x_1-2.debian.tar.xz")


def test_declared_reads_the_source_tree(tmp_path: Path) -> None:
    (tmp_path / "debian" / "upstream").mkdir(parents=True)
    (tmp_path / "debian" / "control").write_text(CONTROL)
    (tmp_path / "debian" / "watch").write_text(WATCH)
    (tmp_path / "debian" / "upstream" / "metadata").write_text(METADATA)
    assert upstream.declared(tmp_path, "4.9.0-4") == {
        "vcs-git": "https://salsa.debian.org/debian/findutils.git",
        "repository": "https://git.savannah.gnu.org/git/findutils.git",
        "watch": "https://ftp.gnu.org/gnu/findutils/findutils-@ANY_VERSION@@ARCHIVE_EXT@",
        "release": "4.9.0",
    }
    assert upstream.declared(tmp_path / "nothing", "3.0") == {}  # native, nothing declared: nothing recorded


def test_the_import_record_is_kept_in_the_repository(tmp_path: Path) -> None:
    dsc = tmp_path / "x_1.0-1.dsc"
    dsc.write_text(
        "Format: 3.0 (quilt)\nSource: x\nVersion: 1.0-1\nChecksums-Sha256:\n"
        f" {'a' * 64} 10 x_1.0.orig.tar.gz\n {'b' * 64} 5 x_1.0.orig.tar.gz.asc\n {'c' * 64} 7 x_1.0-1.debian.tar.xz\n"
    )
    record = upstream.import_record(dsc, "d" * 64, "file:/archive/x_1.0-1.dsc")
    assert record == {
        "dsc": {"name": "x_1.0-1.dsc", "sha256": "d" * 64, "url": "file:/archive/x_1.0-1.dsc"},
        "orig": [{"name": "x_1.0.orig.tar.gz", "sha256": "a" * 64}],
    }
    repo = tmp_path / "repo.git"
    repo.mkdir()
    assert upstream.read_record(repo) == {}  # an import made before the record existed
    upstream.write_record(repo, record)
    assert upstream.read_record(repo) == record
    assert upstream.of_source("", "1.0", tmp_path / "src", tmp_path) == {}


def _statement(**extra: object) -> dict[str, object]:
    return provenance.statement(
        subjects=[("x.deb", "e" * 64)],
        recipe={"name": "x"},
        recipe_digest="f" * 64,
        source_url="dsc:x=1.0-1",
        commit="1" * 40,
        tree="2" * 40,
        environment="3" * 64,
        dependencies=[],
        builder_id="b",
        build_key="4" * 64,
        started="s",
        finished="f",
        **extra,  # type: ignore[arg-type]
    )


def test_provenance_names_the_upstream_only_when_known() -> None:
    plain = json.dumps(_statement(), sort_keys=True)
    assert json.dumps(_statement(upstream={}, parameters={}), sort_keys=True) == plain
    assert json.dumps(_statement(upstream=None, parameters=None), sort_keys=True) == plain
    assert "upstream" not in plain and '"debian"' not in plain
    record = {
        "dsc": {"name": "x_1.0-1.dsc", "sha256": "d" * 64, "url": "http://deb.example/x_1.0-1.dsc"},
        "orig": [{"name": "x_1.0.orig.tar.gz", "sha256": "a" * 64}],
        "repository": "https://git.example/x.git",
        "release": "1.0",
    }
    stmt = _statement(upstream=record, parameters={"debBuildOptions": "nocheck parallel=2"})
    definition = stmt["predicate"]["buildDefinition"]  # type: ignore[index]
    assert definition["externalParameters"]["source"]["upstream"] == record
    assert definition["internalParameters"]["debian"] == {"debBuildOptions": "nocheck parallel=2"}
    resolved = definition["resolvedDependencies"]
    assert resolved[2] == {
        "name": "dsc/x_1.0-1.dsc",
        "uri": "http://deb.example/x_1.0-1.dsc",
        "digest": {"sha256": "d" * 64},
    }
    assert resolved[3] == {"name": "orig/x_1.0.orig.tar.gz", "digest": {"sha256": "a" * 64}}


def test_trace_names_the_upstream_of_a_farm_build(tmp_path: Path) -> None:
    from farm.image import trace
    from farm.image.assemble import MANIFEST_DIR
    from farm.trust.keys import generate
    from farm.trust.verify import ENVELOPE_SUFFIX

    key = generate(tmp_path / "keys")
    root = tmp_path / "root"
    (root / "var/lib/dpkg/info").mkdir(parents=True)
    (root / "var/lib/dpkg/info/x.list").write_text("/usr/bin/x\n")
    deb = "x.deb"
    entry = {"name": "x", "version": "1.0-1", "arch": "amd64", "sha256": "e" * 64, "origin": "farm", "file": deb}
    (root / MANIFEST_DIR / "provenance").mkdir(parents=True)
    (root / MANIFEST_DIR / "manifest.json").write_text(json.dumps({"packages": [entry]}))
    found = {"dsc": {"name": "x_1.0-1.dsc", "sha256": "d" * 64}, "repository": "https://git.example/x.git"}
    for known, expected in (({}, None), (found, found)):
        stmt = _statement(upstream=known)
        (root / MANIFEST_DIR / "provenance" / (deb + ENVELOPE_SUFFIX)).write_text(
            json.dumps(provenance.sign(stmt, key))
        )
        assert trace.trace_tree(root, "/usr/bin/x", [key.public]).get("upstream") == expected

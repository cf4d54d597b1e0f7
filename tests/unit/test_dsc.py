"""farm.sources.dsc without network or processes: argv lists, DEP-14 tags, checksum checks on crafted files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from farm.errors import E, FarmError
from farm.sources import dsc

pytestmark = pytest.mark.unit


def test_argv_builders() -> None:
    assert dsc.apt_source_argv("hello", "2.10-3") == ["apt-get", "source", "--download-only", "-q", "hello=2.10-3"]
    assert dsc.apt_cat_argv(Path("/l/x_Sources.lz4")) == ["/usr/lib/apt/apt-helper", "cat-file", "/l/x_Sources.lz4"]
    assert dsc.dpkg_source_argv(Path("/d/h.dsc"), Path("/t/src")) == [
        "dpkg-source", "--no-copy", "-x", "/d/h.dsc", "/t/src",
    ]  # fmt: skip
    argv = dsc.git_argv(Path("/r.git"), "write-tree", work_tree=Path("/w"))
    assert argv[:5] == ["git", "--git-dir", "/r.git", "--work-tree", "/w"]
    assert argv[-1] == "write-tree"
    for setting in ("core.autocrlf=false", "commit.gpgSign=false", "core.fileMode=true"):
        assert setting in argv
    assert dsc.git_init_argv(Path("/r.git"))[-3:] == ["-q", "--bare", "/r.git"]


def test_git_env_is_clean_and_fixed() -> None:
    env = dsc.git_env(1672068600, "+0100")
    assert env["GIT_CONFIG_GLOBAL"] == "/dev/null"
    assert env["GIT_CONFIG_NOSYSTEM"] == "1"
    assert env["GIT_AUTHOR_DATE"] == env["GIT_COMMITTER_DATE"] == "1672068600 +0100"
    assert env["GIT_AUTHOR_NAME"] == env["GIT_COMMITTER_NAME"] == "MANGOS import"
    assert env["GIT_AUTHOR_EMAIL"] == env["GIT_COMMITTER_EMAIL"] == "import@mangos.invalid"
    assert not any(k.startswith("GIT_") and k.endswith("_DIR") for k in env)
    assert dsc.commit_message("hello", "2.10-3", "Debian bookworm") == "Import hello 2.10-3 from Debian bookworm\n"


@pytest.mark.parametrize(
    ("version", "tag"),
    [
        ("2.10-3", "debian/2.10-3"),
        ("1:2.3~rc1-1", "debian/1%2.3_rc1-1"),
        ("1.0~~a", "debian/1.0__a"),
        ("1..2", "debian/1.#.2"),
        ("1.2.", "debian/1.2.#"),
        ("1.lock", "debian/1.#lock"),
    ],
)
def test_dep14_tags(version: str, tag: str) -> None:
    assert dsc.tag_name(version) == tag


def test_dsc_name_drops_the_epoch() -> None:
    assert dsc.upstream_dsc_name("dash", "0.5.12-2") == "dash_0.5.12-2.dsc"
    assert dsc.upstream_dsc_name("x", "1:2.0-1") == "x_2.0-1.dsc"


@pytest.mark.parametrize(("name", "version"), [("-oAPT::X=1", "1"), ("hello", "--help"), ("Hello", "1"), ("h", "")])
def test_bad_specs_are_refused(name: str, version: str) -> None:
    with pytest.raises(FarmError) as err:
        dsc.check_spec(name, version)
    assert err.value.code == E.DSC_UNKNOWN


def test_changelog_date() -> None:
    text = (
        "hello (2.10-3) unstable; urgency=medium\n\n  * Something.\n\n"
        " -- Santiago Vila <sanvila@debian.org>  Mon, 26 Dec 2022 16:30:00 +0100\n\n"
        "hello (2.10-2) unstable; urgency=medium\n\n  * Older.\n\n"
        " -- Santiago Vila <sanvila@debian.org>  Sun, 01 Jan 2017 00:00:00 +0000\n"
    )
    assert dsc.changelog_date(text) == (1672068600, "+0100")
    with pytest.raises(FarmError):
        dsc.changelog_date("not a changelog\n")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _craft(tmp: Path, files: dict[str, bytes]) -> Path:
    """A .dsc listing ``files`` with their real checksums, and the files next to it."""
    lines = [f" {_sha(data)} {len(data)} {name}" for name, data in files.items()]
    text = "Format: 3.0 (quilt)\nSource: demo\nVersion: 1.0-1\nChecksums-Sha256:\n" + "\n".join(lines) + "\n"
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    path = tmp / "demo_1.0-1.dsc"
    path.write_text(text)
    return path


def test_dsc_files_verified(tmp_path: Path) -> None:
    path = _craft(tmp_path, {"demo_1.0.orig.tar.gz": b"upstream", "demo_1.0-1.debian.tar.xz": b"packaging"})
    assert dsc.check_dsc_files(path) == ["demo_1.0.orig.tar.gz", "demo_1.0-1.debian.tar.xz"]


def test_tampered_file_is_named_with_both_digests(tmp_path: Path) -> None:
    path = _craft(tmp_path, {"demo_1.0.orig.tar.gz": b"upstream", "demo_1.0-1.debian.tar.xz": b"packaging"})
    (tmp_path / "demo_1.0-1.debian.tar.xz").write_bytes(b"packaginG")  # same size, other content
    with pytest.raises(FarmError) as err:
        dsc.check_dsc_files(path)
    assert err.value.code == E.DSC_CHECKSUM
    assert "demo_1.0-1.debian.tar.xz" in err.value.message
    assert _sha(b"packaging") in err.value.message
    assert _sha(b"packaginG") in err.value.message


def test_size_and_missing_files_are_mismatches(tmp_path: Path) -> None:
    path = _craft(tmp_path, {"a.tar.gz": b"aaaa"})
    (tmp_path / "a.tar.gz").write_bytes(b"aaaaa")
    with pytest.raises(FarmError, match=r"size mismatch for a\.tar\.gz"):
        dsc.check_dsc_files(path)
    (tmp_path / "a.tar.gz").unlink()
    with pytest.raises(FarmError, match="missing") as err:
        dsc.check_dsc_files(path)
    assert err.value.code == E.DSC_CHECKSUM


def test_path_in_dsc_is_refused(tmp_path: Path) -> None:
    path = _craft(tmp_path, {"a.tar.gz": b"aaaa"})
    path.write_text(path.read_text().replace(" a.tar.gz", " ../a.tar.gz"))
    with pytest.raises(FarmError, match="bad file name") as err:
        dsc.check_dsc_files(path)
    assert err.value.code == E.DSC_CHECKSUM


SOURCES = """Package: demo
Binary: demo
Version: 1.0-1
Checksums-Sha256:
 {dsc_sha} {dsc_size} demo_1.0-1.dsc
 {orig_sha} 8 demo_1.0.orig.tar.gz

Package: demo-other
Version: 1.0-1
Checksums-Sha256:
 {orig_sha} 9 demo-other_1.0-1.dsc

Package: demo
Version: 0.9-1
Checksums-Sha256:
 {orig_sha} 9 demo_0.9-1.dsc
"""


def test_dsc_checked_against_the_index(tmp_path: Path) -> None:
    path = _craft(tmp_path, {"demo_1.0.orig.tar.gz": b"upstream"})
    data = path.read_bytes()
    text = SOURCES.format(dsc_sha=_sha(data), dsc_size=len(data), orig_sha=_sha(b"upstream"))
    entries = dsc.index_entries(text, "demo", "1.0-1", "Debian bookworm")
    assert entries == [dsc.IndexEntry("Debian bookworm", "demo_1.0-1.dsc", _sha(data), len(data))]
    assert dsc.check_dsc_against_index(path, entries).archive == "Debian bookworm"
    assert dsc.index_entries(text, "demo", "2.0-1", "Debian bookworm") == []

    path.write_bytes(data.replace(b"Format: 3.0", b"Format: 3.1"))  # same size, edited
    with pytest.raises(FarmError) as err:
        dsc.check_dsc_against_index(path, entries)
    assert err.value.code == E.DSC_CHECKSUM
    assert "demo_1.0-1.dsc" in err.value.message
    assert _sha(data) in err.value.message
    assert _sha(path.read_bytes()) in err.value.message


def test_a_dsc_listed_by_several_suites_is_named_after_the_base_suite(tmp_path: Path) -> None:
    """bookworm and bookworm-security both list zlib 1:1.2.13.dfsg-1: the import (and so its commit) must not
    depend on which of those suites a machine has configured, nor on the order apt's lists sort in."""
    data = b"Format: 3.0 (quilt)\nSource: demo\n"
    path = tmp_path / "demo_1.0-1.dsc"
    path.write_bytes(data)
    listed = [
        dsc.IndexEntry("Debian bookworm-security", path.name, _sha(data), len(data)),
        dsc.IndexEntry("Debian bookworm", path.name, _sha(data), len(data)),
        dsc.IndexEntry("Debian bookworm-updates", path.name, _sha(data), len(data)),
        dsc.IndexEntry("Debian Backports bookworm-backports", path.name, _sha(data), len(data)),
    ]
    for entries in (listed, listed[::-1]):
        assert dsc.check_dsc_against_index(path, entries).archive == "Debian bookworm"
    assert dsc.check_dsc_against_index(path, listed[:1]).archive == "Debian bookworm-security"
    backports_too = [listed[3], listed[0]]  # a machine with backports and security, not the base suite's lists
    assert dsc.check_dsc_against_index(path, backports_too).archive == "Debian bookworm-security"

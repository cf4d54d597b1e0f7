"""Deterministic packing of output trees, and unpacking that cannot write or point outside its target."""

from __future__ import annotations

import io
import os
import socket
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from farm.errors import E, FarmError
from farm.pack import check_tree_entry, pack_dir, safe_extract

pytestmark = pytest.mark.unit

MTIME = 1_700_000_000

# rel path -> (content, executable); directories are implied, plus one empty directory and an internal link
FILES: dict[str, tuple[bytes, bool]] = {
    "bin/hello": (b"#!/bin/sh\necho hello\n", True),
    "lib/libhello.a": (b"\x7fELF not really", False),
    "share/doc/README": (b"read me\n", False),
    "share/doc/a-b": (b"sorts before a/ by byte order\n", False),
    "share/doc/a/z": (b"nested\n", False),
    "top.txt": (b"top\n", False),
}
EXPECTED_NAMES = [
    "bin",
    "bin/hello",
    "empty",
    "lib",
    "lib/libhello.a",
    "lib/link-to-hello",
    "share",
    "share/doc",
    "share/doc/README",
    "share/doc/a",
    "share/doc/a-b",
    "share/doc/a/z",
    "top.txt",
]


def make_tree(root: Path, *, reverse: bool = False, umask: int = 0o022, mtime: int | None = None) -> Path:
    old = os.umask(umask)
    try:
        root.mkdir(parents=True)
        items = sorted(FILES.items(), reverse=reverse)
        for rel, (data, executable) in items:
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            if executable:
                path.chmod(path.stat().st_mode | 0o111)
        (root / "empty").mkdir()
        (root / "lib" / "link-to-hello").symlink_to("../bin/hello")
    finally:
        os.umask(old)
    if mtime is not None:
        for p in [root, *root.rglob("*")]:
            os.utime(p, (mtime, mtime), follow_symlinks=False)
    return root


def pack_error(src: Path, tmp_path: Path) -> FarmError:
    with pytest.raises(FarmError) as info:
        pack_dir(src, tmp_path / "refused.tar", MTIME)
    assert info.value.code == E.BUILD_OUTPUT
    assert info.value.hint
    return info.value


def members(tar_path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(tar_path) as tar:
        return tar.getmembers()


# -- determinism -----------------------------------------------------------------------------------------------
def test_same_tree_packs_to_identical_bytes(tmp_path: Path) -> None:
    a = make_tree(tmp_path / "a", umask=0o022, mtime=1)
    b = make_tree(tmp_path / "b", reverse=True, umask=0o077, mtime=2_000_000_000)
    assert (a / "top.txt").stat().st_mode != (b / "top.txt").stat().st_mode  # really different on disk
    pack_dir(a, tmp_path / "a.tar", MTIME)
    pack_dir(b, tmp_path / "b.tar", MTIME)
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()


def test_packing_twice_gives_identical_bytes(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    pack_dir(src, tmp_path / "1.tar", MTIME)
    os.utime(src / "top.txt", (5, 5))
    pack_dir(src, tmp_path / "2.tar", MTIME)
    assert (tmp_path / "1.tar").read_bytes() == (tmp_path / "2.tar").read_bytes()


def test_the_mtime_argument_is_what_is_recorded(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    pack_dir(src, tmp_path / "1.tar", MTIME)
    pack_dir(src, tmp_path / "2.tar", MTIME + 1)
    assert (tmp_path / "1.tar").read_bytes() != (tmp_path / "2.tar").read_bytes()
    assert {m.mtime for m in members(tmp_path / "2.tar")} == {MTIME + 1}


def test_content_changes_change_the_bytes(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    pack_dir(src, tmp_path / "1.tar", MTIME)
    (src / "top.txt").write_bytes(b"TOP\n")
    pack_dir(src, tmp_path / "2.tar", MTIME)
    assert (tmp_path / "1.tar").read_bytes() != (tmp_path / "2.tar").read_bytes()


def test_members_are_sorted_and_normalised(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", umask=0o077)
    pack_dir(src, tmp_path / "out.tar", MTIME)
    found = members(tmp_path / "out.tar")
    assert [m.name for m in found] == EXPECTED_NAMES
    for m in found:
        assert (m.uid, m.gid, m.uname, m.gname) == (0, 0, "", "")
        assert m.mtime == MTIME
        if m.isdir():
            assert m.mode == 0o755, m.name
        elif m.issym():
            assert m.mode == 0o777
        else:
            assert m.isfile()
            assert m.mode == (0o755 if FILES[m.name][1] else 0o644), m.name
    link = next(m for m in found if m.name == "lib/link-to-hello")
    assert link.issym()
    assert link.linkname == "../bin/hello"


def test_packed_file_contents(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    pack_dir(src, tmp_path / "out.tar", MTIME)
    with tarfile.open(tmp_path / "out.tar") as tar:
        for rel, (data, _) in FILES.items():
            fh = tar.extractfile(rel)
            assert fh is not None
            assert fh.read() == data


def test_group_writable_and_odd_modes_are_normalised(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    (src / "f").chmod(0o666)
    (src / "x").write_bytes(b"x")
    (src / "x").chmod(0o710)  # any execute bit makes it 0755
    (src / "d").mkdir()
    (src / "d").chmod(0o700)
    pack_dir(src, tmp_path / "out.tar", MTIME)
    assert {m.name: m.mode for m in members(tmp_path / "out.tar")} == {"d": 0o755, "f": 0o644, "x": 0o755}


def test_empty_directory_packs_to_an_empty_archive(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    pack_dir(tmp_path / "src", tmp_path / "out.tar", MTIME)
    assert members(tmp_path / "out.tar") == []


# -- refusals when packing -------------------------------------------------------------------------------------
@pytest.mark.parametrize("bit", [stat.S_ISUID, stat.S_ISGID])
def test_refuses_setuid_and_setgid_files(tmp_path: Path, bit: int) -> None:
    src = make_tree(tmp_path / "src")
    (src / "bin" / "hello").chmod(0o755 | bit)
    err = pack_error(src, tmp_path)
    assert "'bin/hello'" in err.message
    assert "setuid or setgid" in err.message


@pytest.mark.parametrize(
    ("link", "target"),
    [
        ("abs", "/etc/passwd"),
        ("up", ".."),
        ("up-file", "../outside"),
        ("share/doc/deep", "../../../outside"),
        ("sneaky", "bin/../../outside"),
    ],
)
def test_refuses_symlinks_leaving_the_tree(tmp_path: Path, link: str, target: str) -> None:
    src = make_tree(tmp_path / "src")
    (src / link).symlink_to(target)
    err = pack_error(src, tmp_path)
    assert f"'{link}'" in err.message
    assert "outside" in err.message


def test_refuses_a_symlink_that_escapes_through_another_symlink(tmp_path: Path) -> None:
    """``b -> a/..`` looks inside when read as text, but ``a -> .`` makes it the tree's parent."""
    src = make_tree(tmp_path / "src")
    (src / "a").symlink_to(".")
    (src / "b").symlink_to("a/..")
    assert (src / "b").resolve() == tmp_path  # really outside
    err = pack_error(src, tmp_path)
    assert "'b'" in err.message


def test_allows_links_that_stay_inside(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    (src / "share" / "doc" / "up").symlink_to("../../top.txt")
    (src / "self").symlink_to(".")
    (src / "dangling").symlink_to("not/there/yet")
    pack_dir(src, tmp_path / "out.tar", MTIME)
    links = {m.name: m.linkname for m in members(tmp_path / "out.tar") if m.issym()}
    assert links["share/doc/up"] == "../../top.txt"
    assert links["self"] == "."
    assert links["dangling"] == "not/there/yet"


def test_refuses_a_fifo(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    os.mkfifo(src / "share" / "pipe")
    err = pack_error(src, tmp_path)
    assert "'share/pipe'" in err.message
    assert "FIFO" in err.message


def test_refuses_a_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_tree(tmp_path / "src")
    monkeypatch.chdir(src)  # a relative name keeps the socket path short
    with socket.socket(socket.AF_UNIX) as s:
        s.bind("sock")
        err = pack_error(src, tmp_path)
    assert "'sock'" in err.message


def test_check_tree_entry_accepts_regular_entries(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    for rel in ("top.txt", "bin", "lib/link-to-hello"):
        check_tree_entry(src, src / rel, rel)  # does not raise
    os.mkfifo(src / "fifo")
    with pytest.raises(FarmError, match="FIFO"):
        check_tree_entry(src, src / "fifo", "fifo")


# -- safe_extract ----------------------------------------------------------------------------------------------
def tar_of(*entries: tarfile.TarInfo | tuple[str, bytes]) -> tarfile.TarFile:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tar.addfile(entry)
            else:
                name, data = entry
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return tarfile.open(fileobj=buf)


def special(name: str, type_: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = linkname
    info.mode = 0o777 if type_ == tarfile.SYMTYPE else 0o644
    return info


ExtractError = Callable[[tarfile.TarFile], FarmError]


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    d = tmp_path / "sandbox" / "dest"
    d.mkdir(parents=True)
    return d


@pytest.fixture
def extract_error(dest: Path) -> ExtractError:
    def _extract(tar: tarfile.TarFile) -> FarmError:
        with tar, pytest.raises(FarmError) as info:
            safe_extract(tar, dest, "dependency file")
        assert info.value.code == E.BUILD_OUTPUT
        assert info.value.message.startswith("dependency file '")
        # nothing escaped: the only thing next to dest is dest
        assert sorted(p.name for p in dest.parent.iterdir()) == ["dest"]
        return info.value

    return _extract


def test_extract_round_trip(tmp_path: Path, dest: Path) -> None:
    src = make_tree(tmp_path / "src")
    pack_dir(src, tmp_path / "out.tar", MTIME)
    with tarfile.open(tmp_path / "out.tar") as tar:
        safe_extract(tar, dest)
    for rel, (data, executable) in FILES.items():
        assert (dest / rel).read_bytes() == data
        assert os.access(dest / rel, os.X_OK) == executable
    assert (dest / "empty").is_dir()
    assert os.readlink(dest / "lib" / "link-to-hello") == "../bin/hello"
    assert (dest / "lib" / "link-to-hello").read_bytes() == FILES["bin/hello"][0]


@pytest.mark.parametrize("name", ["/etc/evil", "../evil", "a/../../evil", "a/../b", ".."])
def test_extract_refuses_names_outside(extract_error: ExtractError, dest: Path, name: str) -> None:
    err = extract_error(tar_of(("ok", b"fine"), (name, b"evil")))
    assert f"'{name}'" in err.message
    assert "escapes" in err.message
    assert not (dest / "ok").exists()  # refused before anything was written


@pytest.mark.parametrize("target", ["/etc/passwd", "..", "../evil", "x/../../evil", "a/b/../../../evil"])
def test_extract_refuses_symlinks_outside(extract_error: ExtractError, target: str) -> None:
    err = extract_error(tar_of(special("link", tarfile.SYMTYPE, target)))
    assert "symlink pointing outside" in err.message


def test_extract_allows_a_nested_symlink_that_stays_inside(dest: Path) -> None:
    with tar_of(("top", b"t"), special("a/b/link", tarfile.SYMTYPE, "../../top")) as tar:
        safe_extract(tar, dest)
    assert (dest / "a" / "b" / "link").read_bytes() == b"t"


def test_extract_refuses_a_symlink_chain_that_escapes(extract_error: ExtractError) -> None:
    """``a -> .`` then ``b -> a/..`` (the parent of dest), then a file written through ``b``."""
    extract_error(
        tar_of(
            special("a", tarfile.SYMTYPE, "."),
            special("b", tarfile.SYMTYPE, "a/.."),
            ("b/pwned", b"outside"),
        )
    )


def test_extract_refuses_writing_through_a_symlink_to_outside(extract_error: ExtractError, dest: Path) -> None:
    """A link to an absolute path is refused before any member is written through it."""
    extract_error(tar_of(special("link", tarfile.SYMTYPE, str(dest.parent)), ("link/pwned", b"x")))


@pytest.mark.parametrize("target", ["/etc/passwd", "../evil", "a/../../evil"])
def test_extract_refuses_hard_links_outside(extract_error: ExtractError, target: str) -> None:
    err = extract_error(tar_of(special("hard", tarfile.LNKTYPE, target)))
    assert "hard link" in err.message


@pytest.mark.parametrize("type_", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_extract_refuses_devices_and_fifos(extract_error: ExtractError, type_: bytes) -> None:
    err = extract_error(tar_of(("ok", b"fine"), special("dev/node", type_)))
    assert "'dev/node'" in err.message
    assert "device node or FIFO" in err.message


def test_extract_strips_setuid_and_setgid(dest: Path) -> None:
    info = tarfile.TarInfo("suid")
    info.size = 1
    info.mode = 0o6755
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        t.addfile(info, io.BytesIO(b"x"))
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        safe_extract(tar, dest)
    assert stat.S_IMODE((dest / "suid").stat().st_mode) == 0o755


def test_extract_hard_link_inside(dest: Path) -> None:
    with tar_of(("file", b"data"), special("hard", tarfile.LNKTYPE, "file")) as tar:
        safe_extract(tar, dest)
    assert (dest / "hard").read_bytes() == b"data"
    assert (dest / "hard").stat().st_ino == (dest / "file").stat().st_ino

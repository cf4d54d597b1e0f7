"""Deterministic packing of build outputs, and safe unpacking of trees.

A packed directory is a tar with entries in sorted order, mtimes fixed to SOURCE_DATE_EPOCH, owner 0:0 with
empty names, and modes normalised to 0644/0755, so two builds with the same inputs give identical bytes
wherever they ran. Outputs that could harm whoever unpacks them (setuid/setgid bits, device nodes, symlinks
leaving the tree) are refused. Packing and copying hash what they write, so the store, given that digest, reads
each output once.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from farm.errors import E, FarmError


def _refuse(path: str, why: str, what: str = "output") -> FarmError:
    return FarmError(
        E.BUILD_OUTPUT,
        f"{what} '{path}' {why}",
        hint="fix the build so the declared outputs contain only regular files, directories and internal links",
    )


def _normalise(info: tarfile.TarInfo, rel: str, mtime: int) -> tarfile.TarInfo:
    info.name = rel
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = mtime
    if info.isdir() or (info.isfile() and info.mode & 0o111):
        info.mode = 0o755
    elif info.issym():
        info.mode = 0o777
    else:
        info.mode = 0o644
    return info


def check_tree_entry(root: Path, path: Path, rel: str) -> None:
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(path)
        resolved = os.path.normpath(os.path.join(os.path.dirname(rel), target))
        if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
            raise _refuse(rel, f"is a symlink pointing outside the output tree ({target})")
        # Read as text the target may stay inside yet leave through another link (a -> ., b -> a/..).
        real, top = os.path.realpath(path), os.path.realpath(root)
        if real != top and not real.startswith(top.rstrip("/") + "/"):
            raise _refuse(rel, f"is a symlink pointing outside the output tree ({target})")
        return
    if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
        raise _refuse(rel, "has the setuid or setgid bit")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise _refuse(rel, "is a device node, FIFO or socket")


class HashingWriter:
    """A file opened for writing that hashes (sha256) and counts every byte written through it."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.fh.write(data)

    def tell(self) -> int:
        return self.size

    def read(self, size: int = -1, /) -> bytes:
        raise io.UnsupportedOperation("write-only")

    def seek(self, pos: int, /) -> int:
        raise io.UnsupportedOperation("a hashed stream is written in order")

    def close(self) -> None:
        """The file itself is closed by whoever opened it."""


COPY_CHUNK = 1 << 20


def copy_hashed(src: Path, dest: Path) -> str:
    """Copy the file ``src`` to ``dest`` (bytes and mode, like shutil.copyfile + copymode); the bytes' sha256."""
    with src.open("rb") as fin, dest.open("wb") as fout:
        out = HashingWriter(fout)
        while chunk := fin.read(COPY_CHUNK):
            out.write(chunk)
    os.chmod(dest, stat.S_IMODE(src.stat().st_mode))
    return out.hash.hexdigest()


def pack_dir(src: Path, dest: Path, mtime: int) -> str:
    """Pack ``src`` (its contents, relative names) into the tar file ``dest``; the tar's sha256."""
    entries: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(dirnames + filenames):
            path = base / name
            entries.append((path.relative_to(src).as_posix(), path))
    entries.sort(key=lambda e: e[0])
    with dest.open("wb") as fh:
        out = HashingWriter(fh)
        with tarfile.TarFile(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for rel, path in entries:
                check_tree_entry(src, path, rel)
                info = _normalise(tar.gettarinfo(str(path), arcname=rel), rel, mtime)
                if info.isfile():
                    with path.open("rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
    return out.hash.hexdigest()


def safe_extract(tar: tarfile.TarFile, dest: Path, what: str = "archive entry") -> None:
    """Extract refusing absolute paths, '..', links out of the tree, devices and setuid bits."""
    members = tar.getmembers()
    for m in members:
        p = PurePosixPath(m.name)
        if p.is_absolute() or ".." in p.parts:
            raise _refuse(m.name, "escapes the tree", what)
        if m.issym():
            resolved = os.path.normpath(os.path.join(os.path.dirname(m.name), m.linkname))
            if m.linkname.startswith("/") or resolved == ".." or resolved.startswith("../"):
                raise _refuse(m.name, f"is a symlink pointing outside the tree ({m.linkname})", what)
        elif m.islnk():
            lp = PurePosixPath(m.linkname)
            if lp.is_absolute() or ".." in lp.parts:
                raise _refuse(m.name, "is a hard link outside the tree", what)
        elif not (m.isfile() or m.isdir()):
            raise _refuse(m.name, "is a device node or FIFO", what)
        m.mode &= 0o777
    # The checks above read link targets as text, which a chain of links can defeat (a -> ., b -> a/..,
    # b/file). So each member is also resolved against what is already on disk, one at a time, before it is
    # written. (Python's own filter="data" does this too, but Debian 12's Python 3.11.2 predates it.)
    top = os.path.realpath(dest)

    def inside(path: str) -> bool:
        real = os.path.realpath(path)
        return real == top or real.startswith(top.rstrip("/") + "/")

    trusted = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
    for m in members:
        target = os.path.join(dest, m.name)
        if not inside(target):
            raise _refuse(m.name, "escapes the tree through a link", what)
        if m.issym() and not inside(os.path.join(os.path.dirname(target), m.linkname)):
            raise _refuse(m.name, f"is a symlink pointing outside the tree through a link ({m.linkname})", what)
        if m.islnk() and not inside(os.path.join(dest, m.linkname)):
            raise _refuse(m.name, "is a hard link outside the tree through a link", what)
        tar.extract(m, dest, **trusted)  # type: ignore[arg-type]  # every member was checked above

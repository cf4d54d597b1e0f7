"""The UKI's initrd, cached by the digest of what dracut reads from the image root.

dracut (:func:`farm.image.uki.build_initrd`) copies into the initrd a set of files from the root (binaries, their
libraries, units, rules, the kernel modules it selects), chosen by its configuration and modules and, for globs and
``inst -o`` look-ups, by which names exist in the directories it copies from. Two keys capture that:

* the **plan**: dracut's own code and configuration in the root (``usr/lib/dracut``, ``etc/dracut.conf*``), the
  kernel (its image, every module's name and size, depmod's indexes), the code that runs dracut (its functions in
  ``uki.py``), the kernel version and ``SOURCE_DATE_EPOCH``;
* the **content**: the plan, then every root file the last initrd of that plan held (by content, symlinks by
  target) and the names in each directory those files are in.

A plan entry remembers that list; an initrd entry maps the content key to the initrd's blob. A content key built
from the list of an earlier initrd of the same plan is sound: if every file it copied and every name beside them is
the same, dracut makes the same initrd. ``etc/machine-id`` is left out: when not host-only, dracut writes an empty
one instead of copying the root's (checked: the initrd's must be empty for the entry to be stored).
"""

from __future__ import annotations

import gzip
import hashlib
import inspect
import logging
import lzma
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from farm.image import uki
from farm.image.cache import ImageCache
from farm.run import run

log = logging.getLogger(__name__)

VERSION = 1  # bump when the keys below change meaning
PLAN_PATHS = ("usr/lib/dracut", "etc/dracut.conf", "etc/dracut.conf.d", "usr/bin/dracut", "usr/bin/lsinitrd")
GENERATED = frozenset({"etc/machine-id"})  # written empty by dracut (not host-only), never copied from the root
CPIO_MAGIC = (b"070701", b"070702")
TRAILER = "TRAILER!!!"


def _entry(root: Path, rel: str) -> bytes:
    """One root path as key material: its kind and content (regular files by sha256, symlinks by target)."""
    path = root / rel
    parent = os.path.realpath(path.parent)
    if parent != str(root) and not parent.startswith(str(root) + os.sep):
        return f"{rel}\0outside\n".encode()  # an absolute symlink on the way: not the root's file
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return f"{rel}\0missing\n".encode()
    if stat.S_ISLNK(st.st_mode):
        return f"{rel}\0link\0{os.readlink(path)}\n".encode()
    if stat.S_ISREG(st.st_mode):
        h = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        return f"{rel}\0file\0{st.st_mode & 0o7777:o}\0{h.hexdigest()}\n".encode()
    return f"{rel}\0{stat.S_IFMT(st.st_mode):o}\0{st.st_mode & 0o7777:o}\n".encode()


def _walk(root: Path, rel: str) -> Iterator[str]:
    """``rel`` and, if it is a directory (not a symlink), everything below it, sorted."""
    yield rel
    path = root / rel
    if path.is_dir() and not path.is_symlink():
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            base = os.path.relpath(dirpath, root)
            for name in sorted(dirnames + filenames):
                yield f"{base}/{name}"


def plan_key(root: Path, *, kver: str, sde: int) -> str:
    h = hashlib.sha256(f"mangos-initrd-plan\0{VERSION}\0{kver}\0{sde}\n".encode())
    for runs_dracut in (uki.build_initrd, uki.dracut_script):
        h.update(inspect.getsource(runs_dracut).encode())
    for top in PLAN_PATHS:
        for rel in _walk(root, top):
            h.update(_entry(root, rel))
    h.update(_entry(root, f"boot/vmlinuz-{kver}"))
    modules = root / "usr/lib/modules" / kver
    if not modules.is_dir():
        modules = root / "lib/modules" / kver
    for dirpath, dirnames, filenames in os.walk(modules):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if Path(dirpath) == modules:  # depmod's indexes and the builtin lists: by content
                h.update(_entry(root, rel))
            else:
                h.update(f"{rel}\0{path.lstat().st_size}\n".encode())
    return h.hexdigest()


def content_key(root: Path, plan: str, files: list[str]) -> str:
    h = hashlib.sha256(f"mangos-initrd-content\0{plan}\n".encode())
    for rel in sorted(set(files) - GENERATED):
        h.update(_entry(root, rel))
    for rel in sorted({os.path.dirname(f) for f in files}):
        directory = root / rel
        names = sorted(os.listdir(directory)) if directory.is_dir() else []
        h.update(f"{rel}\0dir\0{'/'.join(names)}\n".encode())
    return h.hexdigest()


def _decompress(data: bytes) -> bytes:
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(data)
    if data[:4] == b"\x28\xb5\x2f\xfd":
        return run(["zstd", "-dc"], input=data).stdout
    raise ValueError(f"unknown initrd compression (magic {data[:6].hex()})")


def cpio_entries(data: bytes) -> Iterator[tuple[str, int, int]]:
    """(name, mode, size) of each member of a newc initrd: cpio archives, each maybe compressed, one after another."""
    off = 0
    while off < len(data):
        if data[off : off + 6] not in CPIO_MAGIC:
            if data[off] == 0:
                off += 1
                continue
            yield from cpio_entries(_decompress(data[off:]))
            return
        fields = [int(data[off + 6 + 8 * i : off + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = data[off + 110 : off + 110 + namesize - 1].decode()
        off = (off + 110 + namesize + 3) & ~3
        if name != TRAILER:
            yield name, mode, size
        off = (off + size + 3) & ~3


def initrd_files(initrd: Path) -> list[str]:
    """The initrd's members other than directories (paths relative to the root they were copied from)."""
    files, generated_ok = [], True
    for name, mode, size in cpio_entries(initrd.read_bytes()):
        rel = os.path.normpath(name).lstrip("/")
        if rel in GENERATED and (not stat.S_ISREG(mode) or size):
            generated_ok = False
        if rel != "." and not stat.S_ISDIR(mode):
            files.append(rel)
    if not generated_ok:
        raise ValueError(f"the initrd holds a non-empty {sorted(GENERATED)}: dracut copied it from the root")
    return sorted(files)


def cached_initrd(root: Path, *, kver: str, sde: int, workdir: Path, cache: ImageCache) -> tuple[Path, str, bool]:
    """The initrd for ``root`` at ``workdir/initrd/initrd.img``: (path, content key, whether it was cached).

    An initrd that cannot be listed is used, not stored (and the reason logged); the key is then empty.
    """
    plan = plan_key(root, kver=kver, sde=sde)
    dest = workdir / "initrd" / "initrd.img"
    known = cache.get("initrd-plan", plan)
    if known and isinstance(known.get("files"), list):
        key = content_key(root, plan, [str(f) for f in known["files"]])
        hit = cache.get("initrd", key)
        if hit and cache.get_file(hit.get("blob"), dest):
            log.info("initrd cached: %s", key[:16])
            return dest, key, True
    built = uki.build_initrd(root, kver=kver, sde=sde, workdir=workdir)
    try:
        files = initrd_files(built)
    except (ValueError, OSError) as exc:
        log.warning("initrd not cached: %s", exc)
        return built, "", False
    key = content_key(root, plan, files)
    cache.put("initrd", key, {"blob": cache.put_file(built), "files": len(files)})
    cache.put("initrd-plan", plan, {"files": files})
    return built, key, False

"""The EFI system partition as a vfat image file, made without mounting (this host has no vfat driver).

``mkfs.vfat --invariant -i VOLID`` fixes the volume id and every time-based field; ``mmd``/``mcopy -m`` add the
tree in sorted order with ``SOURCE_DATE_EPOCH`` set (mtools honours it for the directory entries it creates) and
each file's mtime clamped to it, so the same tree gives the same bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

from farm.run import require_tool, run

MIB = 1024 * 1024
MIN_SIZE = 64 * MIB


def size_for(tree: Path) -> int:
    """Room for the tree plus a second UKI (an update writes the new one before removing the old)."""
    used = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())
    return max(MIN_SIZE, -(-(used * 2 + 16 * MIB) // MIB) * MIB)


def mkfs_argv(out: Path, size: int, volume_id: str) -> list[str]:
    return ["mkfs.vfat", "-C", "--invariant", "-i", volume_id, "-n", "ESP", str(out), str(size // 1024)]


def copy_plan(tree: Path) -> tuple[list[str], list[tuple[Path, str]]]:
    """Directories to create (parents first) and files to copy, both sorted: the order is part of the bytes."""
    dirs, files = [], []
    for path in sorted(tree.rglob("*"), key=lambda p: p.relative_to(tree).parts):
        rel = "::/" + path.relative_to(tree).as_posix()
        if path.is_dir():
            dirs.append(rel)
        else:
            files.append((path, rel))
    return dirs, files


def make(tree: Path, out: Path, *, sde: int, volume_id: str = "4d414e47") -> Path:
    require_tool("mkfs.vfat")
    require_tool("mcopy")
    out.unlink(missing_ok=True)
    run(mkfs_argv(out, size_for(tree), volume_id))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "SOURCE_DATE_EPOCH": str(sde),
        "TZ": "UTC",
        "MTOOLS_SKIP_CHECK": "1",
    }
    dirs, files = copy_plan(tree)
    if dirs:
        run(["mmd", "-i", str(out), *dirs], env=env)
    for src, dest in files:
        os.utime(src, (sde, sde))
        run(["mcopy", "-m", "-i", str(out), str(src), dest], env=env)
    return out

"""The read-only root (and extension) filesystem: erofs, made reproducibly from a directory tree.

``mkfs.erofs -T EPOCH -U UUID --all-root`` fixes every timestamp, the filesystem UUID and ownership, so the same
tree gives the same bytes. The image is padded to a whole number of 4 KiB blocks, as dm-verity requires.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

from farm.run import require_tool, run

BLOCK = 4096


def fs_uuid(seed: str) -> str:
    return str(uuid.UUID(bytes=hashlib.sha256(b"mangos-erofs-uuid\0" + seed.encode()).digest()[:16], version=4))


def mkfs_argv(tree: Path, out: Path, *, sde: int, uuid_: str, compress: str = "lz4hc") -> list[str]:
    argv = ["mkfs.erofs", f"-T{sde}", f"-U{uuid_}", "--all-root", "-x-1"]
    if compress:
        argv.append(f"-z{compress}")
    return [*argv, str(out), str(tree)]


def make(tree: Path, out: Path, *, sde: int, seed: str, compress: str = "lz4hc") -> Path:
    """Make ``out`` from ``tree``; xattrs are dropped (-x-1) so host labels never leak into the image."""
    require_tool("mkfs.erofs")
    out.unlink(missing_ok=True)
    run(mkfs_argv(tree, out, sde=sde, uuid_=fs_uuid(seed), compress=compress))
    pad_to_block(out)
    return out


def pad_to_block(path: Path, block: int = BLOCK) -> None:
    size = path.stat().st_size
    if size % block:
        with path.open("r+b") as fh:
            fh.truncate(size + block - size % block)

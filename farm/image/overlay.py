"""A writable overlay on a read-only tree, mounted for the length of a ``with`` block, and stale mounts cleared.

Invariant: the lower tree is never written. Every write of the block (dpkg, the payload, the manifest) lands in
the upper layer, a directory of the build's own work dir; when the block ends (normally, by an error or by a
signal that unwinds it) the overlay is unmounted. A build killed outright leaves its mount behind:
:func:`unmount_under` clears every mount under a work dir before the next build deletes that dir, so a later
``rmtree`` never walks into a mounted tree (nor into /proc or /sys bind mounts that a killed mmdebstrap left).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from farm.run import require_tool, run

log = logging.getLogger(__name__)

MOUNTINFO = Path("/proc/self/mountinfo")


def mount_argv(*, lower: Path, upper: Path, work: Path, merged: Path) -> list[str]:
    """``mount -t overlay`` of ``upper`` over ``lower`` at ``merged`` (``work``: overlayfs's scratch dir).

    ``index=off,xino=off``: the merged tree reports the lower tree's inode numbers, so hard links within it stay
    hard links to whoever reads it (mkfs.erofs keeps them). ``redirect_dir=on``: a directory of the lower tree can
    be renamed (the payload moves /var to /usr/share/factory/var) without copying it up."""
    options = f"lowerdir={lower},upperdir={upper},workdir={work},index=off,xino=off,redirect_dir=on"
    return ["mount", "-t", "overlay", "overlay", "-o", options, str(merged)]


def umount_argv(target: Path, *, lazy: bool = False) -> list[str]:
    return ["umount", *(["--lazy"] if lazy else []), str(target)]


def _unescape(field: str) -> str:
    """A mountinfo path field: the kernel writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def mounts_under(root: Path, mountinfo: str) -> list[Path]:
    """The mount points at or below ``root`` in a mountinfo text, the deepest first (the order to unmount in)."""
    base = os.path.normpath(root)
    found = []
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if len(fields) > 4:
            point = _unescape(fields[4])
            if point == base or point.startswith(base.rstrip("/") + "/"):
                found.append(Path(point))
    return sorted(set(found), key=lambda p: (len(p.parts), str(p)), reverse=True)


def unmount_under(root: Path) -> list[Path]:
    """Unmount everything mounted at or below ``root`` (lazily: a mount still busy goes when its last user does);
    returns what was unmounted."""
    if not MOUNTINFO.exists():
        return []
    stale = mounts_under(root.absolute(), MOUNTINFO.read_text())
    for point in stale:
        log.warning("unmounting %s (left by an earlier build that did not finish)", point)
        run(umount_argv(point, lazy=True), check=False)
    return stale


@contextmanager
def overlay(lower: Path, layer: Path) -> Iterator[Path]:
    """``layer/merged``: ``lower`` with ``layer/upper`` over it, writable, until the block ends."""
    require_tool("mount")
    merged, upper, work = layer / "merged", layer / "upper", layer / "work"
    for d in (merged, upper, work):
        d.mkdir(parents=True, exist_ok=True)
    run(mount_argv(lower=lower, upper=upper, work=work, merged=merged))
    try:
        yield merged
    finally:
        done = run(umount_argv(merged), check=False)
        if done.returncode != 0:  # still busy (a process the block started outlives it): detach it now
            run(umount_argv(merged, lazy=True), check=False)

"""Builds without root: a user namespace that maps the worker user's subordinate ids.

A worker that is not root runs a Debian build in a user namespace whose ids are mapped like ``mmdebstrap
--mode=unshare`` and rootless podman map them: inner root is the worker's own uid, inner ids 1..65536 are the
first ids of the user's subordinate range (``/etc/subuid``, ``/etc/subgid``, set by ``newuidmap``/``newgidmap``
from the ``uidmap`` package). The build root therefore keeps its real owners (root, ``_apt``, the build user 1000)
and the build user stays uid 1000 inside, a different uid from the worker's outside; inner root may mount the
overlay, /proc and tmpfs of the build's own namespaces and nothing else.

A user with no subordinate range is refused Debian work (:func:`require_id_map`): with a single-uid map the build
user would be inner root, i.e. the worker's own uid with every capability over the build's namespaces (a chroot
is no boundary for that), and ``_apt``, ``nobody`` and the build user could not own files, so the build root would
not be the pinned one. Files of a rootless build are owned by subordinate ids on the host: the worker gets them
back with :func:`reclaim_argv`, in the same mapping.
"""

from __future__ import annotations

import functools
import logging
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from farm.errors import E, FarmError

log = logging.getLogger(__name__)

SUBUID = Path("/etc/subuid")
SUBGID = Path("/etc/subgid")
INNER_IDS = 65536  # inner ids 1..65536: every id a Debian root uses, nobody (65534) included
SUGGESTED_RANGE = "100000-165535"


@dataclass(frozen=True)
class IdMap:
    """The worker's ids (inner root) and the start of its subordinate ranges (inner 1 .. ``count``)."""

    uid: int
    gid: int
    subuid: int
    subgid: int
    count: int = INNER_IDS

    def unshare_args(self) -> list[str]:
        """util-linux ``unshare`` options for this map (it runs newuidmap/newgidmap)."""
        return [
            "--map-user=0",
            "--map-group=0",
            f"--map-users={self.subuid},1,{self.count}",
            f"--map-groups={self.subgid},1,{self.count}",
        ]

    def outer_uid(self, inner: int) -> int:
        """The host uid of ``inner`` (a file's owner as the host sees it)."""
        return self.uid if inner == 0 else self.subuid + inner - 1

    @property
    def tag(self) -> str:
        """Names what depends on the map (an environment unpacked with these owners)."""
        return f"u{self.uid}-{self.subuid}-{self.count}"


def parse_subids(text: str, user: str, uid: int, need: int = INNER_IDS) -> int | None:
    """The first id of the first range in an /etc/subuid-style ``text`` for ``user`` (by name or uid) with at
    least ``need`` ids; None when there is none."""
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) != 3 or parts[0] not in (user, str(uid)):
            continue
        try:
            start, count = int(parts[1]), int(parts[2])
        except ValueError:
            continue
        if count >= need and start > 0:
            return start
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def id_map(uid: int | None = None, subuid: Path = SUBUID, subgid: Path = SUBGID) -> IdMap | None:
    """The map for the user ``uid`` (default: this process's), or None when it has no usable subordinate ranges."""
    uid = os.geteuid() if uid is None else uid
    try:
        entry = pwd.getpwuid(uid)
        name, gid = entry.pw_name, entry.pw_gid
    except KeyError:
        name, gid = str(uid), os.getegid()
    first_uid = parse_subids(_read(subuid), name, uid)
    first_gid = parse_subids(_read(subgid), name, uid)
    if first_uid is None or first_gid is None:
        return None
    return IdMap(uid, gid, first_uid, first_gid)


def no_subids_error(uid: int | None = None) -> FarmError:
    uid = os.geteuid() if uid is None else uid
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    return FarmError(
        E.WORKER_SUBIDS,
        f"this worker runs as {name} (uid {uid}), which has no subordinate uid/gid range of {INNER_IDS} ids: "
        "Debian builds need one to run without root",
        hint=f"as root: usermod --add-subuids {SUGGESTED_RANGE} --add-subgids {SUGGESTED_RANGE} {name} "
        "(and apt-get install uidmap); or take this worker off Debian work",
    )


def require_id_map() -> IdMap:
    """This (non-root) process's map; the E-WORKER-SUBIDS refusal when its user has no subordinate ranges."""
    found = id_map()
    if found is None:
        raise no_subids_error()
    return found


def wrap(idmap: IdMap, argv: list[str]) -> list[str]:
    """``argv`` as inner root in a fresh user namespace with ``idmap`` (and nothing else unshared)."""
    return ["unshare", *idmap.unshare_args(), "--", *argv]


def reclaim_argv(idmap: IdMap, give_back: list[Path], remove: list[Path]) -> list[str]:
    """Inside the build's mapping: hand ``give_back`` (recursively, never following symlinks) back to inner
    root (the worker) with owner write access, and delete ``remove``. Files there may belong to the build user
    or be mode 000; only the namespace's root may change them."""
    script = 'for p in "$@"; do case "$p" in --) break;; esac; chown -R -h 0:0 -- "$p"; chmod -R u+rwX -- "$p"; done'
    script += '; while [ "$1" != "--" ]; do shift; done; shift; rm -rf -- "$@"'
    existing = [str(p) for p in give_back if p.exists() or p.is_symlink()]
    return wrap(idmap, ["/bin/sh", "-c", script, "reclaim", *existing, "--", *(str(p) for p in remove)])


@functools.cache
def note_root() -> bool:
    """Log once per process that a root worker need not be root (True when this process is root)."""
    if os.geteuid() != 0:
        return False
    log.warning(
        "this worker runs as root; it need not: Debian builds run without root in a user namespace when the "
        "worker's user has a subordinate uid/gid range (usermod --add-subuids %s --add-subgids %s USER)",
        SUGGESTED_RANGE,
        SUGGESTED_RANGE,
    )
    return True

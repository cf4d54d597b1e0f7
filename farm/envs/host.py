"""The host build environment: the machine's own /usr, read-only inside the sandbox.

Its identity is the digest of the installed Debian packages (name, version, architecture) plus the sandbox
profile, so two machines with the same packages compute the same build keys, and installing or upgrading a
package on the host changes every key (and thus rebuilds) rather than silently mixing toolchains. Pinned
mmdebstrap environments replace this for the Debian package set.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm.fsutil import atomic_write
from farm.identity import digest_of
from farm.run import require_tool, run

SANDBOX_PROFILE = "bwrap-host-usr/v1"
DPKG_STATUS = Path("/var/lib/dpkg/status")
DPKG_UPDATES = Path("/var/lib/dpkg/updates")  # dpkg's journal: changes not yet folded into the status file
CACHE_NAME = "host-packages.json"


@dataclass(frozen=True)
class Environment:
    name: str
    digest: str
    description: dict[str, Any]


def installed_packages() -> list[str]:
    require_tool("dpkg-query")
    out = run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev} ${Package} ${Version} ${Architecture}\n"]).text
    pkgs = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "ii":
            pkgs.append(" ".join(parts[1:]))
    return sorted(pkgs)


def dpkg_state(status: Path = DPKG_STATUS, updates: Path = DPKG_UPDATES) -> str | None:
    """The identity of the dpkg database as it stands: the status file's device, inode, size and mtime (dpkg
    replaces the file by a rename on every change). None when it cannot be said: no status file, or journal
    entries pending in ``updates``, which dpkg-query reads but the status file does not yet hold."""
    try:
        st = status.stat()
    except OSError:
        return None
    try:
        with os.scandir(updates) as entries:
            if any(e.name.isdigit() for e in entries):
                return None
    except FileNotFoundError:
        pass  # no journal directory: nothing pending
    except OSError:
        return None
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def cached_packages(cache: Path, state: str | None) -> list[str]:
    """:func:`installed_packages`, kept in ``cache`` for the dpkg ``state`` it was read at (no state: always read).
    A cache for another state, or unreadable, is read again and replaced; it is never trusted over dpkg."""
    if state is not None:
        try:
            kept = json.loads(cache.read_bytes())
            if kept.get("dpkg") == state and isinstance(kept.get("packages"), list):
                return [str(p) for p in kept["packages"]]
        except (OSError, ValueError, AttributeError):
            pass
    packages = installed_packages()
    if state is not None:
        with contextlib.suppress(OSError):  # a read-only home only costs the next command a dpkg-query
            atomic_write(cache, json.dumps({"dpkg": state, "packages": packages}).encode())
    return packages


@functools.cache
def host_environment(cache_dir: Path | None = None) -> Environment:
    """The host environment; with ``cache_dir`` its package list comes from there while the dpkg database is
    unchanged (:func:`dpkg_state`), so planning does not start dpkg-query on every command."""
    packages = installed_packages() if cache_dir is None else cached_packages(cache_dir / CACHE_NAME, dpkg_state())
    description = {"kind": "host", "profile": SANDBOX_PROFILE, "packages": packages}
    return Environment("host", digest_of(description), description)

"""The host build environment: the machine's own /usr, read-only inside the sandbox.

Its identity is the digest of the installed Debian packages (name, version, architecture) plus the sandbox
profile, so two machines with the same packages compute the same build keys, and installing or upgrading a
package on the host changes every key (and thus rebuilds) rather than silently mixing toolchains. Pinned
mmdebstrap environments replace this for the Debian package set.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from farm.identity import digest_of
from farm.run import require_tool, run

SANDBOX_PROFILE = "bwrap-host-usr/v1"


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


@functools.cache
def host_environment() -> Environment:
    packages = installed_packages()
    description = {"kind": "host", "profile": SANDBOX_PROFILE, "packages": packages}
    return Environment("host", digest_of(description), description)

"""The external tools the farm runs, and the Debian package that provides each.

This table is the one place that knows where a tool comes from: :func:`farm.run.require_tool` names the package
in its hint, and a unit test checks that every package named here is in the Makefile's ``APT_PACKAGES`` (so
``make setup`` installs everything the farm may ask for).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

TOOLS: Final = MappingProxyType(
    {
        "bwrap": "bubblewrap",
        "diffoscope": "diffoscope-minimal",
        "disorderfs": "disorderfs",
        "chroot": "coreutils",
        "dpkg-deb": "dpkg",
        "dpkg-query": "dpkg",
        "dpkg-scanpackages": "dpkg-dev",
        "domainname": "hostname",
        "faketime": "faketime",
        "fsck.erofs": "erofs-utils",
        "git": "git",
        "ip": "iproute2",
        "localedef": "locales",  # libc-bin's localedef, with the locale sources it compiles from
        "mcopy": "mtools",
        "mkfs.erofs": "erofs-utils",
        "mkfs.vfat": "dosfstools",
        "mmdebstrap": "mmdebstrap",
        "eatmydata": "eatmydata",
        "mount": "mount",
        "sync": "coreutils",
        "node": "nodejs",
        "nsenter": "util-linux",
        "podman": "podman",
        "podman-compose": "podman-compose",
        "newgidmap": "uidmap",
        "newuidmap": "uidmap",
        "objcopy": "binutils",
        "prometheus": "prometheus",
        "promtool": "prometheus",
        "qemu-system-x86_64": "qemu-system-x86",
        "runc": "runc",
        "sbsign": "sbsigntool",
        "sbverify": "sbsigntool",
        "setarch": "util-linux",
        "sfdisk": "fdisk",
        "swtpm": "swtpm",
        "taskset": "util-linux",
        "umount": "mount",
        "unshare": "util-linux",
        "veritysetup": "cryptsetup-bin",
    }
)
"""Tool (executable name on PATH) -> Debian binary package that installs it."""


class UnknownTool(LookupError):
    """A tool missing from :data:`TOOLS`: a programming error in the farm, not a user's problem."""


def package_for(tool: str) -> str:
    """The Debian package that provides ``tool``; :class:`UnknownTool` when the table does not list it."""
    try:
        return TOOLS[tool]
    except KeyError:
        raise UnknownTool(f"tool {tool!r} is not in farm.tools.TOOLS: add it with its Debian package") from None

"""A variation spec: how a recheck build's environment deliberately differs from the farm's normal one.

A reproducible build gives the same bytes whatever these are; each one that changes the output is a
reproducibility bug. The defaults differ from the normal build in every dimension at once (like
reproducible-builds.org's second build): host build path, hostname, timezone, locale, umask, uid, parallelism,
and a clock shifted by more than a year (libfaketime, inside the sandbox).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from farm.build import sandbox
from farm.run import require_tool, run

log = logging.getLogger(__name__)

FAKETIME = "faketime"


@dataclass(frozen=True)
class Variation:
    hostname: str = "recheck-varied-host"
    uid: int = 1234
    tz: str = "Pacific/Kiritimati"  # UTC+14: the other side of the date line from the normal build's UTC
    locale: str = "C"  # the normal build uses C.UTF-8 (the only other locale a minimal host has)
    umask: int = 0o002
    jobs: int = 2
    clock_shift_days: int = 400
    build_path: str = "recheck/a/much/deeper/build/path"  # under the work directory on the host
    file_order: bool = True  # the source tree seen through disorderfs: directory entries in shuffled order

    @classmethod
    def unvaried(cls) -> Variation:
        """The farm's normal environment (a plain rebuild; only the host build path differs)."""
        return cls(
            hostname=sandbox.HOSTNAME,
            uid=sandbox.BUILD_UID,
            tz="UTC",
            locale="C.UTF-8",
            umask=0o022,
            jobs=1,
            clock_shift_days=0,
            build_path="recheck",
            file_order=False,
        )

    def env(self) -> dict[str, str]:
        """Environment overrides for the sandboxed steps."""
        return {"TZ": self.tz, "LC_ALL": self.locale, "LANG": self.locale, "JOBS": str(self.jobs)}

    def wrap(self, command: list[str]) -> list[str]:
        """The step command, run under a clock shifted forward (``faketime -f +Nd``) when a shift is set."""
        if not self.clock_shift_days:
            return command
        return [FAKETIME, "-f", f"+{self.clock_shift_days}d", *command]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["umask"] = f"{self.umask:04o}"
        return data


def disorderfs_argv(src: Path, mountpoint: Path) -> list[str]:
    """Mount ``src`` at ``mountpoint`` with every directory listing shuffled (pure, unit-tested)."""
    return ["disorderfs", "--shuffle-dirents=yes", "--multi-user=yes", "--quiet", str(src), str(mountpoint)]


@contextmanager
def source_view(src: Path, variation: Variation | None) -> Iterator[Path]:
    """The source directory a build sees: ``src`` itself, or (file-order variation) a disorderfs view of it."""
    if variation is None or not variation.file_order:
        yield src
        return
    require_tool("disorderfs")
    mountpoint = src.with_name(src.name + "-disordered")
    mountpoint.mkdir()
    run(disorderfs_argv(src, mountpoint))
    try:
        yield mountpoint
    finally:
        result = run(["fusermount", "-u", "-z", str(mountpoint)], check=False)
        if result.returncode != 0:
            log.warning("cannot unmount %s: %s", mountpoint, result.stderr.decode(errors="replace").strip())
        else:
            mountpoint.rmdir()

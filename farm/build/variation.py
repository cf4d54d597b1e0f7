"""The variation table: how a recheck build's environment deliberately differs from the farm's normal one.

A reproducible build gives the same bytes whatever these are; each one that changes the output is a
reproducibility bug. :data:`TABLE` (versioned by :data:`VARIATIONS_VERSION`) is the one definition: it gives
:class:`Variation`'s defaults (every dimension varied at once, like reproducible-builds.org's second build),
:meth:`Variation.unvaried` (the farm's normal values) and the README's "Variations" table (:func:`readme_table`).
Only a recheck carries a Variation; a normal build has none, so its sandbox, build key and provenance never depend
on this table. Nothing here changes a pinned environment: the varied locale is compiled into a layer of the varied
build alone (bound over /usr/lib/locale in bubblewrap, written into the build's own overlay in a Debian chroot).

The clock: libfaketime shifts what the build reads as the time (``date``, ``time()``, ``clock_gettime``, and the
times ``touch`` sets, with FAKE_UTIME=1 so that a time set and read back agrees with the shifted clock). The kernel
still stamps files the build writes with the real time, so those are 398 days *behind* the build's clock. The source
is prepared (exported, patched) in the worker outside libfaketime, and a varied build clamps every source mtime to
SOURCE_DATE_EPOCH before its first step (:func:`clamp_mtimes`), so a patched file is never newer than its neighbours
and make's view of what is out of date is the normal build's.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from farm.build import sandbox
from farm.run import require_tool, run

log = logging.getLogger(__name__)

VARIATIONS_VERSION = 2

FAKETIME = "faketime"
HOST_LOCALES = Path("/usr/lib/locale")
I18N = Path("/usr/share/i18n")  # locale sources (package locales) that localedef compiles from
VARIED_BUILD_DIR = "/build/7f3e9c1d5b2a4068e1c3/recheck-varied-and-rather-long-build-path/src"


@dataclass(frozen=True)
class Dimension:
    """One row of the variation table."""

    name: str  # as the README shows it
    field: str  # the Variation field
    normal: Any  # the farm's normal value
    varied: Any  # a recheck's
    reaches: str  # how the varied value reaches a git-recipe build (bubblewrap) and a Debian build (chroot)
    cause: str  # the likely cause diffreport names for a difference this dimension makes
    shown: tuple[str, str] = ("", "")  # how the README shows normal and varied (default: the values)


TABLE: tuple[Dimension, ...] = (
    Dimension(
        "build path",
        "build_dir",
        sandbox.SRC,
        VARIED_BUILD_DIR,
        "the source is bound there and every step starts in it ($PWD, $SRC); in a Debian build "
        "dpkg-buildpackage runs there",
        "paths",
    ),
    Dimension(
        "locale",
        "locale",
        "C.UTF-8",
        "de_CH.UTF-8",
        "LC_ALL and LANG; the locale is compiled with localedef into a layer bound over /usr/lib/locale "
        "(bubblewrap) or into the build's own overlay (Debian), never into the environment",
        "locale",
    ),
    Dimension("time zone", "tz", "UTC", "Pacific/Kiritimati", "TZ (UTC+14, across the date line)", "time zone"),
    Dimension(
        "umask",
        "umask",
        0o022,
        0o002,
        "the umask the steps (and dpkg-buildpackage) start with",
        "umask",
        ("`0022`", "`0002`"),
    ),
    Dimension(
        "uid/gid", "uid", sandbox.BUILD_UID, 1234, "the build's uid and gid (bubblewrap --uid/--gid; setpriv)", "user"
    ),
    Dimension(
        "user name",
        "user",
        "",
        "rechecker",
        "an /etc/passwd and /etc/group entry, $USER and $LOGNAME",
        "user",
        ("none (Debian: `sbuild`)", "`rechecker`"),
    ),
    Dimension(
        "hostname",
        "hostname",
        sandbox.HOSTNAME,
        "recheck-varied-host",
        "the build's own UTS namespace (uname -n, hostname)",
        "hostname",
        (f"`{sandbox.HOSTNAME}` (Debian: `mangos-buildd`)", "`recheck-varied-host`"),
    ),
    Dimension(
        "domain name",
        "domain",
        "",
        "recheck.invalid",
        "set with domainname in the build's UTS namespace before it starts",
        "hostname",
        ("the worker's", "`recheck.invalid`"),
    ),
    Dimension(
        "kernel version",
        "kernel_26",
        False,
        True,
        "setarch --uname-2.6: uname -r reads 2.6.x",
        "kernel",
        ("the worker's", "`2.6.x`"),
    ),
    Dimension(
        "CPUs",
        "cpus",
        0,
        1,
        "taskset to the first of the worker's CPUs: nproc reads 1",
        "cpus",
        ("all the worker's", "`1`"),
    ),
    Dimension("parallel jobs", "jobs", 1, 2, "$JOBS; DEB_BUILD_OPTIONS=parallel=N", "cpus"),
    Dimension(
        "directory order",
        "file_order",
        False,
        True,
        "the source is seen through disorderfs with shuffled directory entries (Debian builds too)",
        "file order",
        ("as on disk", "shuffled (disorderfs)"),
    ),
    Dimension(
        "clock",
        "clock_shift_days",
        0,
        398,
        "libfaketime (faketime in bubblewrap, LD_PRELOAD in the chroot), FAKE_UTIME=1 so times set and read back agree",
        "timestamps",
        ("now", "`+398` days"),
    ),
)
_NORMAL = {d.field: d.normal for d in TABLE}
_VARIED = {d.field: d.varied for d in TABLE}


@dataclass(frozen=True)
class Variation:
    build_dir: str = _VARIED["build_dir"]
    locale: str = _VARIED["locale"]
    tz: str = _VARIED["tz"]
    umask: int = _VARIED["umask"]
    uid: int = _VARIED["uid"]
    user: str = _VARIED["user"]
    hostname: str = _VARIED["hostname"]
    domain: str = _VARIED["domain"]
    kernel_26: bool = _VARIED["kernel_26"]
    cpus: int = _VARIED["cpus"]
    jobs: int = _VARIED["jobs"]
    file_order: bool = _VARIED["file_order"]
    clock_shift_days: int = _VARIED["clock_shift_days"]
    build_path: str = "recheck/a/much/deeper/build/path"  # the work directory on the host (never seen inside)

    @classmethod
    def unvaried(cls) -> Variation:
        """The farm's normal environment (a plain rebuild; only the host work directory differs)."""
        return cls(**_NORMAL, build_path="recheck")

    def env(self) -> dict[str, str]:
        """Environment overrides for the sandboxed steps."""
        env = {"TZ": self.tz, "LC_ALL": self.locale, "LANG": self.locale, "JOBS": str(self.jobs)}
        env["SRC"] = self.build_dir
        if self.user:
            env |= {"USER": self.user, "LOGNAME": self.user}
        if self.clock_shift_days:
            # libfaketime also shifts the times utime()/utimes()/utimensat() set and read back, so "touch now, then
            # stat" agrees with time() as under a really shifted clock (gnulib's "utimes works" probe, for one).
            env["FAKE_UTIME"] = "1"
        return env

    def process_prefix(self) -> list[str]:
        """What runs a command under the varied kernel version and CPU set (util-linux; empty when unvaried)."""
        prefix: list[str] = []
        if self.kernel_26:
            prefix += ["setarch", "--uname-2.6"]
        if self.cpus:
            prefix += ["taskset", "-c", cpu_list(self.cpus)]
        return prefix

    def wrap(self, command: list[str]) -> list[str]:
        """The step command under the varied kernel version, CPU set and clock (each only when varied)."""
        prefix = self.process_prefix()
        if self.clock_shift_days:
            prefix += [FAKETIME, "-f", f"+{self.clock_shift_days}d"]
        return [*prefix, *command]

    def sandbox(self, spec: sandbox.SandboxSpec) -> sandbox.SandboxSpec:
        """``spec`` (its src already the source view) as this variation's build sees it. Writes the locale layer
        and passwd files next to the build's home, and clamps source mtimes to SOURCE_DATE_EPOCH."""
        if self.kernel_26:
            require_tool("setarch")
        if self.cpus:
            require_tool("taskset")
        if self.domain:
            require_tool("domainname")
        epoch = spec.env.get("SOURCE_DATE_EPOCH")
        if epoch is not None:
            clamp_mtimes(spec.src, int(epoch))
        layer = spec.home.parent / "variation"
        binds: list[tuple[str, str]] = []
        locales = locale_layer(self.locale, layer / "locale")
        if locales is not None:
            binds.append((str(locales), str(HOST_LOCALES)))
        if self.user:
            passwd, group = identity_files(self.user, self.uid, layer)
            binds += [(str(passwd), "/etc/passwd"), (str(group), "/etc/group")]
        return replace(
            spec,
            hostname=self.hostname,
            uid=self.uid,
            build_dir=self.build_dir,
            binds=(*spec.binds, *binds),
            domainname=self.domain,
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["umask"] = f"{self.umask:04o}"
        return data


def cause_of(field_name: str) -> str:
    return next(d.cause for d in TABLE if d.field == field_name)


def readme_table() -> str:
    """The README's variation table (Markdown), generated from :data:`TABLE`."""

    def cell(text: Any) -> str:
        return f"`{text}`" if text not in ("", None) else "none"

    lines = [
        f"Variation table version {VARIATIONS_VERSION}:",
        "",
        "| dimension | normal build | recheck --vary | how it reaches the build | cause |",
        "|---|---|---|---|---|",
    ]
    for d in TABLE:
        normal, varied = d.shown if d.shown != ("", "") else (cell(d.normal), cell(d.varied))
        lines.append(f"| {d.name} | {normal} | {varied} | {d.reaches} | {d.cause} |")
    return "\n".join(lines) + "\n"


def cpu_list(count: int) -> str:
    """The first ``count`` CPUs this process may run on, for taskset -c."""
    return ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[:count])


def locale_parts(locale: str) -> tuple[str, str, str] | None:
    """(source, charmap, directory) localedef needs for ``locale``, e.g. de_CH.UTF-8 -> (de_CH, UTF-8,
    de_CH.utf8); None for the C/POSIX locales every system has."""
    name, _, charmap = locale.partition(".")
    if name in ("C", "POSIX"):
        return None
    charmap = charmap or "UTF-8"
    return name, charmap, f"{name}.{charmap.lower().replace('-', '')}"


def locale_layer(locale: str, dest: Path) -> Path | None:
    """A copy of the host's compiled locales plus ``locale``, compiled from the host's sources (package locales)
    into ``dest``: bound over /usr/lib/locale in the varied build only. None when the locale needs no layer."""
    parts = locale_parts(locale)
    if parts is None:
        return None
    require_tool("localedef")
    source, charmap, directory = parts
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(HOST_LOCALES, dest, symlinks=True)
    run(["localedef", "-i", source, "-f", charmap, str(dest / directory)])
    return dest


def identity_files(user: str, uid: int, dest: Path) -> tuple[Path, Path]:
    """/etc/passwd and /etc/group for a build run as ``user`` (uid = gid = ``uid``)."""
    dest.mkdir(parents=True, exist_ok=True)
    passwd, group = dest / "passwd", dest / "group"
    passwd.write_text(f"root:x:0:0:root:/root:/bin/sh\n{user}:x:{uid}:{uid}::{sandbox.HOME}:/bin/sh\n")
    group.write_text(f"root:x:0:\n{user}:x:{uid}:\n")
    return passwd, group


def clamp_mtimes(root: Path, epoch: int) -> None:
    """Set every mtime under ``root`` newer than ``epoch`` to ``epoch`` (files the source preparation touched)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, "."]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if st.st_mtime > epoch:
                os.utime(path, (epoch, epoch), follow_symlinks=False)


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

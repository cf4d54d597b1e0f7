"""A build's cgroup: the pids and memory controllers its processes are limited and counted by.

Where the cgroup comes from:

- **root**: ``/sys/fs/cgroup/mangos-farm/build-*`` (cgroup v2, its controllers enabled on the way down), else the v1
  hierarchies ``/sys/fs/cgroup/{pids,memory}/mangos-farm/build-*``.
- **any other user**: a *delegated* subtree, i.e. this process's own cgroup when its user may write it (systemd's
  ``Delegate=yes``, or a directory an administrator made and chowned). In v2 the worker first moves itself into a
  leaf of its own (``mangos-worker``) so its cgroup may enable the controllers for the build cgroups beside it (a
  v2 cgroup with processes may not); in v1 the build cgroups are made under the worker's own.
- otherwise none: :func:`farm.build.sandbox.rlimit_args` rlimits are the limits, and a build that runs into them
  fails without the cgroup's verdict of which one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PARENT = "mangos-farm"
WORKER_LEAF = "mangos-worker"
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
CONTROLLERS = ("pids", "memory")


class Limits(Protocol):
    """What a cgroup is limited by (:class:`farm.build.sandbox.Limits` has these and more)."""

    @property
    def processes(self) -> int: ...

    @property
    def memory(self) -> int: ...


def own_cgroups(text: str) -> dict[str, str]:
    """A /proc/PID/cgroup text as {controller: path}; the v2 hierarchy's path under the key ""."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for controller in parts[1].split(",") if parts[1] else [""]:
            found[controller] = parts[2]
    return found


def _writable(d: Path, *files: str) -> bool:
    return d.is_dir() and os.access(d, os.W_OK) and all(os.access(d / f, os.W_OK) for f in files)


def _words(path: Path) -> list[str]:
    """The words of a cgroup list file (``cgroup.subtree_control`` reads back without the ``+`` written to it)."""
    try:
        return [w.lstrip("+") for w in path.read_text().split()]
    except OSError:
        return []


def delegated_v2(root: Path, own: Mapping[str, str], pid: int) -> Path | None:
    """The delegated v2 cgroup the builds go in (controllers enabled for its children), or None. Moves ``pid``
    (this worker) into the ``mangos-worker`` leaf first where its cgroup has no controllers enabled yet."""
    mount = root if (root / "cgroup.controllers").exists() else root / "unified"  # hybrid: v2 beside v1
    if "" not in own or not (mount / "cgroup.controllers").exists():
        return None
    d = mount / own[""].lstrip("/")
    if d.name == WORKER_LEAF:
        d = d.parent
    if d == mount or not _writable(d, "cgroup.procs", "cgroup.subtree_control"):
        return None
    wanted = [c for c in CONTROLLERS if c in _words(d / "cgroup.controllers")]
    if "pids" not in wanted:
        return None
    if not set(wanted) <= set(_words(d / "cgroup.subtree_control")):
        leaf = d / WORKER_LEAF
        leaf.mkdir(exist_ok=True)
        (leaf / "cgroup.procs").write_text(str(pid))
        (d / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in wanted))
    return d


def delegated_v1(root: Path, own: Mapping[str, str]) -> dict[str, Path]:
    """{controller: the worker's own v1 cgroup} for each controller whose cgroup this user may write; empty
    unless pids is among them."""
    dirs = {}
    for c in CONTROLLERS:
        if c in own and (root / c / "cgroup.procs").exists():
            d = root / c / own[c].lstrip("/")
            if d != root / c and _writable(d, "cgroup.procs"):
                dirs[c] = d
    return dirs if "pids" in dirs else {}


@dataclass
class Cgroup:
    """One build's cgroup(s): the pids and memory controllers, in v2 or v1 layout. ``controllers`` names each
    v1 directory's controller (default: the directory two levels up, as in ``pids/mangos-farm/build-*``)."""

    dirs: list[Path]
    v2: bool
    has_memory: bool
    controllers: tuple[str, ...] = field(default=())

    @property
    def join_files(self) -> list[Path]:
        """The files a starting step writes to join the cgroup (:data:`farm.build.sandbox.LIMITS_SHELL`). In v1,
        ``tasks``, where the shell writes ``0`` (itself, single-threaded): the kernel then moves one thread without
        write-locking the global threadgroup semaphore, whose write lock waits out an RCU grace period (10-15 ms
        here) whenever no other migration happened within the last one -- i.e. on every step of a real build. In
        v2, ``cgroup.procs`` (with the shell's pid): v2 moves whole processes only."""
        return [d / ("cgroup.procs" if self.v2 else "tasks") for d in self.dirs]

    def controller_of(self, i: int) -> str:
        return self.controllers[i] if self.controllers else self.dirs[i].parts[-3]

    @classmethod
    def create(cls, limits: Limits, root: Path = CGROUP_ROOT) -> Cgroup | None:
        """A fresh cgroup with the limits written, or None where this process may not make one (then rlimits)."""
        name = f"build-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            try:
                return cls._farm_owned(limits, root, name)
            except PermissionError:
                if os.geteuid() == 0:
                    raise
                return cls._delegated(limits, root, name)
        except OSError as exc:
            log.info("no cgroup for build limits (%s); process and memory limits fall back to rlimits", exc)
        return None

    @classmethod
    def _farm_owned(cls, limits: Limits, root: Path, name: str) -> Cgroup | None:
        """Under ``mangos-farm/`` at the top of the hierarchy (root may make it; anyone else only if given it)."""
        controllers = _words(root / "cgroup.controllers")
        if "pids" in controllers:
            parent = root / CGROUP_PARENT
            parent.mkdir(exist_ok=True)
            wanted = [c for c in CONTROLLERS if c in controllers]
            (root / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in wanted))
            (parent / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in wanted))
            return cls._v2(parent / name, limits, "memory" in wanted)
        if (root / "pids" / "cgroup.procs").exists():
            dirs = {c: root / c / CGROUP_PARENT for c in CONTROLLERS if (root / c / "cgroup.procs").exists()}
            return cls._v1(dirs, name, limits)
        raise PermissionError("no pids controller at the top of the cgroup hierarchy")

    @classmethod
    def _delegated(cls, limits: Limits, root: Path, name: str) -> Cgroup | None:
        own = own_cgroups(PROC_SELF_CGROUP.read_text())
        parent = delegated_v2(root, own, os.getpid())
        if parent is not None:
            return cls._v2(parent / name, limits, "memory" in _words(parent / "cgroup.subtree_control"))
        dirs = delegated_v1(root, own)
        if dirs:
            return cls._v1(dirs, name, limits)
        log.info("no delegated cgroup for this user; process and memory limits fall back to rlimits")
        return None

    @classmethod
    def _v2(cls, d: Path, limits: Limits, memory: bool) -> Cgroup:
        d.mkdir()
        (d / "pids.max").write_text(str(limits.processes))
        if memory:
            (d / "memory.max").write_text(str(limits.memory))
            if (d / "memory.swap.max").exists():
                (d / "memory.swap.max").write_text("0")
        return cls([d], True, memory)

    @classmethod
    def _v1(cls, parents: Mapping[str, Path], name: str, limits: Limits) -> Cgroup:
        names = tuple(parents)
        group = cls([parents[c] / name for c in names], False, "memory" in names, names)
        for d in group.dirs:
            d.mkdir(parents=True)
        (group.dirs[0] / "pids.max").write_text(str(limits.processes))
        if group.has_memory:
            (group.dirs[names.index("memory")] / "memory.limit_in_bytes").write_text(str(limits.memory))
        return group

    def _file(self, controller: str, name: str) -> Path | None:
        for i, d in enumerate(self.dirs):
            if self.v2 or self.controller_of(i) == controller:
                return d / name
        return None

    def _events(self, controller: str, name: str) -> dict[str, str]:
        """A flat-keyed cgroup file (``key value`` lines) as a dict; empty when it cannot be read."""
        path = self._file(controller, name)
        try:
            text = path.read_text() if path is not None else ""
        except OSError:
            text = ""
        return dict(line.split() for line in text.splitlines() if line)

    def counters(self) -> dict[str, int]:
        """The cgroup's limit events so far (counters that only grow): "processes", tasks refused at pids.max;
        "memory", OOM kills (v2: and times the usage reached memory.max). Not memory.failcnt: in v1 the page cache
        counts towards the limit, so an I/O-heavy build that the kernel reclaims from without trouble bumps it."""
        found = {"processes": int(self._events("pids", "pids.events").get("max", "0"))}
        if self.has_memory and self.v2:
            mem = self._events("memory", "memory.events")
            found["memory"] = int(mem.get("oom_kill", "0")) + int(mem.get("max", "0"))
        elif self.has_memory:
            found["memory"] = int(self._events("memory", "memory.oom_control").get("oom_kill", "0"))
        return found

    def hit(self, since: Mapping[str, int] | None = None) -> list[str]:
        """Which limits were run into (since the :meth:`counters` given): "processes", "memory"."""
        base = since or {}
        return [k for k, v in self.counters().items() if v > base.get(k, 0)]

    def empty(self, patience: float = 2.0) -> bool:
        """Kill whatever is in the cgroup and wait until it has left (the kernel removes a task as it is reaped);
        False if something is still there after ``patience`` seconds."""
        deadline = time.monotonic() + patience
        delay = 0.0001  # bwrap's pid 1 usually finishes tearing its namespaces down within a millisecond
        for d in self.dirs:
            while True:
                try:
                    pids = [int(p) for p in (d / "cgroup.procs").read_text().split()]
                except OSError:
                    pids = []
                if not pids:
                    break
                if time.monotonic() > deadline:
                    log.warning("cgroup %s still holds %s after SIGKILL", d, pids)
                    return False
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(delay)
                delay = min(2 * delay, 0.02)
        return True

    def destroy(self) -> None:
        """Kill whatever is left in the cgroup and remove it."""
        self.empty()
        for d in self.dirs:
            try:
                d.rmdir()
            except OSError as exc:
                log.warning("cannot remove cgroup %s: %s", d, exc)

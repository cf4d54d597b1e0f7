"""The isolated build run (bubblewrap).

Each build step runs in fresh namespaces (user, mount, pid, net, ipc, uts, cgroup): no network at all (not even
loopback to the host), an unprivileged uid, a clean environment, the host's /usr read-only, and only the build's
own directories writable, at fixed paths so the build path never leaks machine-specific text into outputs (a
recheck moves the source elsewhere on purpose: :mod:`farm.build.variation`):

    /build/src   the source tree (writable copy)     /build/out   where outputs go ($OUT)
    /build/deps  dependency outputs (read-only)      /build/home  $HOME, empty

Limits (:class:`Limits`): each step runs in the build's cgroup (pids + memory; cgroup v2 when its controllers are
available, else the v1 hierarchies) because rlimits on processes do not bind here: bubblewrap maps the build uid to
the worker's uid, and for root the kernel ignores RLIMIT_NPROC. The cgroup is made once per build
(:class:`LimitedRunner`) and each step joins it; ``prlimit`` adds a file-size cap (and an address space cap when
there is no memory cgroup), /tmp is a size-bounded tmpfs, and the caller's timeout kills bwrap, whose
--die-with-parent takes the whole pid namespace with it; the cgroup is emptied (SIGKILL) after every step too, so
no step starts with anything of the one before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import select
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from farm.run import Process, Result, spawn

log = logging.getLogger(__name__)

SRC = "/build/src"
OUT = "/build/out"
DEPS = "/build/deps"
HOME = "/build/home"
BUILD_UID = 1000
HOSTNAME = "mangos-build"
PATH = "/usr/local/bin:/usr/bin:/usr/sbin"

# Host paths a toolchain needs; nothing else of the host (no /root, /home, /var, /run, no keys) is visible.
HOST_RO = ("/usr", "/etc/alternatives", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d")
ROOT_LINKS = (("usr/bin", "/bin"), ("usr/sbin", "/sbin"), ("usr/lib", "/lib"), ("usr/lib64", "/lib64"))


MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Resource limits of one build (bytes and counts); operators set them with MANGOS_FARM_BUILD_* settings."""

    memory: int = 4096 * MIB  # all processes of a step together (and page cache the build keeps, reclaimable)
    processes: int = 512  # tasks in the build's cgroup at once
    scratch: int = 8192 * MIB  # the build directory (src, out, home) and any single file in it
    output: int = 2048 * MIB  # the packed outputs together
    tmp: int = 1024 * MIB  # the private /tmp
    open_files: int = 4096


@dataclass(frozen=True)
class SandboxSpec:
    src: Path
    out: Path
    home: Path
    deps: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    host_ro: tuple[str, ...] = HOST_RO
    hostname: str = HOSTNAME  # a recheck varies these (farm.build.variation)
    uid: int = BUILD_UID
    limits: Limits = field(default_factory=Limits)
    build_dir: str = SRC  # where the source is bound and the steps start
    binds: tuple[tuple[str, str], ...] = ()  # (host path, sandbox path), read-only, over what HOST_RO shows
    domainname: str = ""  # set in a UTS namespace of its own before bwrap starts ("": the worker's)


def base_env(source_date_epoch: int, jobs: int = 1) -> dict[str, str]:
    return {
        "PATH": PATH,
        "HOME": HOME,
        "SRC": SRC,
        "OUT": OUT,
        "DEPS": DEPS,
        "SOURCE_DATE_EPOCH": str(source_date_epoch),
        "TZ": "UTC",
        "LC_ALL": "C.UTF-8",
        "LANG": "C.UTF-8",
        "JOBS": str(jobs),
    }


def launcher_env() -> dict[str, str]:
    """The environment bwrap itself runs with: nothing of the worker's (no AWS_*, broker URL, key paths, HOME)."""
    return {"PATH": PATH, "LC_ALL": "C.UTF-8"}


def bwrap_argv(spec: SandboxSpec, command: list[str]) -> list[str]:
    """The bubblewrap command line for one step. Pure: unit-tested without running anything."""
    argv = [
        "bwrap",
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--uid",
        str(spec.uid),
        "--gid",
        str(spec.uid),
        "--hostname",
        spec.hostname,
    ]
    for path in spec.host_ro:
        if Path(path).exists():
            argv += ["--ro-bind", path, path]
    for target, link in ROOT_LINKS:
        if Path("/" + target).exists():
            argv += ["--symlink", target, link]
    argv += ["--proc", "/proc", "--dev", "/dev", "--size", str(spec.limits.tmp)]
    argv += ["--perms", "1777", "--tmpfs", "/tmp"]  # noqa: S108 - a private tmpfs inside the sandbox
    for host, inside in spec.binds:
        argv += ["--ro-bind", host, inside]
    argv += ["--bind", str(spec.src), spec.build_dir, "--bind", str(spec.out), OUT, "--bind", str(spec.home), HOME]
    if spec.deps is not None:
        argv += ["--ro-bind", str(spec.deps), DEPS]
    argv += ["--chdir", spec.build_dir, "--clearenv"]
    for key, value in sorted(spec.env.items()):
        argv += ["--setenv", key, value]
    argv += ["--", *command]
    if spec.domainname:
        argv = [*domain_prefix(spec.domainname), *argv]
    return argv


def domain_prefix(domain: str) -> list[str]:
    """Run the rest in a new UTS namespace with ``domain`` as its NIS domain name (bwrap's own UTS namespace
    copies it; bwrap can set the hostname but not the domain). Without root, in a user namespace of its own."""
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    return ["unshare", "--uts", *user, "--", "/bin/sh", "-c", 'domainname "$0" && exec "$@"', domain]


def step_command(script: str) -> list[str]:
    """A recipe step is a shell script run by /bin/sh -e inside the sandbox (never on the host)."""
    return ["/bin/sh", "-e", "-c", script]


# -- limits ------------------------------------------------------------------------------------------------------
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PARENT = "mangos-farm"
# Joins the cgroups named by its arguments (up to "--"), then becomes the rest: a fixed script with argv only, so
# no recipe text ever reaches this shell.
_JOIN = 'while [ "$1" != "--" ]; do echo $$ > "$1"; shift; done; shift; exec "$@"'


def prlimit_argv(limits: Limits, *, memory_cgroup: bool) -> list[str]:
    argv = ["prlimit", f"--fsize={limits.scratch}", f"--nofile={limits.open_files}", f"--nproc={limits.processes}"]
    if not memory_cgroup:  # a cgroup limit is better: RLIMIT_AS also counts reserved, unused address space
        argv.append(f"--as={limits.memory}")
    return [*argv, "--"]


def limited_argv(limits: Limits, cgroup: Cgroup | None, command: list[str]) -> list[str]:
    """``command`` (the bwrap argv) under the limits: join the build's cgroups, set rlimits, exec. Pure."""
    argv = prlimit_argv(limits, memory_cgroup=cgroup is not None and cgroup.has_memory) + command
    if cgroup is None:
        return argv
    return ["/bin/sh", "-c", _JOIN, "mangos-limits", *(str(p) for p in cgroup.procs_files), "--", *argv]


@dataclass
class Cgroup:
    """One build's cgroup(s): the pids and memory controllers, in v2 or v1 layout, under ``mangos-farm/``."""

    dirs: list[Path]
    v2: bool
    has_memory: bool

    @property
    def procs_files(self) -> list[Path]:
        return [d / "cgroup.procs" for d in self.dirs]

    @classmethod
    def create(cls, limits: Limits, root: Path = CGROUP_ROOT) -> Cgroup | None:
        """A fresh cgroup with the limits written, or None where this process may not make one (then rlimits)."""
        name = f"build-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            controllers = (root / "cgroup.controllers").read_text().split()
        except OSError:
            controllers = []
        try:
            if "pids" in controllers:
                parent = root / CGROUP_PARENT
                parent.mkdir(exist_ok=True)
                wanted = [c for c in ("pids", "memory") if c in controllers]
                (root / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in wanted))
                (parent / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in wanted))
                d = parent / name
                d.mkdir()
                group = cls([d], True, "memory" in wanted)
                (d / "pids.max").write_text(str(limits.processes))
                if group.has_memory:
                    (d / "memory.max").write_text(str(limits.memory))
                    if (d / "memory.swap.max").exists():
                        (d / "memory.swap.max").write_text("0")
                return group
            if (root / "pids" / "cgroup.procs").exists():
                dirs = []
                for controller in ("pids", "memory"):
                    if (root / controller / "cgroup.procs").exists():
                        d = root / controller / CGROUP_PARENT / name
                        d.mkdir(parents=True)
                        dirs.append(d)
                group = cls(dirs, False, any(d.parts[-3] == "memory" for d in dirs))
                (dirs[0] / "pids.max").write_text(str(limits.processes))
                if group.has_memory:
                    (dirs[1] / "memory.limit_in_bytes").write_text(str(limits.memory))
                return group
        except OSError as exc:
            log.info("no cgroup for build limits (%s); process and memory limits fall back to rlimits", exc)
        return None

    def _file(self, controller: str, name: str) -> Path | None:
        for d in self.dirs:
            if self.v2 or d.parts[-3] == controller:
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
                    with contextlib.suppress(ProcessLookupError):
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


def _wait(proc: Process, timeout: float) -> bool:
    """Wait until ``proc`` exits, at most ``timeout`` seconds; True if it did. The exit itself wakes the wait (a
    pidfd), so a short step is not rounded up to a polling interval."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # no pidfd (an old kernel): poll, briefly at first
        deadline, delay = time.monotonic() + timeout, 0.0005
        while proc.poll() is None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(2 * delay, 0.01)
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + timeout
        while not poller.poll(max(0, int(1000 * (deadline - time.monotonic())) + 1)):
            if time.monotonic() >= deadline:
                return False
    finally:
        os.close(fd)
    proc.wait()
    return True


class LimitedRunner:
    """Runs the steps of one build under its limits: the cgroup is made once, on entry, and removed on exit;
    each step joins it (with prlimit's rlimits, :func:`limited_argv`), and whatever a step leaves in it is killed
    before the step's result is returned. The limits a step ran into are told from the cgroup's event counters
    before and after it, so each step's verdict is its own."""

    def __init__(self, limits: Limits, root: Path = CGROUP_ROOT) -> None:
        self.limits = limits
        self.root = root
        self.cgroup: Cgroup | None = None

    def __enter__(self) -> LimitedRunner:
        self.cgroup = Cgroup.create(self.limits, self.root)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cgroup is not None:
            self.cgroup.destroy()
            self.cgroup = None

    def run(
        self, command: list[str], *, logfh: IO[bytes], timeout: float, env: Mapping[str, str], umask: int = -1
    ) -> tuple[Result, list[str]]:
        """Run ``command`` (the bwrap argv) under the limits, its output (stderr too) streamed to ``logfh``;
        the result and the cgroup limits it ran into. At ``timeout`` it is killed and the result is
        ``timed_out``."""
        cgroup = self.cgroup
        before = cgroup.counters() if cgroup is not None else {}
        argv = limited_argv(self.limits, cgroup, command)
        proc = spawn(argv, stdout=logfh, stderr_to_stdout=True, env=env, umask=umask)
        exited = False
        try:
            exited = _wait(proc, timeout)
        finally:
            if not exited:  # timed out, or the worker is being stopped: bwrap takes its pid namespace along
                proc.kill()
                proc.wait()
            if cgroup is not None:
                cgroup.empty()
        args = tuple(os.fspath(a) for a in argv)
        result = Result(args, proc.returncode if exited else -1, b"", b"", timed_out=not exited)
        return result, cgroup.hit(before) if cgroup is not None else []


def run_limited(
    command: list[str], limits: Limits, *, logfh: IO[bytes], timeout: float, env: Mapping[str, str], umask: int = -1
) -> tuple[Result, list[str]]:
    """Run ``command`` once under ``limits`` in a cgroup of its own (:class:`LimitedRunner` for one command)."""
    with LimitedRunner(limits) as runner:
        return runner.run(command, logfh=logfh, timeout=timeout, env=env, umask=umask)

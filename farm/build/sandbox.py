"""The isolated build run (bubblewrap).

Each build step runs in fresh namespaces (user, mount, pid, net, ipc, uts, cgroup): no network at all (not even
loopback to the host), an unprivileged uid, a clean environment, the host's /usr read-only, and only the build's
own directories writable, at fixed paths so the build path never leaks machine-specific text into outputs (a
recheck moves the source elsewhere on purpose: :mod:`farm.build.variation`):

    /build/src   the source tree (writable copy)     /build/out   where outputs go ($OUT)
    /build/deps  dependency outputs (read-only)      /build/home  $HOME, empty

Limits (:class:`Limits`): each step runs in the build's cgroup (pids + memory; cgroup v2 when its controllers are
available, else the v1 hierarchies; without root, a delegated subtree: :mod:`farm.build.cgroups`) because rlimits
on processes bind loosely here: bubblewrap maps the build uid to the worker's uid, so RLIMIT_NPROC counts the
worker's own processes, and for root the kernel ignores it. The cgroup is made once per build
(:class:`LimitedRunner`) and each step joins it; rlimits add a file-size cap (and an address space cap when
there is no memory cgroup), /tmp is a size-bounded tmpfs, and the caller's timeout kills bwrap, whose
--die-with-parent takes the whole pid namespace with it; the cgroup is emptied (SIGKILL) after every step too, so
no step starts with anything of the one before.
"""

from __future__ import annotations

import logging
import os
import select
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from farm.build.cgroups import CGROUP_PARENT as CGROUP_PARENT  # noqa: PLC0414 - re-exported
from farm.build.cgroups import CGROUP_ROOT as CGROUP_ROOT  # noqa: PLC0414
from farm.build.cgroups import Cgroup as Cgroup  # noqa: PLC0414
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
# One fixed dash script, given argv only (no recipe text ever reaches it), runs before bwrap: it joins the cgroups
# whose files (:attr:`Cgroup.join_files`: a v1 ``tasks`` gets 0, itself; a ``cgroup.procs`` its pid) are its
# arguments up to the first "--", sets the rlimits given as (option, value) pairs up to the second
# "--" with the shell's own ``ulimit`` (no exec of prlimit: a millisecond per step), then becomes the rest. A join
# or a limit that fails stops it (exit 125) rather than run the step unlimited. dash, named: its ``ulimit`` options
# are these (bash's ``-p`` is the pipe size, its process count ``-u``).
LIMITS_SHELL = "/bin/dash"
_LIMITS = (
    'while [ "$1" != "--" ]; do case "$1" in */tasks) echo 0;; *) echo $$;; esac > "$1" || exit 125; shift; done; '
    "shift; "
    'while [ "$1" != "--" ]; do ulimit "$1" "$2" || exit 125; shift 2; done; shift; '
    'exec "$@"'
)


def rlimit_args(limits: Limits, *, memory_cgroup: bool, pids_cgroup: bool = False) -> list[str]:
    """The rlimits of a step as dash ``ulimit`` (option, value) pairs, hard and soft alike: file size (in 512-byte
    blocks, rounded down), open files, processes (dash's ``-p``) and address space (KiB). Where a pids cgroup counts
    the build's processes, RLIMIT_NPROC is left alone: it counts every process of the uid, which for a worker that
    is not root includes the worker's own."""
    args = ["-f", str(limits.scratch // 512), "-n", str(limits.open_files)]
    if not pids_cgroup:
        args += ["-p", str(limits.processes)]
    if not memory_cgroup:  # a cgroup limit is better: RLIMIT_AS also counts reserved, unused address space
        args += ["-v", str(limits.memory // 1024)]
    return args


def limited_argv(limits: Limits, cgroup: Cgroup | None, command: list[str]) -> list[str]:
    """``command`` (the bwrap argv) under the limits: join the build's cgroups, set rlimits, exec. Pure."""
    rlimits = rlimit_args(
        limits, memory_cgroup=cgroup is not None and cgroup.has_memory, pids_cgroup=cgroup is not None
    )
    procs = [str(p) for p in cgroup.join_files] if cgroup is not None else []
    return [LIMITS_SHELL, "-c", _LIMITS, "mangos-limits", *procs, "--", *rlimits, "--", *command]


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
    each step joins it (with its rlimits, :func:`limited_argv`), and whatever a step leaves in it is killed
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

"""The isolated build run (bubblewrap).

Each build step runs in fresh namespaces (user, mount, pid, net, ipc, uts, cgroup): no network at all (not even
loopback to the host), an unprivileged uid, a clean environment, the host's /usr read-only, and only the build's
own directories writable, at fixed paths so the build path never leaks machine-specific text into outputs:

    /build/src   the source tree (writable copy)     /build/out   where outputs go ($OUT)
    /build/deps  dependency outputs (read-only)      /build/home  $HOME, empty
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

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


@dataclass(frozen=True)
class SandboxSpec:
    src: Path
    out: Path
    home: Path
    deps: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    host_ro: tuple[str, ...] = HOST_RO


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
        str(BUILD_UID),
        "--gid",
        str(BUILD_UID),
        "--hostname",
        HOSTNAME,
    ]
    for path in spec.host_ro:
        if Path(path).exists():
            argv += ["--ro-bind", path, path]
    for target, link in ROOT_LINKS:
        if Path("/" + target).exists():
            argv += ["--symlink", target, link]
    argv += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp"]  # noqa: S108 - a private tmpfs inside the sandbox
    argv += ["--bind", str(spec.src), SRC, "--bind", str(spec.out), OUT, "--bind", str(spec.home), HOME]
    if spec.deps is not None:
        argv += ["--ro-bind", str(spec.deps), DEPS]
    argv += ["--chdir", SRC, "--clearenv"]
    for key, value in sorted(spec.env.items()):
        argv += ["--setenv", key, value]
    argv += ["--", *command]
    return argv


def step_command(script: str) -> list[str]:
    """A recipe step is a shell script run by /bin/sh -e inside the sandbox (never on the host)."""
    return ["/bin/sh", "-e", "-c", script]

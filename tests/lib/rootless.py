"""A worker that is not root, for tests: a real user with a subordinate uid/gid range, a Python it can run, a
directory it owns, a delegated cgroup, and commands run as it (``setpriv``).

The user is made on first use (``useradd``, ``usermod --add-subuids``), which needs root: CI runs as root on a fresh
Debian 12. Elsewhere a test that needs it skips (fails in CI) when it cannot be made.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from farm.build.cgroups import CGROUP_ROOT, PROC_SELF_CGROUP, own_cgroups
from farm.build.userns import IdMap, id_map
from tests.lib.tools import IN_CI

USER = "mangos-rootless"
SUBIDS = "100000-165535"
REPO = Path(__file__).resolve().parents[2]
# Joins the cgroups named up to "--", then runs the rest (the cgroup a worker is started in).
JOIN = 'while [ "$1" != "--" ]; do echo $$ > "$1"; shift; done; shift; exec "$@"'


@dataclass(frozen=True)
class RootlessUser:
    name: str
    uid: int
    gid: int
    home: Path
    idmap: IdMap | None  # None: a user without subordinate ids (nobody)


def _unavailable(message: str) -> None:
    import pytest

    if IN_CI:
        pytest.fail(f"{message} (CI runs as root and must exercise rootless builds)")
    pytest.skip(message)


def ensure_user(name: str = USER) -> RootlessUser:
    """The non-root build user with its subordinate ranges, made if absent (needs root)."""
    for tool in ("useradd", "usermod", "setpriv", "newuidmap", "newgidmap"):
        if shutil.which(tool) is None:
            _unavailable(f"'{tool}' is not installed (packages passwd, util-linux, uidmap)")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        if os.geteuid() != 0:
            _unavailable(f"user {name} does not exist and only root may make it")
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True, capture_output=True)
        entry = pwd.getpwnam(name)
    if id_map(entry.pw_uid) is None:
        if os.geteuid() != 0:
            _unavailable(f"user {name} has no subordinate ids and only root may add them")
        argv = ["usermod", "--add-subuids", SUBIDS, "--add-subgids", SUBIDS, name]
        subprocess.run(argv, check=True, capture_output=True)
    return RootlessUser(name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir), id_map(entry.pw_uid))


def nobody() -> RootlessUser:
    """``nobody``: not root, no subordinate ids."""
    entry = pwd.getpwnam("nobody")
    return RootlessUser("nobody", entry.pw_uid, entry.pw_gid, Path("/nonexistent"), id_map(entry.pw_uid))


def own_dir(user: RootlessUser, prefix: str = "mangos-rootless-") -> Path:
    """A fresh directory under /tmp owned by ``user`` (pytest's own temporary directories are root's, mode 700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chown(path, user.uid, user.gid)
    return path


def chown_tree(root: Path, user: RootlessUser) -> None:
    for d, dirs, files in os.walk(root):
        for n in [*dirs, *files]:
            os.chown(Path(d) / n, user.uid, user.gid, follow_symlinks=False)
    os.chown(root, user.uid, user.gid)


def python(user: RootlessUser) -> tuple[list[str], dict[str, str]]:
    """A Python command ``user`` can run with the farm importable, and the environment it needs. This venv's
    interpreter when the user may run it; else the system python3 of the same version with the venv's packages
    on PYTHONPATH (a venv made by a root-only interpreter, e.g. under /root)."""
    path = {"PYTHONPATH": str(REPO)}
    spawn = "import subprocess, sys, farm; subprocess.run([sys.executable, '-c', ''], check=True)"  # as workers do
    probe = as_user(user, [sys.executable, "-c", spawn], env=path, check=False)
    if probe.returncode == 0:
        return [sys.executable], path
    system = Path("/usr/bin/python3")
    version = subprocess.run(
        [system, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True, check=False
    ).stdout.strip()
    if version != str(sys.version_info[:2]):
        _unavailable(f"{user.name} cannot run {sys.executable}, and /usr/bin/python3 is {version}")
    path = {"PYTHONPATH": f"{REPO}:{sysconfig.get_paths()['purelib']}"}
    probe = as_user(user, [str(system), "-c", spawn], env=path, check=False)
    if probe.returncode != 0:
        _unavailable(
            f"{user.name} cannot import the farm from {REPO} ({probe.stderr.strip()[-300:]}): the checkout and its "
            "venv must be readable by other users (clone into a world-readable directory)"
        )
    return [str(system)], path


def user_env(user: RootlessUser, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "HOME": str(user.home),
        "USER": user.name,
        "LC_ALL": "C.UTF-8",
    }
    if os.environ.get("CI"):
        env["CI"] = os.environ["CI"]
    return env | dict(extra or {})


def as_user(
    user: RootlessUser,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 600,
    cgroups: Sequence[Path] = (),
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as ``user`` (its uid, gid and groups; a clean environment), started in ``cgroups``."""
    command = ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups", "--", *argv]
    if cgroups:
        command = ["/bin/sh", "-c", JOIN, "join", *(str(d / "cgroup.procs") for d in cgroups), "--", *command]
    proc = subprocess.run(
        command, env=user_env(user, env), cwd=cwd or "/", capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} as {user.name} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@contextmanager
def delegated_cgroups(user: RootlessUser, root: Path = CGROUP_ROOT) -> Iterator[list[Path]]:
    """Cgroups made for ``user`` and handed to it, as an administrator (or systemd's ``Delegate=yes``) delegates a
    subtree: v2 (at the top) where its pids controller is, else in the v1 pids and memory hierarchies under this
    process's own. Start the worker in them (:func:`as_user` ``cgroups``); removed afterwards."""
    own = own_cgroups(PROC_SELF_CGROUP.read_text())
    name = f"mangos-rootless-{os.getpid()}-{secrets.token_hex(3)}"
    made: list[Path] = []
    try:
        v2 = (root / "cgroup.controllers").read_text().split() if (root / "cgroup.controllers").exists() else []
        if "pids" in v2:  # at the top: the root cgroup alone may hold processes and enable controllers at once
            wanted = [c for c in ("pids", "memory") if c in v2]
            (root / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in wanted))
            d = root / name
            d.mkdir()
            made.append(d)
            for f in ("", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"):
                os.chown(d / f if f else d, user.uid, user.gid)
        else:
            for c in ("pids", "memory"):
                if c in own and (root / c / "cgroup.procs").exists():
                    d = root / c / own[c].lstrip("/") / name
                    d.mkdir()
                    made.append(d)
                    for f in ("", "cgroup.procs", "tasks"):
                        os.chown(d / f if f else d, user.uid, user.gid)
        yield made
    finally:
        for d in reversed(made):
            for child in sorted(d.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if child.is_dir():
                    child.rmdir()
            d.rmdir()


def mounts_mentioning(text: str) -> list[str]:
    """Every mount, in any process's mount namespace, whose line mentions ``text``."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
            except OSError:
                continue
            found += [f"{pid}: {line}" for line in lines if text in line]
    return found


def processes_of(uids: range) -> list[int]:
    """Processes whose real uid is in ``uids`` (a build user's subordinate uid)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            uid = next((line.split()[1] for line in status.splitlines() if line.startswith("Uid:")), "")
            if uid.isdigit() and int(uid) in uids:
                found.append(int(pid))
    return found


def reclaim(user: RootlessUser, path: Path) -> None:
    """Delete ``path`` whatever subordinate ids own its files (as the user's namespace root), then as root."""
    if user.idmap is not None and path.exists():
        from farm.build.userns import reclaim_argv

        as_user(user, reclaim_argv(user.idmap, [], [path]), check=False)
    shutil.rmtree(path, ignore_errors=True)


def spawn_as_user(
    user: RootlessUser,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    log: Path,
    cgroups: Sequence[Path] = (),
) -> subprocess.Popen[bytes]:
    """Start ``argv`` as ``user`` in the background (as :func:`as_user` runs it), in a session of its own (stop it
    by its process group), output appended to ``log``. The returned pid becomes ``argv``'s process: the cgroup
    joiner and ``setpriv`` exec it."""
    command = ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups", "--", *argv]
    if cgroups:
        command = ["/bin/sh", "-c", JOIN, "join", *(str(d / "cgroup.procs") for d in cgroups), "--", *command]
    with log.open("ab") as out:
        return subprocess.Popen(
            command, env=user_env(user, env), cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def process_ids(pid: int) -> dict[str, list[int]]:
    """The ``Uid`` and ``Gid`` lines (real, effective, saved, filesystem) of process ``pid``, and ``CapEff`` as
    one number."""
    found: dict[str, list[int]] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid"):
            found[key] = [int(v) for v in value.split()]
        elif key == "CapEff":
            found[key] = [int(value.strip(), 16)]
    return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, theirs, ...) now."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def require_imports(user: RootlessUser, py: Sequence[str], env: Mapping[str, str], modules: Sequence[str]) -> None:
    """``modules`` import in ``user``'s Python (:func:`python`), or the test skips (fails in CI) saying why. The
    system python3 fallback runs the venv's packages, whose dependencies were chosen for the venv's interpreter:
    redis needs async_timeout below Python 3.11.3 (Debian 12 has 3.11.2: ``apt-get install python3-async-timeout``)."""
    code = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)"
    probe = as_user(user, [*py, "-c", code, *modules], env=env, cwd=Path("/tmp"), check=False)
    if probe.returncode != 0:
        why = probe.stderr.strip().splitlines()[-1:] or [f"exit {probe.returncode}"]
        _unavailable(f"{user.name}'s {py[0]} cannot import {', '.join(modules)}: {why[0]}")


def wait_cgroups_empty(cgroups: Sequence[Path], timeout: float = 30) -> None:
    """Wait until no process is left in ``cgroups`` or below (a killed worker's children are reaped after it), so
    that :func:`delegated_cgroups` can remove them."""
    deadline = time.monotonic() + timeout
    while any(p.read_text().strip() for d in cgroups for p in d.rglob("cgroup.procs")):
        if time.monotonic() > deadline:
            raise AssertionError(f"processes are still in {[str(d) for d in cgroups]} after {timeout:g}s")
        time.sleep(0.1)

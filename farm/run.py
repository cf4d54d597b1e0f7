"""The one subprocess executor.

Every child process of the farm starts here, and nowhere else (ruff's banned-api rule TID251 keeps
``subprocess`` and ``os.exec*`` out of every other module of ``farm/`` and ``workers/``):

- :func:`run` for a command that runs to completion (git, bwrap, dpkg-query, QEMU, ...): it never uses a shell,
  caps the stderr it keeps, and turns a failure into a :class:`FarmError` that says which command failed and shows
  the end of its stderr;
- :func:`spawn` for a long-lived child the caller watches and stops (the local Celery workers);
- :func:`exec_replace` for replacing the farm process itself (``mangos-farm worker``).

Each logs the exact argv, and a child always starts in a session of its own, so a signal meant for the farm (a
terminal's Ctrl-C) never reaches it unasked and its whole process group can be stopped at once.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NoReturn, TypeAlias

from farm.errors import E, FarmError
from farm.tools import package_for

log = logging.getLogger(__name__)

STDERR_CAP = 16 * 1024

Process: TypeAlias = subprocess.Popen[bytes]
"""A started child (what :func:`spawn` returns): ``poll``, ``wait``, ``send_signal``, ``pid``, ..."""


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")


def tail(data: bytes | str, limit: int = STDERR_CAP) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    if len(text) <= limit:
        return text
    return "[...]" + text[-limit:]


def require_tool(name: str) -> str:
    """The path of ``name`` on PATH; a missing tool is E-TOOL-MISSING naming its package from :data:`farm.tools.TOOLS`.

    A tool not in the table raises :class:`farm.tools.UnknownTool` even when it is installed: the table stays
    complete.
    """
    package = package_for(name)
    path = shutil.which(name)
    if path is None:
        raise FarmError(
            E.TOOL_MISSING,
            f"the tool '{name}' is not installed",
            hint=f"install it with 'apt-get install {package}' (or run 'make setup')",
        )
    return path


def _argv(argv: Sequence[str | os.PathLike[str]]) -> tuple[str, ...]:
    return tuple(os.fspath(a) for a in argv)


def _start(
    args: tuple[str, ...],
    *,
    cwd: Path | None,
    env: Mapping[str, str] | None,
    stdin: int | None,
    stdout: IO[bytes] | int | None,
    stderr: IO[bytes] | int | None,
    umask: int,
) -> Process:
    try:
        return subprocess.Popen(
            args,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
            umask=umask,
        )
    except FileNotFoundError as exc:
        raise FarmError(
            E.TOOL_MISSING,
            f"cannot run '{args[0]}': not found",
            hint="install the missing tool (see 'make setup')",
        ) from exc


def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    stdout: IO[bytes] | None = None,
    stderr_to_stdout: bool = False,
    umask: int = -1,
) -> Process:
    """Start ``argv`` in a new session and return its handle without waiting; the caller stops and reaps it.

    ``stdout`` (and, with ``stderr_to_stdout``, stderr) go to the given file; otherwise the child inherits the
    farm's. stdin is always inherited. A missing executable is E-TOOL-MISSING.
    """
    args = _argv(argv)
    log.info("spawn: %s%s", shlex.join(args), f" (cwd={cwd})" if cwd else "")
    return _start(
        args,
        cwd=cwd,
        env=env,
        stdin=None,
        stdout=stdout,
        stderr=subprocess.STDOUT if stderr_to_stdout else None,
        umask=umask,
    )


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float | None = None,
    stdout: IO[bytes] | None = None,
    stderr_to_stdout: bool = False,
    input: bytes | None = None,
    umask: int = -1,
) -> Result:
    """Run ``argv`` to completion; with ``stdout`` given, stream output there instead of capturing it (build logs).

    ``umask`` (when not -1) is set in the child only, so the farm process's own umask is never touched. At
    ``timeout`` the child is killed (SIGKILL) and the result is ``timed_out``. Only the last :data:`STDERR_CAP`
    bytes of stderr are kept.
    """
    args = _argv(argv)
    log.debug("run: %s%s", shlex.join(args), f" (cwd={cwd})" if cwd else "")
    proc = _start(
        args,
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE if input is not None else None,
        stdout=stdout if stdout is not None else subprocess.PIPE,
        stderr=subprocess.STDOUT if stderr_to_stdout else subprocess.PIPE,
        umask=umask,
    )
    with proc:
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            proc.kill()
            proc.wait()
            result = Result(args, -1, exc.stdout or b"", exc.stderr or b"", timed_out=True)
            if check:
                raise CommandFailed(result, timeout=timeout) from exc
            return result
        except BaseException:
            proc.kill()
            raise
    result = Result(args, proc.returncode, out or b"", (err or b"")[-STDERR_CAP:])
    if check and proc.returncode != 0:
        raise CommandFailed(result)
    return result


def exec_replace(argv: Sequence[str | os.PathLike[str]]) -> NoReturn:
    """Replace the farm process with ``argv`` (same pid, same environment: ``os.environ`` as it is now)."""
    args = _argv(argv)
    log.info("exec: %s", shlex.join(args))
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.execv(args[0], args)  # noqa: S606 - argv is a list, never a shell


class CommandFailed(FarmError):
    def __init__(self, result: Result, timeout: float | None = None) -> None:
        self.result = result
        what = f"timed out after {timeout:g}s" if result.timed_out and timeout else f"exit {result.returncode}"
        detail = tail(result.stderr or result.stdout, 2000).strip()
        super().__init__(
            E.COMMAND,
            f"command failed ({what}): {shlex.join(result.argv)}" + (f"\n{detail}" if detail else ""),
            hint="run with --debug for the full log; the command's own message is above",
        )

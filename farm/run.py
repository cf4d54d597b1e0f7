"""The one subprocess executor.

Every external command in the farm (git, bwrap, dpkg-query, ...) runs through :func:`run`: it logs the exact
argv, never uses a shell, caps the stderr it keeps, and turns a failure into a :class:`FarmError` that says which
command failed and shows the end of its stderr.
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
from typing import IO

from farm.errors import E, FarmError

log = logging.getLogger(__name__)

STDERR_CAP = 16 * 1024


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


def require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FarmError(
            E.TOOL_MISSING,
            f"the tool '{name}' is not installed",
            hint=f"install it with 'apt-get install {package}' (or run 'make setup')",
        )
    return path


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
    """Run ``argv``; with ``stdout`` given, stream output there instead of capturing it (build logs).

    ``umask`` (when not -1) is set in the child only, so the farm process's own umask is never touched.
    """
    args = tuple(os.fspath(a) for a in argv)
    log.debug("run: %s%s", shlex.join(args), f" (cwd={cwd})" if cwd else "")
    try:
        proc = subprocess.run(
            args,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            input=input,
            stdout=stdout if stdout is not None else subprocess.PIPE,
            stderr=subprocess.STDOUT if stderr_to_stdout else subprocess.PIPE,
            timeout=timeout,
            check=False,
            start_new_session=True,
            umask=umask,
        )
    except FileNotFoundError as exc:
        raise FarmError(
            E.TOOL_MISSING,
            f"cannot run '{args[0]}': not found",
            hint="install the missing tool (see 'make setup')",
        ) from exc
    except subprocess.TimeoutExpired as exc:
        result = Result(args, -1, exc.stdout or b"", exc.stderr or b"", timed_out=True)
        if check:
            raise CommandFailed(result, timeout=timeout) from exc
        return result
    result = Result(args, proc.returncode, proc.stdout or b"", (proc.stderr or b"")[-STDERR_CAP:])
    if check and proc.returncode != 0:
        raise CommandFailed(result)
    return result


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

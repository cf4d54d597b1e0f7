"""Tools on this machine, ports and processes.

A missing tool skips a test on a developer's machine but fails it in CI (CI=true): CI must never pass by silently
not testing. Outside pytest (a bench), a missing tool ends the program with the same message.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(tool: str) -> str:
    """The path of ``tool``; skips (fails in CI) the current test when it is missing, or exits outside pytest."""
    path = shutil.which(tool)
    if path is not None:
        return path
    if "pytest" in sys.modules:
        import pytest

        if IN_CI:
            pytest.fail(f"required tool '{tool}' is missing in CI: install it via 'make setup'")
        pytest.skip(f"'{tool}' is not installed")
    raise SystemExit(f"'{tool}' is required: install it via 'make setup'")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_group(proc: subprocess.Popen[bytes] | None, grace: float = 10.0) -> None:
    """SIGTERM the process group of ``proc`` (started with ``start_new_session=True``), SIGKILL after ``grace``."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    except ProcessLookupError:
        pass


def stop(proc: subprocess.Popen[bytes] | None, grace: float = 10.0) -> None:
    """Terminate one process (not its group), kill it after ``grace``."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()

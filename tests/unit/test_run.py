"""farm.run: the one place child processes start (run, spawn, exec_replace)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from farm.errors import E, FarmError
from farm.run import STDERR_CAP, CommandFailed, run, spawn

ROOT = Path(__file__).resolve().parents[2]


def test_run_captures_output_and_feeds_input() -> None:
    result = run(["sh", "-c", "cat; echo err >&2"], input=b"hello")
    assert (result.returncode, result.stdout, result.stderr, result.timed_out) == (0, b"hello", b"err\n", False)
    assert result.text == "hello"


def test_run_failure_is_command_failed_with_the_stderr_tail() -> None:
    with pytest.raises(CommandFailed) as info:
        run(["sh", "-c", "echo broken >&2; exit 3"])
    assert info.value.code == E.COMMAND
    assert "exit 3" in info.value.message and "broken" in info.value.message
    assert run(["sh", "-c", "exit 3"], check=False).returncode == 3


def test_run_keeps_only_the_end_of_stderr() -> None:
    result = run([sys.executable, "-c", f"import sys; sys.stderr.write('a' * {STDERR_CAP} + 'END')"])
    assert len(result.stderr) == STDERR_CAP and result.stderr.endswith(b"END")


def test_run_timeout_kills_the_child() -> None:
    # 2 s: long enough for the shell to print before the kill even on a loaded machine
    result = run(["sh", "-c", "echo started; exec sleep 30"], timeout=2, check=False)
    assert result.timed_out and result.returncode == -1 and result.stdout == b"started\n"
    with pytest.raises(CommandFailed, match=r"timed out after 0\.5s"):
        run(["sleep", "30"], timeout=0.5)


def test_run_streams_to_a_file_and_merges_stderr(tmp_path: Path) -> None:
    log = tmp_path / "log"
    with log.open("wb") as fh:
        result = run(["sh", "-c", "echo out; echo err >&2"], stdout=fh, stderr_to_stdout=True)
    assert result.stdout == b""
    assert log.read_bytes() == b"out\nerr\n"


def test_run_sets_cwd_env_and_umask_in_the_child_only(tmp_path: Path) -> None:
    before = os.umask(0o022)
    os.umask(before)
    result = run(
        ["sh", "-c", 'echo "$PWD $FOO $(umask)"'],
        cwd=tmp_path,
        env={"FOO": "bar", "PATH": "/usr/bin:/bin"},
        umask=0o077,
    )
    assert result.text.split() == [str(tmp_path), "bar", "0077"]
    assert os.umask(before) == before


@pytest.mark.parametrize("start", [run, spawn])
def test_a_missing_executable_is_tool_missing(start: object) -> None:
    with pytest.raises(FarmError) as info:
        start(["/nonexistent/mangos-no-such-tool"])  # type: ignore[operator]
    assert info.value.code == E.TOOL_MISSING


def test_spawn_starts_a_child_in_its_own_session_and_logs_argv(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "log"
    caplog.set_level(logging.INFO, logger="farm.run")
    with log.open("wb") as out:
        proc = spawn(["sh", "-c", "echo out; echo err >&2; exec sleep 30"], stdout=out, stderr_to_stdout=True)
    try:
        assert proc.poll() is None
        assert os.getsid(proc.pid) == proc.pid  # a session (and process group) of its own
        assert any("spawn: sh -c" in r.getMessage() for r in caplog.records)
        deadline = time.monotonic() + 10
        while log.read_bytes() != b"out\nerr\n" and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert log.read_bytes() == b"out\nerr\n"


def test_spawn_passes_env_and_cwd(tmp_path: Path) -> None:
    out_path = tmp_path / "out"
    with out_path.open("wb") as out:
        proc = spawn(
            ["sh", "-c", 'echo "$PWD $FOO"'], cwd=tmp_path, env={"FOO": "x", "PATH": "/usr/bin:/bin"}, stdout=out
        )
    assert proc.wait(timeout=10) == 0
    assert out_path.read_text().split() == [str(tmp_path), "x"]


def test_exec_replace_becomes_the_command() -> None:
    code = "from farm.run import exec_replace; exec_replace(['/bin/sh', '-c', 'echo replaced $$'])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=ROOT, timeout=60, check=True)
    assert proc.stdout.startswith(b"replaced ")

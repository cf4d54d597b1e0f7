"""Shared fixtures. Expensive things (the host environment digest, a builder key) are made once per session.

A missing tool skips a test on a developer's machine, but fails it in CI (CI=true): CI must never pass by
silently not testing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from farm.trust.keys import BuilderKey, generate

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Farm Test",
    "GIT_AUTHOR_EMAIL": "test@mangos.invalid",
    "GIT_AUTHOR_DATE": "2026-02-03T04:05:06Z",
    "GIT_COMMITTER_NAME": "Farm Test",
    "GIT_COMMITTER_EMAIL": "test@mangos.invalid",
    "GIT_COMMITTER_DATE": "2026-02-03T04:05:06Z",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if IN_CI:
            pytest.fail(f"required tool '{tool}' is missing in CI: install it via 'make setup'")
        pytest.skip(f"'{tool}' is not installed")
    return path


def git(cwd: Path, *args: str) -> str:
    env = dict(os.environ) | GIT_ENV
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


MakeRepo = Callable[..., tuple[Path, str]]


@pytest.fixture
def make_repo(tmp_path: Path) -> MakeRepo:
    """Create a real git repository from a dict of files; returns (path, commit)."""
    require("git")

    def _make(
        name: str, files: dict[str, str], executable: tuple[str, ...] = (), tag: str | None = None
    ) -> tuple[Path, str]:
        repo = tmp_path / "repos" / name
        repo.mkdir(parents=True, exist_ok=True)
        if not (repo / ".git").exists():
            git(repo, "init", "-q", "-b", "main")
        for rel, text in files.items():
            p = repo / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
            if rel in executable:
                p.chmod(0o755)
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", f"{name} update")
        if tag:
            git(repo, "tag", "-f", tag)
        return repo, git(repo, "rev-parse", "HEAD")

    return _make


@pytest.fixture(scope="session")
def builder_key(tmp_path_factory: pytest.TempPathFactory) -> BuilderKey:
    return generate(tmp_path_factory.mktemp("keys"))


def write_recipe(
    directory: Path,
    name: str,
    *,
    git_url: str,
    commit: str,
    steps: list[str],
    outputs: list[str],
    depends: tuple[str, ...] = (),
    ref: str | None = None,
) -> Path:
    """A recipe file written the way a user would write it."""
    lines = [f'name = "{name}"', 'version = "1.0"', f"outputs = {outputs!r}".replace("'", '"')]
    if depends:
        lines.append(f"build-depends = {list(depends)!r}".replace("'", '"'))
    lines += ["", "[source]", f'git = "{git_url}"', f'commit = "{commit}"']
    if ref:
        lines.append(f'ref = "{ref}"')
    lines += ["", "[build]", "steps = ["] + [f"  {s!r}," for s in steps] + ["]"]
    path = directory / f"{name}.toml"
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A real redis-server on a free loopback port, with AOF persistence so a restart keeps its data."""

    def __init__(self, workdir: Path) -> None:
        self.binary = require("redis-server")
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import time

        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.workdir),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--daemonize", "no",
        ]  # fmt: skip
        log = (self.workdir / "redis.log").open("ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        import socket

        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()

"""Shared fixtures, on the shared harness (:mod:`tests.lib`). Expensive things (the host environment digest, a
builder key, redis-server) are made once per session.

A missing tool skips a test on a developer's machine, but fails it in CI (CI=true): CI must never pass by
silently not testing (:func:`tests.lib.tools.require`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from farm.trust.keys import BuilderKey, generate
from tests.lib import xdist_groups
from tests.lib.git import GIT_ENV, commit_files, git
from tests.lib.recipes import write_recipe
from tests.lib.redis_server import RedisServer
from tests.lib.tools import IN_CI, free_port, require

__all__ = ["GIT_ENV", "IN_CI", "MakeRepo", "RedisServer", "free_port", "git", "require", "write_recipe"]

MakeRepo = Callable[..., tuple[Path, str]]


@pytest.fixture
def make_repo(tmp_path: Path) -> MakeRepo:
    """Create (or add a commit to) a real git repository from a dict of files; returns (path, commit)."""
    require("git")

    def _make(
        name: str, files: dict[str, str], executable: tuple[str, ...] = (), tag: str | None = None
    ) -> tuple[Path, str]:
        repo = tmp_path / "repos" / name
        commit = commit_files(repo, files, message=f"{name} update", executable=executable, tag=tag)
        return repo, commit

    return _make


@pytest.fixture(scope="session")
def builder_key(tmp_path_factory: pytest.TempPathFactory) -> BuilderKey:
    return generate(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    group = xdist_groups.assign(items)
    if hasattr(config, "workerinput"):  # an xdist worker: the controller schedules by these groups
        xdist_groups.write_groups(Path(config.option.basetemp), group)


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> xdist_groups.GroupScheduling | None:
    """``--dist loadgroup`` (make test): by the groups of :mod:`tests.lib.xdist_groups`."""
    return xdist_groups.GroupScheduling(config, log) if config.getvalue("dist") == "loadgroup" else None

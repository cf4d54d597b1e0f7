"""Fixtures of the coordinator's unit tests: a counting SQLite state store, a fake dispatcher and store, and a
coordinator over them (:mod:`tests.coordinator.harness`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.coordinator.engine import Coordinator
from farm.coordinator.kv import SqliteKV
from tests.coordinator.harness import CountingKV, FakeDispatcher, FakeStore, coordinator


@pytest.fixture
def kv(tmp_path: Path) -> Iterator[CountingKV]:
    inner = SqliteKV(tmp_path / "state.sqlite")
    yield CountingKV(inner)
    inner.close()


@pytest.fixture
def disp() -> FakeDispatcher:
    return FakeDispatcher()


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def coord(kv: CountingKV, disp: FakeDispatcher, store: FakeStore) -> Coordinator:
    return coordinator(kv, disp, store)

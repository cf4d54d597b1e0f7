"""Integration fixtures shared across modules: a real pinned build environment, made once per session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from farm.envs.debian import EnvRecord, find_spec
from farm.store import Store, open_store
from tests.conftest import require

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Made:
    record: EnvRecord
    store: Store
    records_dir: Path


def _make(root: Path, i: int) -> Made:
    from farm.envs.debian import build_env

    spec = find_spec("bookworm-amd64", REPO / "envs")
    store = open_store(str(root / "store"))
    record = build_env(spec, store, root / f"work-{i}", records_dir=root / "home" / "envs")
    return Made(record, store, root / "home" / "envs")


@pytest.fixture(scope="session")
def made_env(tmp_path_factory: pytest.TempPathFactory) -> Made:
    """bookworm-amd64 made with mmdebstrap (~30 s) into its own store, with its record in HOME/envs."""
    require("mmdebstrap")
    return _make(tmp_path_factory.mktemp("env1"), 1)


@pytest.fixture(scope="session")
def made_twice(made_env: Made, tmp_path_factory: pytest.TempPathFactory) -> tuple[Made, Made]:
    """The same environment made a second time, into a separate store."""
    return made_env, _make(tmp_path_factory.mktemp("env2"), 2)

"""The host environment's package list, cached by the dpkg database's identity (farm.envs.host)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from farm.envs.host import CACHE_NAME, cached_packages, dpkg_state, host_environment, installed_packages

pytestmark = pytest.mark.unit


def test_the_cache_holds_what_dpkg_query_says(tmp_path: Path) -> None:
    cache = tmp_path / CACHE_NAME
    state = dpkg_state()
    assert state is not None, "this host's dpkg database has no identity (journal entries pending?)"
    assert cached_packages(cache, state) == installed_packages()
    assert json.loads(cache.read_bytes()) == {"dpkg": state, "packages": installed_packages()}
    host_environment.cache_clear()
    assert host_environment(tmp_path).digest == host_environment().digest


def test_a_cache_of_another_state_is_read_again(tmp_path: Path) -> None:
    cache = tmp_path / CACHE_NAME
    cache.write_text(json.dumps({"dpkg": "0:0:0:0", "packages": ["forged 1 amd64"]}))
    real = installed_packages()
    assert cached_packages(cache, "1:2:3:4") == real, "the kept list is for another dpkg state"
    assert cached_packages(cache, "1:2:3:4") == real
    cache.write_text(json.dumps({"dpkg": "1:2:3:4", "packages": ["forged 1 amd64"]}))
    assert cached_packages(cache, "1:2:3:4") == ["forged 1 amd64"], "same state: the kept list is used"
    cache.write_text("{not json")
    assert cached_packages(cache, "1:2:3:4") == real
    cache.write_text(json.dumps({"dpkg": "1:2:3:4", "packages": ["forged 1 amd64"]}))
    assert cached_packages(cache, None) == real, "no state: dpkg-query every time"


def test_the_state_changes_with_the_status_file_and_the_journal(tmp_path: Path) -> None:
    status, updates = tmp_path / "status", tmp_path / "updates"
    assert dpkg_state(status, updates) is None, "no status file"
    status.write_text("Package: a\n")
    first = dpkg_state(status, updates)
    assert first is not None, "no journal directory pends nothing"
    updates.mkdir()
    assert dpkg_state(status, updates) == first
    (updates / "tmp.i").write_text("")  # dpkg's temporary file: not an entry
    assert dpkg_state(status, updates) == first
    (updates / "0000").write_text("Package: b\n")
    assert dpkg_state(status, updates) is None, "a pending journal entry"
    (updates / "0000").unlink()
    replaced = tmp_path / "status-new"
    replaced.write_text("Package: a\nPackage: b\n")
    os.replace(replaced, status)  # as dpkg writes it
    assert dpkg_state(status, updates) not in (None, first)

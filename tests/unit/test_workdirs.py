"""Finished build directories (farm.build.workdirs): gone from the work root when discard returns, deleted in the
background, what a dead process left deleted by the next, and deleted in place when they cannot be moved."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from farm.build import workdirs

pytestmark = pytest.mark.unit


def build_dir(work_root: Path, name: str) -> Path:
    d = work_root / name
    (d / "src" / "deep").mkdir(parents=True)
    (d / "src" / "deep" / "f").write_text("x")
    (d / "build.log").write_text("log")
    return d


def test_a_discarded_directory_leaves_the_work_root_at_once_and_is_deleted(tmp_path: Path) -> None:
    work = tmp_path / "work"
    d = build_dir(work, "pkg-1")
    workdirs.discard(d, work)
    assert not d.exists() and list(work.iterdir()) == []
    assert workdirs.drain(work)
    assert list(workdirs.trash_of(work).iterdir()) == []


def test_what_a_dead_process_left_in_the_trash_is_deleted(tmp_path: Path) -> None:
    work = tmp_path / "work"
    trash = workdirs.trash_of(work)
    dead = trash / "999999999-abc"  # no such pid
    live = trash / f"{os.getppid()}-def"  # a live process's: its own deleter will see to it
    for left in (dead, live):
        (left / "src").mkdir(parents=True)
    workdirs.discard(build_dir(work, "pkg-2"), work)
    assert workdirs.drain(work)
    assert sorted(p.name for p in trash.iterdir()) == [live.name]


def test_a_directory_that_cannot_be_moved_is_deleted_in_place(tmp_path: Path) -> None:
    work = tmp_path / "work"
    d = build_dir(work, "pkg-3")
    workdirs.trash_of(work).write_text("a file where the trash would be")
    workdirs.discard(d, work)
    assert not d.exists()

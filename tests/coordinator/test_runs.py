"""Runs as stored (:class:`RunStore`): what a submission writes, and what readers (views, commands) get back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.coordinator import layout
from farm.coordinator.kv import SqliteKV
from farm.coordinator.policy import Lane
from farm.coordinator.records import Job, Run, State
from farm.coordinator.runs import RunStore
from tests.coordinator.harness import ENV, T0, make_jobs

pytestmark = pytest.mark.unit


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[RunStore]:
    kv = SqliteKV(tmp_path / "state.sqlite")
    yield RunStore(kv)
    kv.close()


def run_of(jobs: dict[str, Job], run_id: str, created: float, lane: Lane = Lane.REBUILD) -> Run:
    return Run(run_id, lane, "amd64", ENV, False, created, list(jobs))


def test_a_submission_is_stored_whole_with_its_indexes(runs: RunStore) -> None:
    jobs = make_jobs({"a": [], "b": [], "c": ["a"]}, critical={"a": 2.0, "b": 1.0})
    jobs["b"].state, jobs["b"].outputs = State.CACHED, {"b.tar": "1" * 64}
    run = run_of(jobs, "r1", T0)
    runs.insert(run, jobs)
    kv = runs.kv
    assert kv.zrange(layout.ready_key("amd64", "default", "rebuild", "r1")) == [("a", -2.0)]
    assert kv.smembers(layout.ACTIVE) == {"r1"} and kv.zrange(layout.RUNS) == [("r1", T0)]
    assert kv.pop(layout.INBOX, 10) == [b'{"run": "r1"}'], "the coordinator is told"
    counts = runs.counts("r1")
    assert (counts[State.WAITING], counts[State.CACHED], counts[State.FAILED]) == (2, 1, 0)
    header = runs.header(run)
    assert header["summary"]["waiting"] == 2 and header["total"] == 3 and not header["ok"]
    found = runs.jobs("r1", now=T0 + 10)
    assert list(found) == ["a", "b", "c"]
    assert found["a"].recipe == jobs["a"].recipe and found["a"].ready_since == T0
    assert found["c"].why == "waiting on a"
    light = runs.jobs("r1", recipes=False)
    assert light["a"].recipe == {} and light["a"].deps == [] and light["c"].deps == ["a"]
    assert {n: j.summary(T0) for n, j in light.items()} == {n: j.summary(T0) for n, j in found.items()}


def test_a_ready_build_says_why_it_waits_and_where(runs: RunStore) -> None:
    jobs = make_jobs({"a": [], "b": [], "c": []}, critical={"a": 1.0, "b": 3.0, "c": 2.0})
    runs.insert(run_of(jobs, "r1", T0), jobs)
    runs.kv.hset(layout.WAITING, {"r1": b"all 1 amd64 slots busy (rebuild lane, position {position})"})
    found = runs.jobs("r1")
    assert [found[n].why for n in "bca"] == [f"all 1 amd64 slots busy (rebuild lane, position {p})" for p in (1, 2, 3)]


def test_runs_are_listed_without_scanning_keys(runs: RunStore) -> None:
    for i, created in enumerate((T0 + 2, T0, T0 + 1)):
        jobs = make_jobs({"a": []})
        runs.insert(run_of(jobs, f"r{i}", created), jobs)
    assert [r.id for r in runs.all_runs()] == ["r1", "r2", "r0"]
    assert runs.latest().id == "r0"
    runs.cancel("r2", T0 + 5)
    assert [r.id for r in runs.active()] == ["r1", "r0"]
    assert runs.counts("r2")[State.CANCELLED] == 1
    assert runs.kv.smembers(layout.ACTIVE) == {"r0", "r1"}

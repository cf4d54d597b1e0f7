"""What the views read of the coordinator's state (:class:`RunStore` ``graph``, ``briefs``, ``jobs(names=...)``,
``building``), and that a status or the workers' list reads no more than that: the run's graph once, its live
records once, the listed builds by name, never a whole run's static parts or recipes.

The run (plan order a, b, c, d, e, f, g, h)::

    a (built) ← b (running on w1) ← c        d (ready, 200 s)   e (ready, 100 s, longer critical path)
    f (failed) ← g (blocked)                 h (retry pending)
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.coordinator import layout
from farm.coordinator.kv import SqliteKV
from farm.coordinator.leases import LeaseBoard, WorkerInfo
from farm.coordinator.policy import Lane
from farm.coordinator.records import Held
from farm.coordinator.runs import RunStore, State
from farm.coordinator.views import StatusQuery, run_status, worker_rows
from tests.coordinator.harness import CountingKV
from tests.web.bigrun import finished, plan_of

pytestmark = pytest.mark.unit

NOW = float(int(time.time()))
DEPS = {"a": [], "b": ["a"], "c": ["b"], "d": [], "e": [], "f": [], "g": ["f"], "h": []}
WAITS = "all 1 amd64 slots busy (rebuild lane, position {position})"


@pytest.fixture
def kv(tmp_path: Path) -> Iterator[CountingKV]:
    inner = SqliteKV(tmp_path / "state.sqlite")
    yield CountingKV(inner)
    inner.close()


@pytest.fixture
def run_id(kv: CountingKV) -> str:
    runs = RunStore(kv)
    run, jobs = runs.new(plan_of(DEPS), lane=Lane.REBUILD, arch="amd64", force=False)
    run.created = NOW - 3600
    finished(jobs["a"], NOW - 1000, 100.0)
    b = jobs["b"]
    b.key, b.state, b.worker, b.started_at, b.attempts = "1" * 64, State.RUNNING, "w1", NOW - 30, 1
    b.lease = layout.lease_token("n1", run.id, "b")
    for name, waited in (("d", 200), ("e", 100)):
        jobs[name].key, jobs[name].ready_since, jobs[name].store_checked = "2" * 64, NOW - waited, 0
    jobs["e"].critical_path = 5.0
    f = jobs["f"]
    f.key, f.state, f.why, f.finished_at = "3" * 64, State.FAILED, "build failed: exit 2", NOW - 700
    jobs["g"].state, jobs["g"].why = State.BLOCKED, "blocked by failed dependency f"
    h = jobs["h"]
    h.key, h.retry_at, h.attempts = "4" * 64, NOW + 60, 1
    h.failures = [{"message": "worker lost"}]
    runs.insert(run, jobs)
    kv.hset(layout.WAITING, {run.id: WAITS.encode()})
    return run.id


def test_the_graph_is_one_document_written_at_submission(kv: CountingKV, run_id: str) -> None:
    runs = RunStore(kv)
    graph = runs.graph(run_id)
    assert graph["c"] == (1.0, ["b"]) and graph["e"] == (5.0, []) and list(graph) == list(DEPS)
    assert json.loads(kv.get(layout.graph_key(run_id)) or b"{}")["b"] == [2.0, ["a"]]
    kv.reset()
    assert runs.graph(run_id) is graph and kv.counts["get"] == 1, "kept: only the run's meta is read again"


def test_a_run_stored_without_a_graph_reads_it_from_the_static_parts(kv: CountingKV, run_id: str) -> None:
    runs = RunStore(kv)
    expected = dict(runs.graph(run_id))
    kv.delete(layout.graph_key(run_id))
    run = runs.get(run_id)
    run.created += 1  # another run as far as the cache can tell
    runs.save(run)
    assert runs.graph(run_id) == expected


def test_briefs_say_what_the_whole_jobs_say(kv: CountingKV, run_id: str) -> None:
    runs = RunStore(kv)
    jobs = runs.jobs(run_id, NOW)
    kv.reset()
    briefs = runs.briefs(run_id)
    assert kv.counts["hvalues_json"] == 1 and not kv.counts["hgetall"], "the live records, once; no recipe"
    assert list(briefs) == list(jobs)
    fields = ("state", "deps", "critical_path", "key", "ready_since", "started_at", "finished_at", "retry_at")
    for name, job in jobs.items():
        assert [getattr(briefs[name], f) for f in fields] == [getattr(job, f) for f in fields], name
    assert briefs["b"].state is State.RUNNING and briefs["c"].key is None and briefs["h"].retry_at == NOW + 60


def test_builds_read_by_name_are_the_whole_jobs_with_why_they_wait(kv: CountingKV, run_id: str) -> None:
    runs = RunStore(kv)
    whole = runs.jobs(run_id, NOW)
    assert whole["e"].why == WAITS.format(position=1) and whole["d"].why == WAITS.format(position=2)
    assert whole["c"].why == "waiting on b" and whole["h"].why == "retry in 60s after: worker lost"
    names = ["h", "d", "f", "c", "e", "nothing"]
    briefs = runs.briefs(run_id)
    kv.reset()
    named = runs.jobs(run_id, NOW, names=names, briefs=briefs)
    assert list(named) == ["h", "d", "f", "c", "e"]
    assert {n: j.summary(NOW) for n, j in named.items()} == {n: whole[n].summary(NOW) for n in named}
    assert named["f"].recipe == whole["f"].recipe and named["f"].error == whole["f"].error
    assert kv.counts["hmget"] == 3 and not kv.counts["hvalues_json"], "the named builds only, with briefs given"
    assert runs.jobs(run_id, NOW, names=["d"])["d"].why == WAITS.format(position=2), "briefs read when not given"


def test_a_status_reads_the_run_once_and_the_listed_builds_by_name(kv: CountingKV, run_id: str) -> None:
    runs = RunStore(kv)
    runs.graph(run_id)  # as a server that has shown the run before
    kv.reset()
    status = run_status(runs, run_id, StatusQuery.parse(limit=3), slots={"amd64": 1}, now=NOW)
    assert [b["recipe"] for b in status["builds"]] == ["f", "d", "e"]
    assert status["builds"][1]["why"] == WAITS.format(position=2)
    assert status["summary"]["waiting"] == 4 and status["oldest_waiting_seconds"] == 200.0
    assert kv.counts["hvalues_json"] == 1, "every build's live record, once"
    assert kv.counts["hmget"] == 2 and not kv.counts["hgetall"], "the listed builds' static and live parts"


def test_workers_show_what_they_hold_from_heartbeats(kv: CountingKV, run_id: str) -> None:
    runs = RunStore(kv)
    board = LeaseBoard(kv, 30)
    board.announce(WorkerInfo("w1", "amd64", 1, "x", 1, NOW), ttl=600)
    board.announce(WorkerInfo("w2", "amd64", 1, "x", 2, NOW), ttl=600)
    assert board.claim(layout.lease_token("n1", run_id, "b"), "w1")
    kv.set(layout.BEAT + layout.lease_token("old", run_id, "b"), b"{}", ttl=30)  # a stale lease of b
    kv.set(layout.BEAT + layout.lease_token("n2", run_id, "a"), b"{}", ttl=30)  # a finished build's beat
    assert runs.building() == [Held(run_id, "b", "w1", NOW - 30)]
    kv.reset()
    rows = {r["name"]: r["building"] for r in worker_rows(kv, 30, NOW)}
    assert rows == {"w1": [{"run": run_id, "recipe": "b", "since": NOW - 30}], "w2": []}
    assert not kv.counts["hvalues_json"] and kv.counts["hgetall"] == 1, "no run read whole (hgetall: the disabled)"


def test_a_version_1_run_is_read_from_its_whole_records(kv: CountingKV, run_id: str) -> None:
    runs = RunStore(kv)
    whole = runs.jobs(run_id, NOW)
    for key in (layout.static_key(run_id), layout.recipes_key(run_id), layout.graph_key(run_id)):
        kv.delete(key)
    kv.hset(layout.jobs_key(run_id), {n: j.to_bytes() for n, j in whole.items()})
    run = runs.get(run_id)
    run.created += 2  # nothing kept from the run as it was
    runs.save(run)
    briefs = runs.briefs(run_id)
    assert {n: (b.state, b.deps, b.critical_path) for n, b in briefs.items()} == {
        n: (j.state, j.deps, j.critical_path) for n, j in whole.items()
    }
    named = runs.jobs(run_id, NOW, names=["c", "f"])
    assert {n: j.summary(NOW) for n, j in named.items()} == {n: whole[n].summary(NOW) for n in ("c", "f")}
    status = run_status(runs, run_id, StatusQuery.parse(state="failed"), now=NOW)
    assert [b["recipe"] for b in status["builds"]] == ["f"] and status["critical_path"]["first"] == "b"

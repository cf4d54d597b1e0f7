"""The coordinator's tick on a fake clock, with a fake dispatcher and fake workers over the real state store
(SQLite; the lease board, inbox and indexes are the real ones): dispatch, release, cache, block, retry, why builds
wait, gauges, and what a tick costs. What is stored is read back through
:class:`~farm.coordinator.runs.RunStore`, as the views read it."""

from __future__ import annotations

import pytest

from farm.coordinator import layout
from farm.coordinator.engine import Coordinator
from farm.coordinator.policy import Lane
from farm.coordinator.records import State
from farm.coordinator.runs import RunStore
from farm.errors import E
from tests.coordinator.harness import (
    T0,
    CountingKV,
    FakeDispatcher,
    FakeRecord,
    FakeStore,
    announce,
    build,
    jobs,
    metric,
    submit,
)

pytestmark = pytest.mark.unit


def test_dispatches_only_into_free_slots_best_first(kv: CountingKV, disp: FakeDispatcher, coord: Coordinator) -> None:
    announce(kv, "w1", concurrency=2)
    run = submit(coord, {n: [] for n in "abcde"}, critical={"a": 1, "b": 5, "c": 3, "d": 4, "e": 2})
    coord.tick(T0)
    assert disp.names() == ["b", "d"], "the two longest critical paths, into the two slots"
    assert {r.lease for r, _, _ in disp.sent} == {j.lease for j in jobs(coord, run, T0).values() if j.lease}
    ready = layout.ready_key("amd64", "default", "rebuild", run.id)
    assert kv.zrange(ready) == [("c", -3.0), ("e", -2.0), ("a", -1.0)], "the stored ready index, best first"
    coord.tick(T0 + 1)
    assert len(disp.sent) == 2, "no slot freed: nothing more sent"
    counts = coord.runs.counts(run.id)
    assert (counts[State.QUEUED], counts[State.WAITING]) == (2, 3)
    build(kv, disp, "d")
    coord.tick(T0 + 2)
    assert disp.names() == ["b", "d", "c"]
    assert [m for m, _ in kv.zrange(ready)] == ["e", "a"]


def test_dependents_are_released_when_their_dependencies_are_done(
    kv: CountingKV, disp: FakeDispatcher, coord: Coordinator
) -> None:
    announce(kv, "w1", concurrency=4)
    run = submit(coord, {"a": [], "b": [], "c": ["a", "b"], "d": ["c"]})
    coord.tick(T0)
    assert sorted(disp.names()) == ["a", "b"]
    assert jobs(coord, run, T0)["c"].why == "waiting on a, b"
    build(kv, disp, "a")
    coord.tick(T0 + 1)
    assert jobs(coord, run, T0 + 1)["c"].why == "waiting on b"
    build(kv, disp, "b")
    coord.tick(T0 + 2)
    assert disp.names()[-1] == "c"
    request = disp.last("c")
    assert {d.recipe: dict(d.artifacts) for d in request.dependencies} == {
        "a": {"a.tar": "d" * 64},
        "b": {"b.tar": "d" * 64},
    }
    assert request.build_key.startswith("") and len(request.build_key) == 64, "its key computed from its inputs"
    build(kv, disp, "c")
    coord.tick(T0 + 3)
    build(kv, disp, "d")
    coord.tick(T0 + 4)
    assert coord.runs.get(run.id).status == "done"
    assert coord.status(run.id)["ok"]
    assert kv.smembers(layout.ACTIVE) == set()


def test_a_released_build_found_in_the_store_is_cached(
    kv: CountingKV, disp: FakeDispatcher, store: FakeStore, coord: Coordinator
) -> None:
    announce(kv, "w1")
    run = submit(coord, {"a": [], "b": ["a"], "c": ["b"]})
    coord.tick(T0)
    build(kv, disp, "a")
    store.everything = FakeRecord({"b.tar": "b" * 64})
    coord.tick(T0 + 1)
    found = jobs(coord, run, T0 + 1)
    assert found["b"].state is State.CACHED and found["b"].why == "found in the store"
    assert found["b"].outputs == {"b.tar": "b" * 64}
    assert found["c"].state is State.CACHED, "its dependent released (and found) in the same tick"
    assert disp.names() == ["a"]
    assert coord.runs.get(run.id).status == "done"
    assert len(store.lookups) == 2, "asked once per newly ready build"


def test_a_failure_blocks_every_dependent(kv: CountingKV, disp: FakeDispatcher, coord: Coordinator) -> None:
    announce(kv, "w1")
    run = submit(coord, {"a": [], "b": ["a"], "c": ["b"], "x": []}, critical={"a": 3, "x": 1})
    coord.tick(T0)
    build(kv, disp, "a", ok=False, code=E.BUILD_FAILED)  # a build failure on the only worker: no retry
    coord.tick(T0 + 1)
    found = jobs(coord, run, T0 + 1)
    assert found["a"].state is State.FAILED and found["a"].why == "a went wrong"
    assert (found["b"].state, found["b"].why) == (State.BLOCKED, "blocked by failed dependency a")
    assert (found["c"].state, found["c"].why) == (State.BLOCKED, "blocked by failed dependency b")
    assert disp.names() == ["a", "x"]
    build(kv, disp, "x")
    coord.tick(T0 + 2)
    status = coord.status(run.id)
    assert status["status"] == "done" and not status["ok"]
    assert status["summary"] == {
        "waiting": 0, "queued": 0, "running": 0, "built": 1, "cached": 0, "failed": 1, "blocked": 2, "cancelled": 0
    }  # fmt: skip
    assert {s.value: n for s, n in coord.runs.counts(run.id).items()} == status["summary"]


def test_infrastructure_failures_are_retried_with_back_off(
    kv: CountingKV, disp: FakeDispatcher, coord: Coordinator
) -> None:
    announce(kv, "w1")
    run = submit(coord, {"a": []})
    coord.tick(T0)
    build(kv, disp, "a", ok=False, code=E.WORKER)
    coord.tick(T0 + 1)
    job = jobs(coord, run, T0 + 1.5)["a"]
    assert (job.state, job.retry_at, job.attempts) == (State.WAITING, T0 + 3, 1)
    assert job.why == "retry in 2s after: a went wrong"
    coord.tick(T0 + 2.5)
    assert disp.names() == ["a"], "not before its time"
    coord.tick(T0 + 3)
    assert disp.names() == ["a", "a"]
    build(kv, disp, "a", ok=False, code=E.WORKER)
    coord.tick(T0 + 4)
    assert jobs(coord, run, T0 + 4)["a"].retry_at == T0 + 8, "twice as long after the second failure"
    coord.tick(T0 + 8)
    build(kv, disp, "a", ok=False, code=E.WORKER)
    coord.tick(T0 + 9)
    job = jobs(coord, run, T0 + 9)["a"]
    assert job.state is State.FAILED and job.why == "a went wrong (after 3 attempts)"
    assert [f["code"] for f in job.failures] == [E.WORKER] * 3


def test_why_builds_wait(kv: CountingKV, disp: FakeDispatcher, coord: Coordinator) -> None:
    """Every reason a waiting build gives: dependencies, no worker for its arch, all slots busy (with its place),
    slots taken by a higher lane first, a retry due in N seconds."""
    run = submit(coord, {"a": [], "b": [], "c": [], "d": ["a"]}, critical={"a": 3, "b": 2, "c": 1})
    coord.tick(T0)
    found = jobs(coord, run, T0)
    assert [found[n].why for n in "abcd"] == ["no worker for arch amd64"] * 3 + ["waiting on a"]
    announce(kv, "w1")
    coord.tick(T0 + 5)
    found = jobs(coord, run, T0 + 5)
    assert found["a"].state is State.QUEUED
    assert found["b"].why == "all 1 amd64 slots busy (rebuild lane, position 1)"
    assert found["c"].why == "all 1 amd64 slots busy (rebuild lane, position 2)"
    urgent = submit(coord, {"s": []}, lane=Lane.SECURITY, now=T0 + 6)
    build(kv, disp, "a")
    coord.tick(T0 + 6)
    assert disp.names() == ["a", "s"], "the security build takes the slot that freed"
    found = jobs(coord, run, T0 + 6)
    assert found["b"].why == "amd64 slots went to security lane builds first (rebuild lane, position 1)"
    assert found["d"].why == "amd64 slots went to security lane builds first (rebuild lane, position 3)"
    build(kv, disp, "s", ok=False, code=E.WORKER)
    coord.tick(T0 + 7)
    assert jobs(coord, urgent, T0 + 7.5)["s"].why == "retry in 2s after: s went wrong"
    assert disp.names()[-1] == "b", "meanwhile the slot goes to the rebuild's best, the longest critical path"


def test_gauges_come_from_the_indexes(kv: CountingKV, disp: FakeDispatcher, coord: Coordinator) -> None:
    announce(kv, "w1", arch="arm64")
    submit(coord, {n: [] for n in "abc"}, arch="arm64", now=T0 - 30)
    coord.tick(T0)
    assert metric("mangos_queue_depth", lane="rebuild", arch="arm64") == 2
    assert metric("mangos_oldest_waiting_seconds", lane="rebuild", arch="arm64") == 30
    assert metric("mangos_builds_in_flight", **{"arch": "arm64", "class": "default"}) == 1
    assert metric("mangos_workers_alive", arch="arm64") == 1


def test_a_tick_with_35000_builds_costs_what_changed(kv: CountingKV, disp: FakeDispatcher, coord: Coordinator) -> None:
    """One build finishes in a run of 35,000 (10,000 ready, the rest waiting on them): the tick that records it,
    releases its dependents and dispatches the next costs a few commands, not thousands, and takes well under a
    second."""
    import time

    graph: dict[str, list[str]] = {f"r{i:05d}": [] for i in range(10_000)}
    graph |= {f"w{i:05d}": [f"r{i % 10_000:05d}"] for i in range(25_000)}
    announce(kv, "w1")
    run = submit(coord, graph, critical={n: float(i % 97) for i, n in enumerate(graph)})
    coord.tick(T0)  # loads the run, a slice per tick: once
    while coord.loading:
        coord.tick(T0)
    build(kv, disp, disp.names()[-1])
    coord.tick(T0 + 0.5)
    build(kv, disp, disp.names()[-1])
    kv.reset()
    started = time.process_time()
    coord.tick(T0 + 1)
    seconds = time.process_time() - started
    assert len(disp.sent) == 3
    # The inbox, the two builds' records, the counts, the ready index (the next out, the released dependents in).
    assert kv.total() <= 5, kv.counts
    assert seconds < 0.25, seconds
    counts = coord.runs.counts(run.id)
    assert (counts[State.BUILT], counts[State.QUEUED], counts[State.WAITING]) == (2, 1, 34_997)
    coord.tick(T0 + 1.1)  # the beats of the builds in flight: looked at once a second
    kv.reset()
    coord.tick(T0 + 1.2)
    assert kv.total() <= 1, kv.counts  # nothing due: the inbox looked at, nothing else
    started = time.process_time()
    found = RunStore(kv).jobs(run.id)
    assert len(found) == 35_000
    assert time.process_time() - started < 1.0


def test_an_idle_coordinator_wakes_when_an_outcome_arrives(kv: CountingKV, coord: Coordinator) -> None:
    """Between ticks the coordinator waits on its inbox: a message pushed meanwhile ends the wait at once (not at
    the end of the poll), and the next tick takes it without asking the store again."""
    import threading
    import time

    coord.tick()
    pusher = threading.Timer(0.3, lambda: kv.inner.rpush(layout.INBOX, b'{"run": "nothing"}'))
    pusher.start()
    started = time.monotonic()
    coord._idle(5.0)
    waited = time.monotonic() - started
    pusher.join()
    assert 0.25 <= waited < 2.5, waited
    assert coord._inbox == [b'{"run": "nothing"}']
    kv.reset()
    coord.tick()
    assert kv.counts["pop"] == 0 and kv.counts["get"] == 1, kv.counts  # the run it names: looked up, not found

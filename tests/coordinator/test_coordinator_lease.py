"""One coordinator drives a state at a time (the coordinator lease): a second ``serve`` is a standby that takes over
when the first stops, a second embedded ``rebuild`` waits before submitting, and a coordinator that lost the
lease mid-tick stores nothing and gives back what it took from the inbox."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from farm.coordinator import layout
from farm.coordinator.engine import Coordinator, LeaseLost
from farm.coordinator.kv import SqliteKV
from farm.coordinator.leases import CoordinatorLease, Hold
from farm.coordinator.policy import Lane
from farm.coordinator.records import State
from farm.coordinator.runs import RunStore
from tests.coordinator.harness import (
    T0,
    CountingKV,
    FakeDispatcher,
    FakeRecord,
    FakeStore,
    FakeWorker,
    announce,
    build,
    coordinator,
    jobs,
    sent,
    submit,
)
from tests.web.bigrun import plan_of

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("farm.coordinator.engine.LEASE_POLL", 0.001)


def after(n: int) -> Callable[[], bool]:
    """A ``stop`` for ``serve``: true from the n-th look on."""
    looks = iter(range(n, -1, -1))
    return lambda: next(looks, 0) == 0


def ticks_of(coord: Coordinator) -> list[float]:
    """Record each tick ``coord`` makes (and make it)."""
    made: list[float] = []
    tick = coord.tick

    def counted(now: float | None = None) -> bool:
        made.append(time.time())
        return tick(now)

    coord.tick = counted  # type: ignore[method-assign]
    return made


def test_a_second_coordinator_is_a_standby(
    tmp_path: Path, kv: CountingKV, disp: FakeDispatcher, coord: Coordinator
) -> None:
    announce(kv, "w1")
    run = submit(coord, {"a": [], "b": ["a"]})
    standby = coordinator(SqliteKV(tmp_path / "state.sqlite"), FakeDispatcher())
    first = ticks_of(coord)
    second = ticks_of(standby)
    assert coord._hold()
    standby.serve(poll=0.01, stop=after(5))
    assert second == [] and kv.inner.llen(layout.INBOX) == 1, "it never ticked, nor took from the inbox"
    assert (standby.lease.holder() or {}).get("token") is not None
    coord.serve(poll=0.01, stop=after(1))  # drives, then stops: the lease is given back
    assert len(first) == 1 and disp.names() == ["a"]
    assert kv.inner.get(layout.COORDINATOR) is None
    request, task = sent(disp, "a")
    assert FakeWorker(kv, "w1").claim(request)
    FakeWorker(kv, "w1").finish(request, task)
    standby.serve(poll=0.01, stop=after(2))  # takes over, from the stored state
    assert len(second) == 2 and standby._dispatcher is not None
    assert standby._dispatcher.names() == ["b"]  # type: ignore[attr-defined]
    assert jobs(standby, run, T0)["a"].state is State.BUILT


def test_a_second_embedded_rebuild_waits_before_submitting(tmp_path: Path, kv: CountingKV, coord: Coordinator) -> None:
    assert coord._hold()  # a first rebuild drives this state
    second = coordinator(SqliteKV(tmp_path / "state.sqlite"), FakeDispatcher())
    second.lazy_workers = True  # the embedded broker
    plan = plan_of({"x": []})
    submitted: list[str] = []
    worker = threading.Thread(
        target=lambda: submitted.append(second.submit(plan, lane=Lane.REBUILD, arch="amd64", force=False).id)
    )
    worker.start()
    deadline = time.monotonic() + 30
    while not second._waiting_noted and time.monotonic() < deadline:
        time.sleep(0.01)
    assert second._waiting_noted, "it says it waits"
    assert RunStore(kv).all_runs() == [] and worker.is_alive(), "nothing submitted while the first one drives"
    coord.lease.release()  # the first rebuild ends
    worker.join(timeout=30)
    assert submitted and [r.id for r in RunStore(kv).all_runs()] == submitted
    assert second.lease.held


def test_run_until_done_returns_when_another_process_ended_the_run(
    tmp_path: Path, kv: CountingKV, disp: FakeDispatcher, coord: Coordinator
) -> None:
    run = submit(coord, {"a": []})
    assert coord._hold()
    RunStore(kv).cancel(run.id, T0)
    other = coordinator(SqliteKV(tmp_path / "state.sqlite"), FakeDispatcher())
    assert other.run_until_done(run.id, poll=0.01).status == "cancelled"
    assert coord.lease.held, "the holder is left alone"


def test_a_coordinator_that_lost_its_lease_stores_nothing(
    tmp_path: Path, kv: CountingKV, disp: FakeDispatcher, coord: Coordinator
) -> None:
    announce(kv, "w1")
    run = submit(coord, {"a": [], "b": []})
    clock = [0.0]
    coord.lease.clock = lambda: clock[0]
    assert coord._hold()
    coord.tick(T0)
    request, task = sent(disp, "a")
    assert FakeWorker(kv, "w1").claim(request)
    FakeWorker(kv, "w1").finish(request, task)
    clock[0] += coord.lease.ttl + 1  # stalled past its lease, which lapsed; another coordinator took it
    kv.inner.delete(layout.COORDINATOR)
    other = coordinator(SqliteKV(tmp_path / "state.sqlite"), FakeDispatcher())
    assert other.lease.hold() is Hold.TAKEN
    kv.reset()
    with pytest.raises(LeaseLost):
        coord.tick(T0 + 1)
    assert kv.counts["apply"] == 0 and kv.counts["hset"] == 0, f"nothing stored: {kv.counts}"
    assert jobs(coord, run, T0)["a"].state is State.QUEUED, "as stored before: the outcome not taken up"
    other.tick(T0 + 2)  # the outcome the first one took is the new holder's
    assert jobs(other, run, T0)["a"].state is State.BUILT


def test_a_lease_taken_again_with_nobody_between_keeps_what_it_holds(tmp_path: Path, kv: CountingKV) -> None:
    first = CoordinatorLease(kv, ttl=30.0)
    clock = [0.0]
    first.clock = lambda: clock[0]
    assert first.hold() is Hold.TAKEN
    clock[0] += 31  # stalled past the lease
    kv.inner.delete(layout.COORDINATOR)  # which lapsed
    assert first.hold() is Hold.KEPT, "nobody took it meanwhile: what it holds in memory is still true"
    clock[0] += 31
    kv.inner.delete(layout.COORDINATOR)
    other = CoordinatorLease(SqliteKV(tmp_path / "state.sqlite"), ttl=30.0)
    assert other.hold() is Hold.TAKEN
    assert first.hold() is Hold.LOST
    other.release()
    assert first.hold() is Hold.TAKEN, "another process held it meanwhile: load afresh"


def test_a_long_tick_renews_the_lease_as_it_goes(kv: CountingKV, disp: FakeDispatcher, store: FakeStore) -> None:
    """Releasing builds asks the store about each: a tick that takes longer than the lease keeps it all along."""
    coord = coordinator(kv, disp, store)
    announce(kv, "w1")
    run = submit(coord, {"a": [], **{f"d{i}": ["a"] for i in range(10)}})
    clock = [0.0]
    coord.lease.clock = lambda: clock[0]
    assert coord._hold()
    coord.tick(T0)
    build(kv, disp, "a")
    lookups = store.get_record

    def slow(key: str) -> FakeRecord | None:
        clock[0] += coord.lease.ttl / 4
        return lookups(key)

    store.get_record = slow  # type: ignore[method-assign]
    kv.reset()
    coord.tick(T0 + 1)  # ten lookups: two and a half leases long
    assert kv.counts["swap"] >= 5, "renewed as it went"
    assert coord.runs.counts(run.id)[State.QUEUED] == 1


def test_a_lease_whose_holder_died_on_this_host_is_taken_at_once(tmp_path: Path, kv: CountingKV) -> None:
    """A killed ``rebuild`` leaves its lease behind: the next one on the machine need not wait for it to lapse."""
    dead = subprocess.Popen(["true"])  # its pid is free once it ended
    dead.wait()
    stale = json.dumps({"host": socket.gethostname(), "pid": dead.pid, "since": 0, "token": "x"}).encode()
    kv.inner.set(layout.COORDINATOR, stale, ttl=60)
    assert CoordinatorLease(kv).hold() is Hold.TAKEN
    alive = json.dumps({"host": socket.gethostname(), "pid": os.getppid(), "since": 0, "token": "y"}).encode()
    kv.inner.set(layout.COORDINATOR, alive, ttl=60)
    assert CoordinatorLease(kv).hold() is Hold.LOST, "a live holder keeps it"
    elsewhere = json.dumps({"host": "another-host", "pid": dead.pid, "since": 0, "token": "z"}).encode()
    kv.inner.set(layout.COORDINATOR, elsewhere, ttl=60)
    assert CoordinatorLease(kv).hold() is Hold.LOST, "a holder on another host may be alive: wait for the lapse"
    earlier = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": 0, "token": "e"}).encode()
    kv.inner.set(layout.COORDINATOR, earlier, ttl=60)
    assert CoordinatorLease(kv).hold() is Hold.TAKEN, "this pid before this process: a restarted container"

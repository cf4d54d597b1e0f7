"""The coordinator takes up runs a slice per tick (farm.coordinator.loading): a large run arriving does not stall
dispatch from the runs already loaded, outcomes for a run being loaded wait for it, a loaded run's stored indexes
are brought in line by writing what differs, and each tick's duration is observed."""

from __future__ import annotations

import gc
import json

import pytest

from farm.coordinator import layout, loading
from farm.coordinator.engine import Coordinator
from farm.coordinator.policy import Lane
from farm.coordinator.records import State
from tests.coordinator.harness import (
    T0,
    CountingKV,
    FakeDispatcher,
    FakeWorker,
    announce,
    jobs,
    metric,
    sent,
    submit,
)

pytestmark = pytest.mark.unit


@pytest.fixture
def one_step_per_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each tick loads one slice of 100 builds: the slicing is seen on runs of a few hundred builds."""
    monkeypatch.setattr(loading, "LOAD_SECONDS", 0.0)
    monkeypatch.setattr(loading, "LOAD_IDLE_SECONDS", 0.0)
    monkeypatch.setattr(loading, "SLICE", 100)


def finish_all(kv: CountingKV, disp: FakeDispatcher) -> int:
    """Every build dispatched so far is claimed and built; how many."""
    for request, _, task in disp.sent:
        w = FakeWorker(kv, "w1")
        if w.claim(request):
            w.finish(request, task)
    done = len(disp.sent)
    disp.sent.clear()
    return done


@pytest.mark.usefixtures("one_step_per_tick")
def test_a_large_run_loads_while_dispatch_goes_on(kv: CountingKV, disp: FakeDispatcher, coord: Coordinator) -> None:
    announce(kv, "w1", concurrency=2)
    small = submit(coord, {f"s{i:03d}": [] for i in range(40)})
    while small.id not in coord.live:
        coord.tick(T0)
    assert len(disp.sent) == 2
    graph = {f"a{i:04d}": [f"a{i - 1:04d}"] if i % 2 else [] for i in range(600)}
    large = submit(coord, graph, critical={n: 9.0 for n in graph}, now=T0 + 1)
    read_whole: list[str] = []
    hgetall = kv.inner.hgetall

    def recorded(key: str) -> dict[str, bytes]:
        read_whole.append(key)
        return hgetall(key)

    kv.inner.hgetall = recorded  # type: ignore[method-assign]
    ticks = 0
    while large.id not in coord.live:
        finish_all(kv, disp)
        kv.reset()
        coord.tick(T0 + 2 + ticks)
        ticks += 1
        assert len(disp.sent) == 2 or large.id in coord.live, f"tick {ticks}: the small run kept its two slots"
        # a slice at most (static parts, records, recipes), and no run read whole
        assert kv.counts["hmget"] <= 3 and kv.counts["hvalues_json"] == 0, kv.counts
        assert not [k for k in read_whole if k.startswith(layout.RUN)], read_whole
    # 6 slices read, its stored ready index read, 6 slices indexed: one step a tick
    assert ticks == 6 + 1 + 6, ticks
    finish_all(kv, disp)
    coord.tick(T0 + 100)
    assert "a" in {str(r.recipe["name"])[0] for r, _, _ in disp.sent}, "then it competes for slots"
    assert gc.isenabled(), "the garbage collector runs again once nothing loads"


@pytest.mark.usefixtures("one_step_per_tick")
def test_an_outcome_for_a_run_being_loaded_waits_for_it(
    kv: CountingKV, disp: FakeDispatcher, coord: Coordinator
) -> None:
    announce(kv, "w1", concurrency=2)
    run = submit(coord, {f"b{i:03d}": [] for i in range(250)} | {"z": ["b000"]})
    while run.id not in coord.live:
        coord.tick(T0)
    first, first_task = sent(disp, disp.names()[0])
    w = FakeWorker(kv, "w1")
    assert w.claim(first)
    kv.inner.rpush(layout.INBOX, json.dumps({"run": run.id}).encode())  # a command changed the run: reload
    coord.tick(T0 + 1)
    assert run.id in coord.loading
    w.finish(first, first_task)
    stale = metric("mangos_stale_results_total")
    while run.id not in coord.live:
        coord.tick(T0 + 2)
    assert metric("mangos_stale_results_total") == stale, "held back, not discarded"
    assert jobs(coord, run, T0 + 2)[str(first.recipe["name"])].state is State.BUILT
    assert coord.runs.counts(run.id)[State.BUILT] == 1


def test_a_loaded_run_stores_only_what_differs_in_its_indexes(
    kv: CountingKV, disp: FakeDispatcher, coord: Coordinator
) -> None:
    run = submit(coord, {"a": [], "b": [], "c": ["a"]}, critical={"a": 3.0, "b": 1.0})
    key = layout.ready_key("amd64", "default", "rebuild", run.id)
    kv.inner.zadd(key, {"ghost": 0.0})  # what a crash between two writes might leave
    kv.inner.zrem(key, "b")
    kv.reset()
    coord.tick(T0)
    assert kv.inner.zrange(key) == [("a", -3.0), ("b", -1.0)]
    assert kv.counts["delete"] == 0, "no ready index rewritten whole"
    again = submit(coord, {"x": []}, lane=Lane.SECURITY)
    kv.reset()
    coord.tick(T0 + 1)
    assert again.id in coord.live
    assert kv.counts["zadd"] == kv.counts["zrem"] == 0, "a run as its submitter indexed it: its counts only"


def test_every_tick_is_timed(kv: CountingKV, coord: Coordinator) -> None:
    before = metric("mangos_coordinator_tick_seconds_count")
    submit(coord, {"a": []})
    coord.tick(T0)
    coord.tick(T0 + 1)
    assert metric("mangos_coordinator_tick_seconds_count") == before + 2
    assert metric("mangos_coordinator_tick_seconds_bucket", le="+Inf") >= before + 2


def test_with_nothing_else_to_do_a_run_loads_at_once(
    monkeypatch: pytest.MonkeyPatch, kv: CountingKV, disp: FakeDispatcher, coord: Coordinator
) -> None:
    monkeypatch.setattr(loading, "LOAD_SECONDS", 0.0)
    monkeypatch.setattr(loading, "SLICE", 100)
    announce(kv, "w1")
    run = submit(coord, {f"a{i:04d}": [] for i in range(600)})
    coord.tick(T0)
    assert run.id in coord.live and len(disp.sent) == 1, "nothing in flight or ready elsewhere: no slice per tick"

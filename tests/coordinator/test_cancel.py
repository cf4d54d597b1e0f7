"""Cancelling a run costs what is in flight, not the run's size; what it did not rewrite reads as cancelled, to
every reader; the coordinator driving the state revokes and recounts; a retry brings the run back."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.coordinator import layout
from farm.coordinator.engine import Coordinator
from farm.coordinator.kv import SqliteKV
from farm.coordinator.records import State
from farm.coordinator.runs import RunStore
from tests.coordinator.harness import (
    T0,
    CountingKV,
    FakeDispatcher,
    FakeWorker,
    announce,
    build,
    jobs,
    sent,
    state,
    submit,
)

pytestmark = pytest.mark.unit


def test_a_cancel_costs_what_is_in_flight(
    tmp_path: Path, kv: CountingKV, disp: FakeDispatcher, coord: Coordinator
) -> None:
    announce(kv, "w1", concurrency=3)
    graph = {f"p{i:05d}": [f"p{i - 1:05d}"] if i % 4 else [] for i in range(20_000)}
    run = submit(coord, graph)
    while run.id not in coord.live:
        coord.tick(T0)
    build(kv, disp, disp.names()[0])
    coord.tick(T0 + 1)  # one built, three in flight, one of them running
    running, _ = sent(disp, disp.names()[1])
    assert FakeWorker(kv, "w1").claim(running)
    flying = set(disp.names()[1:])
    assert len(flying) == 3

    command = CountingKV(SqliteKV(tmp_path / "state.sqlite"))  # the CLI's, another process
    cancelled, in_flight = RunStore(command).cancel(run.id, T0 + 2)
    assert cancelled.status == "cancelled" and {j.name for j in in_flight} == flying
    # the run, its counts (with the names in flight), their records; then one batch of writes
    assert command.counts["get"] == command.counts["hgetall"] == command.counts["hmget"] == 1, command.counts
    assert command.total() <= 12 and command.counts["hvalues_json"] == 0, command.counts
    stored = state(kv, run)
    assert {n for n, s in stored.items() if s is State.CANCELLED} == flying, "only those in flight rewritten"
    assert not FakeWorker(kv, "w2").claim(sent(disp, disp.names()[2])[0]), "a queued build never starts"

    store = RunStore(kv)
    counts = store.counts(run.id)
    assert (counts[State.BUILT], counts[State.CANCELLED], counts[State.WAITING], counts[State.RUNNING]) == (
        1, 19_999, 0, 0,
    )  # fmt: skip
    briefs = store.briefs(run.id)
    assert sum(1 for b in briefs.values() if b.state is State.CANCELLED) == 19_999
    assert briefs["p00004"].finished_at == T0 + 2
    named = store.jobs(run.id, names=["p00009", "p00000"], recipes=False)
    assert next(iter(named.values())).why == "run cancelled" and list(named) == ["p00009", "p00000"]
    assert named["p00009"].state is State.CANCELLED
    assert named["p00000"].state is State.BUILT

    coord.tick(T0 + 3)  # the coordinator hears of it: revokes what it had in flight, drops the run
    assert set(disp.revoked) == {t for _, _, t in disp.sent[1:]}
    assert run.id not in coord.live and not coord.inflight
    assert store.counts(run.id)[State.CANCELLED] == 19_999
    assert not kv.inner.zrange(layout.ready_key("amd64", "default", "rebuild", run.id))


def test_a_cancelled_run_can_be_retried(
    tmp_path: Path, kv: CountingKV, disp: FakeDispatcher, coord: Coordinator
) -> None:
    announce(kv, "w1")
    run = submit(coord, {"a": [], "b": ["a"], "c": []}, critical={"a": 2.0})
    coord.tick(T0)
    RunStore(SqliteKV(tmp_path / "state.sqlite")).cancel(run.id, T0 + 1)
    coord.tick(T0 + 2)
    assert {j.state for j in jobs(coord, run, T0 + 2).values()} == {State.CANCELLED}
    coord.retry(run.id, "a")
    assert {j.state for j in jobs(coord, run, T0 + 3).values()} == {State.WAITING}
    coord.tick(T0 + 3)
    assert disp.names() == ["a", "a"]
    for i in range(3):
        build(kv, disp, disp.names()[-1])
        coord.tick(T0 + 4 + i)
    assert disp.names()[1:] in (["a", "b", "c"], ["a", "c", "b"])
    assert coord.status(run.id)["ok"] and coord.runs.counts(run.id)[State.BUILT] == 3

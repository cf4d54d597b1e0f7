"""Cancelling a run costs what is in flight, not the run's size; what it did not rewrite reads as cancelled, to
every reader; the coordinator driving the state revokes and recounts; a retry brings the run back."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from farm.coordinator import commands, layout
from farm.coordinator.engine import Coordinator
from farm.coordinator.kv import SqliteKV
from farm.coordinator.records import Run, State
from farm.coordinator.runs import RunStore
from farm.errors import E, FarmError
from tests.coordinator.harness import (
    T0,
    CountingKV,
    FakeDispatcher,
    FakeWorker,
    announce,
    build,
    coordinator,
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


def _in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, dict[str, object]]:
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except Exception as exc:  # handed to the test, which asserts on it
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


def _sent_command(kv: CountingKV, before: int) -> None:
    """Wait until the inbox holds one more message than ``before`` (the other process has sent its command)."""
    deadline = time.monotonic() + 10
    while kv.inner.llen(layout.INBOX) <= before:
        assert time.monotonic() < deadline, "the command was never sent"
        time.sleep(0.01)


def test_a_cancel_while_a_coordinator_drives_is_applied_by_it_alone(
    tmp_path: Path, kv: CountingKV, disp: FakeDispatcher, coord: Coordinator
) -> None:
    """The cancel and a build's outcome arrive in one tick: the driving coordinator alone writes the run, taking
    the outcome (the build ended: built) and then the cancel, so the counts agree with the records."""
    announce(kv, "w1", concurrency=2)
    run = submit(coord, {"a": [], "b": [], "c": ["a"], "d": ["b"]})
    assert coord._hold(), "this coordinator drives the state"
    coord.tick(T0)
    assert set(disp.names()) == {"a", "b"}
    build(kv, disp, "a")  # its outcome waits in the inbox
    elsewhere = coordinator(SqliteKV(tmp_path / "state.sqlite"), FakeDispatcher())  # the CLI's, another process
    before = kv.inner.llen(layout.INBOX)
    thread, box = _in_thread(lambda: elsewhere.cancel(run.id))
    _sent_command(kv, before)
    assert state(kv, run)["b"] is State.QUEUED, "the sender wrote nothing itself"
    coord.tick(T0 + 1)
    thread.join(10)
    assert "error" not in box, box
    assert isinstance(box["result"], Run) and box["result"].status == "cancelled"
    counts = coord.runs.counts(run.id)
    records = {n: j.state for n, j in jobs(coord, run, T0 + 1).items()}
    assert sum(counts.values()) == len(records) == 4
    assert counts == {s: sum(1 for r in records.values() if r is s) for s in State}, (counts, records)
    assert records == {"a": State.BUILT, "b": State.CANCELLED, "c": State.CANCELLED, "d": State.CANCELLED}
    assert set(disp.revoked) == {sent(disp, "b")[1]}, "what was in flight is revoked"
    assert run.id not in coord.live and not coord.inflight
    coord.tick(T0 + 2)
    assert coord.runs.get(run.id).status == "cancelled"


def test_a_retry_refused_by_the_driving_coordinator_is_the_senders_error(
    tmp_path: Path, kv: CountingKV, disp: FakeDispatcher, coord: Coordinator
) -> None:
    announce(kv, "w1")
    run = submit(coord, {"a": [], "b": ["a"]})
    assert coord._hold()
    coord.tick(T0)
    elsewhere = coordinator(SqliteKV(tmp_path / "state.sqlite"), FakeDispatcher())
    before = kv.inner.llen(layout.INBOX)
    thread, box = _in_thread(lambda: elsewhere.retry(run.id, "a"))
    _sent_command(kv, before)
    coord.tick(T0 + 1)
    thread.join(10)
    error = box.get("error")
    assert isinstance(error, FarmError) and error.code == E.BUILD_UNKNOWN and "not failed" in error.message, box

    build(kv, disp, "a", ok=False, code=E.SANDBOX_LIMIT)  # a limit hit: failed at once, not retried
    coord.tick(T0 + 2)
    assert state(kv, run)["a"] is State.FAILED
    before = kv.inner.llen(layout.INBOX)
    thread, box = _in_thread(lambda: elsewhere.retry(run.id, "a"))
    _sent_command(kv, before)
    coord.tick(T0 + 3)
    thread.join(10)
    assert "error" not in box, box
    coord.tick(T0 + 4)
    assert disp.names() == ["a", "a"], "retried by the driving coordinator"


def test_a_command_no_coordinator_takes_up_says_so(
    tmp_path: Path, kv: CountingKV, coord: Coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = submit(coord, {"a": []})
    assert coord._hold()  # holds the lease, but never ticks (stuck)
    monkeypatch.setattr(commands, "COMMAND_WAIT", 0.3)
    elsewhere = coordinator(SqliteKV(tmp_path / "state.sqlite"), FakeDispatcher())
    with pytest.raises(FarmError) as caught:
        elsewhere.cancel(run.id)
    assert caught.value.code == E.COORDINATOR_BUSY and "did not take up the cancel" in caught.value.message
    assert caught.value.hint
    assert coord.runs.get(run.id).status == "active"
    coord.lease.release()
    assert elsewhere.cancel(run.id).status == "cancelled", "with the lease free, the sender does it itself"

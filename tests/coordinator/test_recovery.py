"""The coordinator when things go wrong, on a fake clock with a fake dispatcher and fake workers over the real state
store: silent workers lose their lease, late results are discarded, runs are cancelled and retried from another
process, a coordinator is restarted on the same state, local workers die, the broker refuses a build."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.coordinator import layout
from farm.coordinator.engine import Coordinator
from farm.coordinator.kv import SqliteKV
from farm.coordinator.records import State
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
    metric,
    sent,
    state,
    submit,
)

pytestmark = pytest.mark.unit


def test_a_silent_worker_loses_its_lease_and_the_build_goes_elsewhere(
    kv: CountingKV, disp: FakeDispatcher, coord: Coordinator
) -> None:
    announce(kv, "w1")
    announce(kv, "w2")
    run = submit(coord, {"a": []})
    coord.tick(T0)
    first, task = sent(disp, "a")
    assert FakeWorker(kv, "w1").claim(first)
    coord.tick(T0 + 1)
    job = jobs(coord, run, T0 + 1)["a"]
    assert (job.state, job.worker, job.why) == (State.RUNNING, "w1", "building on w1")
    expired = metric("mangos_lease_expiries_total", arch="amd64")
    kv.delete(layout.BEAT + first.lease)  # its heartbeat expired
    coord.tick(T0 + 2)
    again, _ = sent(disp, "a")
    assert again.lease != first.lease and disp.revoked == [task]
    job = jobs(coord, run, T0 + 2)["a"]
    assert (job.state, job.attempts) == (State.QUEUED, 2)
    assert [f["code"] for f in job.failures] == [E.LEASE_EXPIRED]
    assert metric("mangos_lease_expiries_total", arch="amd64") == expired + 1
    assert not FakeWorker(kv, "w1").claim(first), "the old lease is stale: its holder does nothing"


def test_a_stale_result_is_discarded_and_the_winner_kept(
    kv: CountingKV, disp: FakeDispatcher, coord: Coordinator
) -> None:
    announce(kv, "w1")
    announce(kv, "w2")
    run = submit(coord, {"a": [], "b": ["a"]})
    coord.tick(T0)
    frozen, frozen_task = sent(disp, "a")
    slow = FakeWorker(kv, "w1")
    assert slow.claim(frozen)
    coord.tick(T0 + 1)
    kv.delete(layout.BEAT + frozen.lease)  # w1 froze: no heartbeat
    coord.tick(T0 + 2)
    build(kv, disp, "a", worker="w2", digest="2")
    stale = metric("mangos_stale_results_total")
    slow.finish(frozen, frozen_task, digest="1")  # w1 thaws, and reports after the winner
    coord.tick(T0 + 3)
    assert metric("mangos_stale_results_total") == stale + 1
    job = jobs(coord, run, T0 + 3)["a"]
    assert (job.state, job.worker, job.outputs) == (State.BUILT, "w2", {"a.tar": "2" * 64})
    assert disp.last("b").dependencies[0].artifacts == {"a.tar": "2" * 64}, "its dependent gets the winner's"
    slow.finish(frozen, frozen_task, digest="1")  # and once more, late: still discarded
    coord.tick(T0 + 4)
    assert metric("mangos_stale_results_total") == stale + 2
    assert jobs(coord, run, T0 + 4)["a"].outputs == {"a.tar": "2" * 64}


def test_a_late_result_before_the_winner_is_stale_too(kv: CountingKV, disp: FakeDispatcher, coord: Coordinator) -> None:
    announce(kv, "w1")
    announce(kv, "w2")
    run = submit(coord, {"a": []})
    coord.tick(T0)
    frozen, frozen_task = sent(disp, "a")
    slow = FakeWorker(kv, "w1")
    assert slow.claim(frozen)
    coord.tick(T0 + 1)
    kv.delete(layout.BEAT + frozen.lease)
    coord.tick(T0 + 2)
    slow.finish(frozen, frozen_task, digest="1")  # the re-dispatched build is still running elsewhere
    coord.tick(T0 + 3)
    assert jobs(coord, run, T0 + 3)["a"].state is State.QUEUED
    build(kv, disp, "a", worker="w2", digest="2")
    coord.tick(T0 + 4)
    assert jobs(coord, run, T0 + 4)["a"].outputs == {"a.tar": "2" * 64}


def test_cancel_stops_the_run_and_its_builds(
    tmp_path: Path, kv: CountingKV, disp: FakeDispatcher, coord: Coordinator
) -> None:
    announce(kv, "w1", concurrency=2)
    run = submit(coord, {"a": [], "b": [], "c": ["a"]})
    coord.tick(T0)
    a, a_task = sent(disp, "a")
    assert FakeWorker(kv, "w1").claim(a)
    elsewhere = coordinator(SqliteKV(tmp_path / "state.sqlite"), FakeDispatcher())  # the CLI's, another process
    assert elsewhere.cancel(run.id).status == "cancelled"
    assert elsewhere._dispatcher is None, "the command needs no dispatcher: the coordinator revokes"
    stored = state(kv, run)
    assert stored == {"a": State.CANCELLED, "b": State.CANCELLED, "c": State.WAITING}, "in flight: rewritten"
    assert {j.state for j in jobs(coord, run, T0).values()} == {State.CANCELLED}, "the rest reads as cancelled"
    assert jobs(coord, run, T0)["c"].why == "run cancelled"
    b, _ = sent(disp, "b")
    assert not FakeWorker(kv, "w2").claim(b), "a build not yet started never starts"
    stale = metric("mangos_stale_results_total")
    FakeWorker(kv, "w1").finish(a, a_task)
    coord.tick(T0 + 1)
    assert set(disp.revoked) == {t for _, _, t in disp.sent}, "the coordinator revokes what it had in flight"
    assert metric("mangos_stale_results_total") == stale + 1, "the outcome of a cancelled build is discarded"
    assert run.id not in coord.live and not coord.inflight
    assert disp.names() == ["a", "b"]
    assert coord.runs.counts(run.id)[State.CANCELLED] == 3
    assert coord.status(run.id)["status"] == "cancelled"


def test_retry_sends_a_failed_build_again_with_its_blocked_dependents(
    tmp_path: Path, kv: CountingKV, disp: FakeDispatcher, coord: Coordinator
) -> None:
    announce(kv, "w1")
    run = submit(coord, {"a": [], "b": ["a"]})
    coord.tick(T0)
    build(kv, disp, "a", ok=False)
    coord.tick(T0 + 1)
    assert coord.runs.get(run.id).status == "done"
    elsewhere = coordinator(SqliteKV(tmp_path / "state.sqlite"), FakeDispatcher())
    elsewhere.retry(run.id, "a")
    with pytest.raises(FarmError) as err:
        elsewhere.retry(run.id, "a")
    assert err.value.code == E.BUILD_UNKNOWN
    assert state(kv, run) == {"a": State.WAITING, "b": State.WAITING}
    coord.tick(T0 + 2)
    assert disp.names() == ["a", "a"]
    build(kv, disp, "a")
    coord.tick(T0 + 3)
    build(kv, disp, "b")
    coord.tick(T0 + 4)
    assert coord.runs.get(run.id).status == "done" and coord.status(run.id)["ok"]


def test_a_restarted_coordinator_continues_where_the_last_one_stopped(
    tmp_path: Path, kv: CountingKV, disp: FakeDispatcher, coord: Coordinator
) -> None:
    announce(kv, "w1", concurrency=2)
    run = submit(coord, {"a": [], "b": [], "c": ["a", "b"]})
    coord.tick(T0)
    build(kv, disp, "a")
    b, b_task = sent(disp, "b")
    assert FakeWorker(kv, "w1").claim(b)
    coord.tick(T0 + 1)  # a built, b running: then the coordinator is killed
    after = FakeDispatcher()
    restarted = coordinator(SqliteKV(tmp_path / "state.sqlite"), after)
    restarted.tick(T0 + 2)
    assert after.sent == [], "nothing finished or in flight is sent again"
    FakeWorker(kv, "w1").finish(b, b_task)  # b's worker reports to whichever coordinator runs now
    restarted.tick(T0 + 3)
    assert after.names() == ["c"]
    request, _, task = after.sent[0]
    assert FakeWorker(kv, "w1").claim(request)
    FakeWorker(kv, "w1").finish(request, task)
    restarted.tick(T0 + 4)
    assert restarted.runs.get(run.id).status == "done"
    assert disp.names() == ["a", "b"]


def test_dead_local_workers_stop_the_run(kv: CountingKV, disp: FakeDispatcher, coord: Coordinator) -> None:
    announce(kv, "w1")
    submit(coord, {"a": []})
    coord.tick(T0)
    disp.dead = True
    with pytest.raises(FarmError) as err:
        coord.tick(T0 + 1)
    assert err.value.code == E.WORKER


def test_a_build_the_broker_did_not_take_goes_back_to_ready(
    kv: CountingKV, disp: FakeDispatcher, coord: Coordinator
) -> None:
    announce(kv, "w1")
    run = submit(coord, {"a": []})
    disp.fail_next = 1
    coord.tick(T0)
    job = jobs(coord, run, T0)["a"]
    assert (job.state, job.attempts, job.lease) == (State.WAITING, 0, None)
    assert not coord.inflight
    coord.tick(T0 + 1)
    assert disp.names() == ["a"] and jobs(coord, run, T0 + 1)["a"].state is State.QUEUED

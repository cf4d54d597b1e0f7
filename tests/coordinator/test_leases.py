"""The lease board on the real state stores (SQLite and Redis): claims, beats, reports and the workers' registry,
as workers and the coordinator use them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.coordinator import layout
from farm.coordinator.kv import KV, RedisKV, SqliteKV
from farm.coordinator.leases import LeaseBoard, WorkerInfo
from farm.coordinator.records import Job, State
from tests.conftest import RedisServer

pytestmark = pytest.mark.integration

RUN = "20261203T000000Z-abcdef"


@pytest.fixture(params=["sqlite", "redis"])
def kv(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KV]:
    if request.param == "sqlite":
        store: KV = SqliteKV(tmp_path / "state.sqlite")
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        store = RedisKV(server.url.removesuffix("/0") + "/8")
        store.delete(*store.keys("mangos:"))
    yield store
    store.close()


def dispatched(kv: KV, name: str, state: State = State.QUEUED) -> str:
    """A build's live record as the coordinator writes it when it dispatches the build; its lease."""
    lease = layout.lease_token("n" * 32, RUN, name)
    job = Job(name, "1", {}, "", "", "", "", [], 1.0, key="k", state=state, lease=lease, task_id="t")
    kv.hset(layout.jobs_key(RUN), {name: job.dynamic_bytes()})
    return lease


def test_a_lease_names_its_build() -> None:
    token = layout.lease_token("abc", "run-1", "lib.a+b-2")
    assert layout.lease_target(token) == ("run-1", "lib.a+b-2")
    assert layout.lease_target("0" * 32) is None, "a version 1 lease names nothing"
    assert layout.lease_target("x//y") is None


def test_only_the_current_lease_of_a_build_in_flight_is_claimed(kv: KV) -> None:
    board = LeaseBoard(kv, 5)
    lease = dispatched(kv, "a")
    assert not board.claim(layout.lease_token("m" * 32, RUN, "a"), "w1"), "another lease of the same build"
    assert not board.claim("0" * 32, "w1"), "a token naming no build"
    assert not board.claim(layout.lease_token("n" * 32, RUN, "zz"), "w1"), "a build that does not exist"
    assert board.claim(lease, "w1")
    beat = board.beats([lease])[lease]
    assert beat is not None and beat.worker == "w1" and abs(beat.claimed - time.time()) < 5
    for state in (State.BUILT, State.CANCELLED, State.WAITING):
        stale = dispatched(kv, "b", state)
        assert not board.claim(stale, "w2"), state


def test_beats_expire_and_are_renewed(kv: KV) -> None:
    board = LeaseBoard(kv, 1.0)
    lease = dispatched(kv, "a")
    other = dispatched(kv, "b")
    assert board.claim(lease, "w1")
    assert board.beats([lease, other]) == {lease: board.beats([lease])[lease], other: None}
    with board.keep_alive(lease) as heartbeat:
        assert heartbeat.interval == 0.5
        time.sleep(1.6)
        assert board.alive(lease), "renewed while the build runs"
    time.sleep(1.2)
    assert not board.alive(lease) and board.beats([lease]) == {lease: None}


def test_a_report_goes_to_the_coordinators_inbox(kv: KV) -> None:
    board = LeaseBoard(kv, 5)
    lease = dispatched(kv, "a")
    assert board.claim(lease, "w1")
    board.report(lease, "task-1", "w1", {"ok": True})
    [raw] = kv.pop(layout.INBOX, 10)
    message = json.loads(raw)
    assert message["lease"] == lease and message["task"] == "task-1" and message["worker"] == "w1"
    assert message["outcome"] == {"ok": True} and abs(message["claimed"] - time.time()) < 5


def test_the_workers_registry(kv: KV) -> None:
    board = LeaseBoard(kv, 5)
    now = time.time()
    board.announce(WorkerInfo("w1", "amd64", 2, "h1", 11, now), ttl=30)
    board.announce(WorkerInfo("w2", "arm64", 1, "h2", 12, now), ttl=0.3)
    assert [(w.name, w.arch, w.concurrency, w.disabled) for w in board.workers()] == [
        ("w1", "amd64", 2, False),
        ("w2", "arm64", 1, False),
    ]
    time.sleep(0.5)
    assert [w.name for w in board.workers()] == ["w1"], "an expired registration is gone"
    assert kv.smembers(layout.WORKERS) == {"w1"}, "and its name forgotten"
    board.disable("w1", "3 different builds failed")
    assert [w.disabled for w in board.workers()] == [True]
    other = LeaseBoard(kv, 5)
    assert other.is_disabled("w1", max_age=10)
    board.enable("w1")
    assert other.is_disabled("w1", max_age=10), "a recent answer is reused"
    assert not other.is_disabled("w1"), "unless it is asked afresh"
    board.withdraw("w1")
    assert board.workers() == [] and kv.smembers(layout.WORKERS) == set()

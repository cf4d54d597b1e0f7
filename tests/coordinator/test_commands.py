"""State-store commands per build, counted by a real redis-server (INFO commandstats) from the submission of a run
of no-op builds to the last record: the coordinator loop as ``serve`` runs it, and a worker that does what
``workers.tasks.build`` does with the state store (out-of-rotation check, claim, report). Heartbeats are excluded
(a no-op build ends long before its first renewal; the worker's registration is announced before counting)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from farm.build import BuildRequest
from farm.coordinator.kv import RedisKV
from farm.coordinator.leases import DISABLED_TTL, LeaseBoard
from farm.coordinator.policy import Lane
from farm.coordinator.records import Run, State, new_run_id
from farm.coordinator.runs import RunStore
from tests.conftest import RedisServer
from tests.coordinator.harness import FakeDispatcher, announce, coordinator, make_jobs

pytestmark = pytest.mark.integration

log = logging.getLogger(__name__)
BUILDS = 200
TARGET = 10


class QueueDispatcher(FakeDispatcher):
    def __init__(self) -> None:
        super().__init__()
        self.tasks: queue.Queue[tuple[BuildRequest, str] | None] = queue.Queue()

    def submit(self, request: BuildRequest, *, arch: str, task_id: str, cls: str = "default") -> str:
        self.tasks.put((request, task_id))
        return super().submit(request, arch=arch, task_id=task_id)


def work(kv: RedisKV, tasks: queue.Queue[tuple[BuildRequest, str] | None], name: str) -> None:
    board = LeaseBoard(kv, 30)
    while (task := tasks.get()) is not None:
        request, task_id = task
        if board.is_disabled(name, max_age=DISABLED_TTL) or not board.claim(request.lease, name):
            continue
        outcome: dict[str, Any] = {
            "build_key": request.build_key,
            "recipe": request.recipe["name"],
            "ok": True,
            "worker": name,
            "lease": request.lease,
            "record": {"artifacts": [{"name": "out", "digest": "0" * 64}]},
        }
        board.report(request.lease, task_id, name, outcome)


@pytest.fixture
def kv(redis_server: RedisServer) -> Iterator[RedisKV]:
    store = RedisKV(redis_server.url.removesuffix("/0") + "/7")
    store.delete(*store.keys("mangos:"))
    yield store
    store.delete(*store.keys("mangos:"))
    store.close()


def commands(redis_server: RedisServer) -> dict[str, int]:
    stats: dict[str, Any] = redis_server.client().info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


@pytest.mark.parametrize("slots", [1, 4])
def test_state_store_commands_per_no_op_build(
    kv: RedisKV, redis_server: RedisServer, slots: int, record_property: Callable[[str, object], None]
) -> None:
    dispatcher = QueueDispatcher()
    coord = coordinator(kv, dispatcher, lease_timeout=30.0)
    announce(kv, "w1", concurrency=slots)
    workers = [threading.Thread(target=work, args=(kv, dispatcher.tasks, "w1")) for _ in range(slots)]
    for t in workers:
        t.start()
    redis_server.client().config_resetstat()
    try:
        jobs = make_jobs({f"p{i:03d}": [] for i in range(BUILDS)})
        run = Run(new_run_id(), Lane.REBUILD, "amd64", "e" * 64, False, time.time(), list(jobs))
        coord.runs.insert(run, jobs)
        done = coord.run_until_done(run.id, poll=1.0)
    finally:
        for _ in workers:
            dispatcher.tasks.put(None)
        for t in workers:
            t.join(timeout=30)
    counted = commands(redis_server)
    counted.pop("config|resetstat", None)
    counted.pop("info", None)
    per_build = sum(counted.values()) / BUILDS
    log.info("%d slot(s): %.2f state-store commands per build: %s", slots, per_build, counted)
    record_property("state_store_commands_per_build", round(per_build, 2))
    assert done.status == "done" and RunStore(kv).counts(run.id)[State.BUILT] == BUILDS
    assert per_build <= TARGET, counted

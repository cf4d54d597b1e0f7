"""A replayed signed task on a real fleet (a coordinator and a worker process, redis-server, an S3 store) is refused
by the nonce ledger, not by the build's lease.

The attacker has what anyone with access to the broker has: it reads a genuine signed build message while the
worker holds it (Celery's unacknowledged messages are kept in the broker) and puts it back on the build queue, as
it is. Sent again while the build still runs, its lease is current and could be claimed: only the nonce stops it.
Sent again after the build finished, the lease would say "stale": the refusal must still name the nonce. Sent
under a fresh task id it is refused by its signature, which covers the task id.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from farm.errors import E
from farm.trust import audit
from tests.conftest import MakeRepo, write_recipe
from tests.e2e.fleet import Fleet
from tests.lib.moto import MotoServer, s3_env
from tests.lib.recipes import gate_step
from tests.lib.redis_server import RedisServer
from tests.store.conftest import moto_server  # noqa: F401 - the session's moto S3 server

pytestmark = pytest.mark.e2e


@pytest.fixture
def fleet(tmp_path: Path, moto_server: MotoServer) -> Iterator[Fleet]:  # noqa: F811
    server = RedisServer(tmp_path / "redis", appendfsync="off")
    server.start()
    bucket = f"farm-{uuid.uuid4().hex[:12]}"
    moto_server.client.create_bucket(Bucket=bucket)
    fleet = Fleet(tmp_path / "fleet", server, f"s3://{bucket}/farm", s3_env(moto_server.url))
    try:
        fleet.start_coordinator()
        yield fleet
    finally:
        fleet.close()
        server.stop()


def captured(broker: Any) -> tuple[dict[str, Any], str]:
    """The build message a worker is running (Celery keeps it in the broker until acknowledged), and its queue."""
    for raw in broker.hvals("unacked"):
        payload, _exchange, routing_key = json.loads(raw)
        if payload["headers"].get("task") == "mangos.build":
            return payload, routing_key
    raise LookupError("no build message held")


def resend(broker: Any, payload: dict[str, Any], queue: str, *, task_id: str | None = None) -> None:
    """Put the message on the queue again, as it is (a new delivery tag: the transport's own bookkeeping)."""
    message = json.loads(json.dumps(payload))
    message["properties"]["delivery_tag"] = str(uuid.uuid4())
    if task_id is not None:
        message["headers"]["id"] = message["properties"]["correlation_id"] = task_id
    broker.lpush(queue, json.dumps(message))


def events(fleet: Fleet, worker: str) -> list[dict[str, Any]]:
    path = audit.audit_path(fleet.root / worker)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_replayed_signed_task_is_refused_by_its_nonce_not_its_lease(
    fleet: Fleet, make_repo: MakeRepo, tmp_path: Path
) -> None:
    repo, commit = make_repo("replay-src", {"data": "genuine\n"})
    recipes = tmp_path / "recipes"
    write_recipe(recipes, "victim", git_url=str(repo), commit=commit, steps=[gate_step(), 'cp data "$OUT/victim"'])
    fleet.start_worker("w1", concurrency=2)  # a free slot for the replay while the genuine build holds the other
    fleet.wait_workers(1, timeout=60)
    run = fleet.cli("rebuild", str(recipes)).stdout.strip()
    [held] = fleet.wait_held(1, timeout=60)
    broker = fleet.redis.client()
    payload, queue = fleet.wait_for("the held build's message", lambda: _try(captured, broker), timeout=30)
    task_id = payload["headers"]["id"]

    # 1. While the build runs: its lease is current, so only the nonce can refuse the copy.
    fleet.wait_for("the build running", lambda: fleet.status(run)["builds"][0]["state"] == "running", timeout=30)
    resend(broker, payload, queue)
    first = fleet.wait_for("the replay's refusal", lambda: events(fleet, "w1"), timeout=30)
    assert [(e["event"], e["error"]) for e in first] == [(audit.REPLAYED_TASK, E.TASK_REPLAYED)], first
    assert f"task {task_id} " in first[0]["what"] and "as task " + task_id in first[0]["message"]

    # 2. After the build finished (its lease released): refused by the nonce still, not as a stale lease.
    assert held.open()
    status = fleet.wait_run(run, timeout=60)
    assert status["ok"] and status["builds"][0]["state"] == "built", status
    resend(broker, payload, queue)
    again = fleet.wait_for("the second refusal", lambda: e[1:] if len(e := events(fleet, "w1")) > 1 else None, 30)
    assert [(e["event"], e["error"]) for e in again] == [(audit.REPLAYED_TASK, E.TASK_REPLAYED)], again

    # 3. Under a fresh task id: the signature covers the id.
    fresh = str(uuid.uuid4())
    resend(broker, payload, queue, task_id=fresh)
    last = fleet.wait_for("the third refusal", lambda: e[2:] if len(e := events(fleet, "w1")) > 2 else None, 30)
    assert [(e["event"], e["error"]) for e in last] == [(audit.FORGED_TASK, E.TASK_UNSIGNED)], last
    assert f"task {fresh} " in last[0]["what"]

    # The genuine build ran once and its result stands; the replays are counted where an operator looks.
    assert fleet.builds_executed("victim") == 1
    final = fleet.status(run)
    assert final["ok"] and final["builds"][0]["state"] == "built", final
    assert fleet.metric("mangos_security_events_total", "w1", event=audit.REPLAYED_TASK) == 2
    broker.close()


def _try(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except LookupError:
        return None

"""Leases and heartbeats (Launchpad's build cookie).

Every dispatch gets a fresh lease token. The worker that picks the build up claims the lease and keeps it alive
with heartbeats; the coordinator re-dispatches a build whose heartbeats stop, under a new token. A worker holding
a stale token (its build was re-dispatched, or the message was redelivered) is told so and does nothing, and a
result carrying a stale token is discarded.

Worker processes also announce themselves (arch, concurrency) with an expiring registry entry, which is how the
coordinator knows its capacity and how ``mangos-farm workers`` shows who is alive.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from farm.coordinator.kv import KV

log = logging.getLogger(__name__)

LEASE = "mangos:lease:"
BEAT = "mangos:beat:"
CURRENT = "mangos:current:"
WORKER = "mangos:worker:"
DISABLED = "mangos:disabled:"


@dataclass
class LeaseInfo:
    token: str
    run_id: str
    name: str
    build_key: str
    granted: float
    worker: str | None = None
    claimed: float | None = None


@dataclass
class WorkerInfo:
    name: str
    arch: str
    concurrency: int
    host: str
    pid: int
    started: float
    seen: float = 0.0
    disabled: bool = False
    building: list[dict[str, Any]] = field(default_factory=list)


class LeaseBoard:
    def __init__(self, kv: KV, lease_timeout: float) -> None:
        self.kv = kv
        self.lease_timeout = lease_timeout

    # -- coordinator side ------------------------------------------------------------------------------------
    def grant(self, run_id: str, name: str, build_key: str) -> str:
        token = uuid.uuid4().hex
        info = LeaseInfo(token, run_id, name, build_key, time.time())
        self.kv.set(LEASE + token, json.dumps(asdict(info)).encode(), ttl=7 * 24 * 3600)
        self.kv.set(f"{CURRENT}{run_id}:{name}", token.encode(), ttl=7 * 24 * 3600)
        return token

    def revoke(self, run_id: str, name: str) -> None:
        self.kv.delete(f"{CURRENT}{run_id}:{name}")

    def info(self, token: str) -> LeaseInfo | None:
        data = self.kv.get(LEASE + token)
        return LeaseInfo(**json.loads(data)) if data else None

    def alive(self, token: str) -> bool:
        return self.kv.get(BEAT + token) is not None

    def is_current(self, token: str) -> bool:
        info = self.info(token)
        if info is None:
            return False
        current = self.kv.get(f"{CURRENT}{info.run_id}:{info.name}")
        return current is not None and current.decode() == token

    # -- worker side -----------------------------------------------------------------------------------------
    def claim(self, token: str, worker: str) -> bool:
        """Take up a dispatched build. False if the token is stale: the caller must not build."""
        info = self.info(token)
        if info is None or not self.is_current(token):
            return False
        # Beat first: the coordinator treats a claimed lease without a heartbeat as lost.
        self.beat(token)
        info.worker, info.claimed = worker, time.time()
        self.kv.set(LEASE + token, json.dumps(asdict(info)).encode(), ttl=7 * 24 * 3600)
        return True

    def beat(self, token: str) -> None:
        self.kv.set(BEAT + token, b"1", ttl=self.lease_timeout)

    def release(self, token: str) -> None:
        self.kv.delete(BEAT + token)

    def keep_alive(self, token: str) -> Heartbeat:
        return Heartbeat(self, token, max(0.5, self.lease_timeout / 4))

    # -- workers registry ------------------------------------------------------------------------------------
    def announce(self, worker: WorkerInfo, ttl: float) -> None:
        worker.seen = time.time()
        self.kv.set(WORKER + worker.name, json.dumps(asdict(worker)).encode(), ttl=ttl)

    def workers(self) -> list[WorkerInfo]:
        found = []
        disabled = {k[len(DISABLED) :] for k in self.kv.keys(DISABLED)}
        for key in self.kv.keys(WORKER):
            data = self.kv.get(key)
            if data:
                w = WorkerInfo(**json.loads(data))
                w.disabled = w.disabled or w.name in disabled
                found.append(w)
        return found

    def disable(self, worker: str, why: str) -> None:
        self.kv.set(DISABLED + worker, why.encode())

    def enable(self, worker: str) -> None:
        self.kv.delete(DISABLED + worker)

    def is_disabled(self, worker: str) -> bool:
        return self.kv.get(DISABLED + worker) is not None


class Heartbeat:
    """A background thread renewing a lease while a build runs."""

    def __init__(self, board: LeaseBoard, token: str, interval: float) -> None:
        self.board, self.token, self.interval = board, token, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{token[:8]}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.board.beat(self.token)
            except Exception as exc:  # a missed beat is retried; the lease tolerates several
                log.warning("heartbeat for lease %s failed: %s", self.token[:8], exc)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

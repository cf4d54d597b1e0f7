"""Leases, heartbeats and outcomes (Launchpad's build cookie), and the workers' registry.

Every dispatch gets a fresh lease token, written into the build's live record before the task is sent; the token
names its build (``nonce/run/name``, :func:`farm.coordinator.layout.lease_token`), so the worker that picks the
build up checks it with one read (:meth:`LeaseBoard.claim`): a worker holding a token that is no longer its
build's (re-dispatched, cancelled, finished, or a redelivered message) does nothing. The claim starts the
heartbeat (``mangos:beat:<lease>``, expiring after the lease timeout, renewed by :class:`Heartbeat`); the
coordinator reads the beats of its builds in flight in one batched read and re-dispatches a build whose beat is
gone. A finished build's outcome goes to the coordinator's inbox (:meth:`LeaseBoard.report`), which it drains
each tick; an outcome whose lease is no longer current is discarded there.

Worker processes also announce themselves (arch, concurrency) with an expiring registry entry, which is how the
coordinator knows its capacity and how ``mangos-farm workers`` shows who is alive.

The coordinator itself holds a lease too (:class:`CoordinatorLease`): one process at a time drives a state (pops its
inbox, writes its runs). Another waits: a second ``coordinator`` service is a standby that takes over when the
first stops renewing; a second embedded ``rebuild`` on one farm home waits for the first to finish.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from farm.coordinator import layout
from farm.coordinator.kv import KV
from farm.coordinator.layout import BEAT, COORDINATOR, COORDINATOR_TAKES, DISABLED, INBOX, WORKER, WORKERS
from farm.errors import FarmError

log = logging.getLogger(__name__)

DISABLED_TTL = 2.0  # seconds a worker process trusts its answer to "am I out of rotation?"
_STARTED = time.time()  # about when this process started (it imports this module early)


@dataclass(frozen=True)
class Beat:
    """A live heartbeat: who holds the lease, since when."""

    worker: str
    claimed: float


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
    capabilities: list[str] = field(default_factory=list)  # farm.recipes.needs; absent (older workers): none


class LeaseBoard:
    def __init__(self, kv: KV, lease_timeout: float) -> None:
        self.kv = kv
        self.lease_timeout = lease_timeout
        self._claims: dict[str, bytes] = {}  # lease -> the beat this process renews
        self._disabled: dict[str, tuple[float, bool]] = {}  # worker -> (asked at, answer)

    # -- coordinator side ------------------------------------------------------------------------------------
    def beats(self, tokens: Sequence[str]) -> dict[str, Beat | None]:
        """The heartbeat of each lease (None: none, or expired), in reads of up to 1000 leases each."""
        out: dict[str, Beat | None] = {}
        for i in range(0, len(tokens), 1000):
            chunk = list(tokens[i : i + 1000])
            for token, raw in zip(chunk, self.kv.mget([BEAT + t for t in chunk]), strict=True):
                out[token] = _beat(raw)
        return out

    def alive(self, token: str) -> bool:
        return self.kv.get(BEAT + token) is not None

    # -- worker side -----------------------------------------------------------------------------------------
    def claim(self, token: str, worker: str) -> bool:
        """Take up a dispatched build. False if the token is stale: the caller must not build."""
        target = layout.lease_target(token)
        if target is None:
            return False
        raw = self.kv.hget(layout.jobs_key(target[0]), target[1])
        live = json.loads(raw) if raw else {}
        if live.get("lease") != token or live.get("state") not in ("queued", "running"):
            return False
        beat = json.dumps({"worker": worker, "claimed": time.time()}, sort_keys=True).encode()
        self._claims[token] = beat
        self.kv.set(BEAT + token, beat, ttl=self.lease_timeout)
        return True

    def beat(self, token: str) -> None:
        self.kv.set(BEAT + token, self._claims.get(token, b"{}"), ttl=self.lease_timeout)

    def release(self, token: str) -> None:
        """Forget a finished build's claim (its beat expires on its own)."""
        self._claims.pop(token, None)

    def keep_alive(self, token: str) -> Heartbeat:
        return Heartbeat(self, token, max(0.5, self.lease_timeout / 4))

    def report(self, token: str, task_id: str, worker: str, outcome: dict[str, Any]) -> None:
        """Tell the coordinator how the build under ``token`` ended (its inbox; one write)."""
        claimed = _beat(self._claims.get(token))
        message: dict[str, Any] = {"lease": token, "task": task_id, "worker": worker, "outcome": outcome}
        if claimed is not None:
            message["claimed"] = claimed.claimed
        self.kv.rpush(INBOX, json.dumps(message, sort_keys=True).encode())
        self.release(token)

    # -- workers registry ------------------------------------------------------------------------------------
    def announce(self, worker: WorkerInfo, ttl: float) -> None:
        worker.seen = time.time()
        with self.kv.batch() as b:
            b.set(WORKER + worker.name, json.dumps(asdict(worker)).encode(), ttl=ttl)
            b.sadd(WORKERS, worker.name)

    def withdraw(self, name: str) -> None:
        with self.kv.batch() as b:
            b.delete(WORKER + name)
            b.srem(WORKERS, name)

    def workers(self) -> list[WorkerInfo]:
        """The registered workers (three reads, whatever the size of the state)."""
        names = sorted(self.kv.smembers(WORKERS))
        disabled = self.kv.hgetall(DISABLED) if names else {}
        found, gone = [], []
        for name, data in zip(names, self.kv.mget([WORKER + n for n in names]), strict=True):
            if data is None:
                gone.append(name)
                continue
            w = WorkerInfo(**json.loads(data))
            w.disabled = w.disabled or name in disabled
            found.append(w)
        if gone:
            self.kv.srem(WORKERS, *gone)
        return found

    def disable(self, worker: str, why: str) -> None:
        self.kv.hset(DISABLED, {worker: why.encode()})

    def enable(self, worker: str) -> None:
        self.kv.hdel(DISABLED, worker)

    def is_disabled(self, worker: str, *, max_age: float = 0.0) -> bool:
        """Whether ``worker`` is out of rotation; with ``max_age``, an answer up to that old may be reused."""
        asked, answer = self._disabled.get(worker, (float("-inf"), False))
        if time.monotonic() - asked > max_age:
            answer = self.kv.hget(DISABLED, worker) is not None
            self._disabled[worker] = (time.monotonic(), answer)
        return answer


def _beat(raw: bytes | None) -> Beat | None:
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        return Beat(str(data["worker"]), float(data["claimed"]))
    except (ValueError, KeyError, TypeError):
        return Beat("", 0.0)  # alive, holder unknown


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


class Hold(enum.Enum):
    KEPT = "kept"  # held since the last look, or by nobody else meanwhile: what this process holds is still true
    TAKEN = "taken"  # held from now on (first taken, or taken again after another process held it): load afresh
    LOST = "lost"  # another process holds it: do not touch the state


class LeaseLost(Exception):
    """Another process drives the state now: what this coordinator holds in memory is no longer the truth."""


class CoordinatorLease:
    """Which process drives a coordinator state: the holder of ``mangos:coordinator`` (taken, renewed and given
    back by compare-and-set, :meth:`~farm.coordinator.kvbase.KV.swap`; it expires ``ttl`` seconds after the last
    renewal). The holder renews it at most every ``ttl / 6`` seconds (:meth:`hold`, called as it works): one write
    in that time, whatever the load. A holder that stalled past ``ttl`` finds it lapsed on its next look and takes
    it again if it can; the count of takes (``mangos:coordinator:takes``) says whether another process held it
    meanwhile (then the state must be loaded afresh: :attr:`Hold.TAKEN`)."""

    def __init__(self, kv: KV, ttl: float = 30.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.kv = kv
        self.ttl = ttl
        self.clock = clock
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "token": uuid.uuid4().hex}
        self.value = json.dumps(me, sort_keys=True).encode()
        self._renewed: float | None = None  # clock() at the last successful take or renewal
        self._took: int | None = None  # the count of takes when this process last took it

    @property
    def taken(self) -> bool:
        """Whether this process took the lease and has not given it back nor seen it go (it may have lapsed)."""
        return self._renewed is not None

    @property
    def held(self) -> bool:
        """Whether this process holds the lease, as far as its own clock says."""
        return self._renewed is not None and self.clock() - self._renewed < self.ttl

    def hold(self) -> Hold:
        """Take the lease, or renew it when due: :class:`Hold` says whether this process held it all along."""
        now = self.clock()
        if self._renewed is not None and now - self._renewed < self.ttl / 6:
            return Hold.KEPT
        renewable = self._renewed is not None and now - self._renewed < self.ttl
        if renewable and self.kv.swap(COORDINATOR, self.value, self.value, ttl=self.ttl):
            self._renewed = now
            return Hold.KEPT
        self._renewed = None
        if not self.kv.swap(COORDINATOR, None, self.value, ttl=self.ttl):
            dead = self._dead_holder()
            if dead is None or not self.kv.swap(COORDINATOR, dead, self.value, ttl=self.ttl):
                return Hold.LOST
        took, self._took = self._took, self.kv.hincrby(COORDINATOR_TAKES, "n")
        self._renewed = now
        return Hold.KEPT if took is not None and self._took == took + 1 else Hold.TAKEN

    def _dead_holder(self) -> bytes | None:
        """The lease as stored if its holder is a process of this host that is gone (killed, say: there is no
        need to wait for the lease to lapse), else None."""
        raw = self.kv.get(COORDINATOR)
        try:
            holder: dict[str, Any] = json.loads(raw or b"{}")
            host, pid = holder["host"], int(holder["pid"])
        except (ValueError, TypeError, KeyError):
            return None
        if host != socket.gethostname() or raw == self.value:
            return None
        if pid == os.getpid():  # this process, or one before it with the same pid (a restarted container)
            return raw if float(holder.get("since", 0.0)) < _STARTED else None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return raw
        except PermissionError:  # alive, another user's
            return None
        return None

    def holder(self) -> dict[str, Any] | None:
        """Who holds the lease (host, pid, since), or None."""
        raw = self.kv.get(COORDINATOR)
        if raw is None:
            return None
        try:
            found = json.loads(raw)
        except ValueError:
            found = None
        return found if isinstance(found, dict) else {}

    def release(self) -> None:
        """Give the lease back (if this process holds it), so that a waiting coordinator takes over at once."""
        self._took = None
        if self._renewed is not None:
            self._renewed = None
            try:
                self.kv.swap(COORDINATOR, self.value, None)
            except FarmError as exc:  # it lapses on its own
                log.info("could not give the coordinator lease back: %s", exc.message)

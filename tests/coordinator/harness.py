"""A coordinator on a fake clock with fake workers: runs made straight from a dependency graph (no recipes, no git),
a dispatcher that only records what it is asked, a store that is a dict, workers that claim and report through the
real lease board, and a KV wrapper that counts the commands a tick issues."""

from __future__ import annotations

import builtins
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from prometheus_client import REGISTRY

from farm.build import BuildRequest
from farm.coordinator import layout
from farm.coordinator.engine import Config, Coordinator
from farm.coordinator.kv import KV
from farm.coordinator.kvbase import Batch
from farm.coordinator.leases import LeaseBoard, WorkerInfo
from farm.coordinator.policy import Lane
from farm.coordinator.records import Job, Run, State, new_run_id
from farm.errors import E, FarmError
from farm.store import Store

ENV = "e" * 64
T0 = 1_000_000.0


class FakeDispatcher:
    """Records every request; :attr:`dead` makes :meth:`check` fail as dead local workers do."""

    def __init__(self) -> None:
        self.sent: list[tuple[BuildRequest, str, str]] = []
        self.revoked: list[str] = []
        self.stopped: list[tuple[str, str]] = []
        self.dead = False
        self.fail_next = 0
        self.classes: dict[str, str] = {}  # task id -> the class of workers it was sent to

    def submit(self, request: BuildRequest, *, arch: str, task_id: str, cls: str = "default") -> str:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("broker away")
        self.sent.append((request, arch, task_id))
        self.classes[task_id] = cls
        return task_id

    def revoke(self, task_id: str) -> None:
        self.revoked.append(task_id)

    def stop_consuming(self, worker: str, arch: str) -> None:
        self.stopped.append((worker, arch))

    def check(self) -> None:
        if self.dead:
            raise FarmError(E.WORKER, "the local build workers exited unexpectedly", hint="see their log")

    def names(self) -> list[str]:
        return [str(r.recipe["name"]) for r, _, _ in self.sent]

    def last(self, name: str) -> BuildRequest:
        return [r for r, _, _ in self.sent if r.recipe["name"] == name][-1]


@dataclass
class FakeRecord:
    artifacts: dict[str, str]

    def outputs(self) -> dict[str, str]:
        return dict(self.artifacts)


@dataclass
class FakeStore:
    """Records by build key; with ``everything``, that record for any key."""

    records: dict[str, FakeRecord] = field(default_factory=dict)
    everything: FakeRecord | None = None
    lookups: list[str] = field(default_factory=list)

    def get_record(self, key: str) -> FakeRecord | None:
        self.lookups.append(key)
        return self.records.get(key, self.everything)


class CountingKV(KV):
    """Another KV, counting the commands sent to it by name (each write of a batch counts as one)."""

    def __init__(self, inner: KV) -> None:
        self.inner = inner
        self.url = inner.url
        self.counts: Counter[str] = Counter()

    def total(self) -> int:
        return sum(self.counts.values())

    def reset(self) -> None:
        self.counts.clear()

    def _n(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self.counts[name] += 1
        return getattr(self.inner, name)(*args, **kwargs)

    def get(self, key: str) -> bytes | None:
        return cast(bytes | None, self._n("get", key))

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        return cast(list[bytes | None], self._n("mget", keys))

    def set(self, key: str, value: bytes, *, ttl: float | None = None, only_if_absent: bool = False) -> bool:
        return bool(self._n("set", key, value, ttl=ttl, only_if_absent=only_if_absent))

    def swap(self, key: str, expected: bytes | None, value: bytes | None, *, ttl: float | None = None) -> bool:
        return bool(self._n("swap", key, expected, value, ttl=ttl))

    def delete(self, *keys: str) -> None:
        self._n("delete", *keys)

    def keys(self, prefix: str) -> list[str]:
        return cast(list[str], self._n("keys", prefix))

    def hset(self, key: str, mapping: Mapping[str, bytes]) -> None:
        self._n("hset", key, mapping)

    def hget(self, key: str, field: str) -> bytes | None:
        return cast(bytes | None, self._n("hget", key, field))

    def hmget(self, key: str, fields: Sequence[str]) -> list[bytes | None]:
        return cast(list[bytes | None], self._n("hmget", key, fields))

    def hgetall(self, key: str) -> dict[str, bytes]:
        return cast(dict[str, bytes], self._n("hgetall", key))

    def hvalues_json(self, key: str) -> list[Any]:
        return cast(list[Any], self._n("hvalues_json", key))

    def hdel(self, key: str, *fields: str) -> None:
        self._n("hdel", key, *fields)

    def hincrby(self, key: str, field: str, amount: int = 1) -> int:
        return int(self._n("hincrby", key, field, amount))

    def sadd(self, key: str, *members: str) -> None:
        self._n("sadd", key, *members)

    def srem(self, key: str, *members: str) -> None:
        self._n("srem", key, *members)

    def smembers(self, key: str) -> builtins.set[str]:
        return cast(builtins.set[str], self._n("smembers", key))

    def zadd(self, key: str, mapping: Mapping[str, float]) -> None:
        self._n("zadd", key, mapping)

    def zrem(self, key: str, *members: str) -> None:
        self._n("zrem", key, *members)

    def zrange(self, key: str, start: int = 0, stop: int = -1) -> list[tuple[str, float]]:
        return cast(list[tuple[str, float]], self._n("zrange", key, start, stop))

    def zrangebyscore(
        self, key: str, low: float, high: float, *, offset: int = 0, count: int | None = None
    ) -> list[tuple[str, float]]:
        return cast(list[tuple[str, float]], self._n("zrangebyscore", key, low, high, offset=offset, count=count))

    def zrank(self, key: str, member: str) -> int | None:
        return cast(int | None, self._n("zrank", key, member))

    def zcard(self, key: str) -> int:
        return int(self._n("zcard", key))

    def rpush(self, key: str, *values: bytes) -> int:
        return int(self._n("rpush", key, *values))

    def pop(self, key: str, count: int = 1) -> list[bytes]:
        return cast(list[bytes], self._n("pop", key, count))

    def bpop(self, key: str, count: int, timeout: float) -> list[bytes]:
        return cast(list[bytes], self._n("bpop", key, count, timeout))

    def llen(self, key: str) -> int:
        return int(self._n("llen", key))

    def apply(self, batch: Batch) -> None:
        for name, _ in batch.ops:
            self.counts[name] += 1
        self.inner.apply(batch)


def make_jobs(graph: Mapping[str, Sequence[str]], critical: Mapping[str, float] | None = None) -> dict[str, Job]:
    """Jobs of a run from ``graph`` (name -> dependencies, dependencies first); a build with no dependency to
    build gets its key now (as a plan gives it), the others when their dependencies are done."""
    jobs = {}
    for name, deps in graph.items():
        jobs[name] = Job(
            name=name,
            version="1",
            recipe={"name": name, "version": "1", "build": {"steps": ["true"]}},
            recipe_path=f"recipes/{name}.toml",
            fetch_url="/src",
            commit="c" * 40,
            tree="t" * 40,
            deps=list(deps),
            critical_path=(critical or {}).get(name, 1.0),
            key=None if deps else f"key-{name}",
            store_checked=-1 if deps else 0,
        )
    return jobs


def submit(
    coordinator: Coordinator,
    graph: Mapping[str, Sequence[str]],
    *,
    lane: Lane = Lane.REBUILD,
    arch: str = "amd64",
    critical: Mapping[str, float] | None = None,
    now: float = T0,
    force: bool = False,
) -> Run:
    """A run of ``graph`` stored as ``Coordinator.submit`` stores a plan's."""
    jobs = make_jobs(graph, critical)
    run = Run(new_run_id(), lane, arch, ENV, force, now, list(graph))
    coordinator.runs.insert(run, jobs)
    return run


def coordinator(kv: KV, dispatcher: FakeDispatcher, store: FakeStore | None = None, **config: Any) -> Coordinator:
    settings = {"lease_timeout": 4.0, "requeue_after": 60.0, "aging": 600.0} | config
    return Coordinator(kv, cast(Store, store or FakeStore()), lambda: dispatcher, Config(**settings))


def announce(kv: KV, name: str, *, arch: str = "amd64", concurrency: int = 1, ttl: float = 3600) -> None:
    LeaseBoard(kv, 4.0).announce(WorkerInfo(name, arch, concurrency, "host", 1, T0), ttl=ttl)


class FakeWorker:
    """A worker that takes a dispatched build's lease and reports an outcome through the real lease board."""

    def __init__(self, kv: KV, name: str) -> None:
        self.name = name
        self.board = LeaseBoard(kv, 4.0)

    def claim(self, request: BuildRequest) -> bool:
        return self.board.claim(request.lease, self.name)

    def finish(
        self, request: BuildRequest, task_id: str, *, ok: bool = True, code: str = E.BUILD_FAILED, digest: str = "d"
    ) -> None:
        name = str(request.recipe["name"])
        outcome: dict[str, Any] = {
            "build_key": request.build_key,
            "recipe": name,
            "ok": ok,
            "worker": self.name,
            "lease": request.lease,
            "duration": 0.5,
        }
        if ok:
            outcome["record"] = {"artifacts": [{"name": f"{name}.tar", "digest": digest * 64}]}
        else:
            outcome["error"] = {"code": code, "message": f"{name} went wrong"}
        self.board.report(request.lease, task_id, self.name, outcome)


def state(kv: KV, run: Run) -> dict[str, State]:
    """Each build's state as stored."""
    return {n: State(json.loads(v)["state"]) for n, v in kv.hgetall(layout.jobs_key(run.id)).items()}


def jobs(coord: Coordinator, run: Run, now: float) -> dict[str, Job]:
    return coord.runs.jobs(run.id, now)


def sent(disp: FakeDispatcher, name: str) -> tuple[BuildRequest, str]:
    request, _, task = [s for s in disp.sent if s[0].recipe["name"] == name][-1]
    return request, task


def build(kv: KV, disp: FakeDispatcher, name: str, worker: str = "w1", **outcome: object) -> None:
    """``worker`` claims the last dispatch of ``name`` and reports its outcome."""
    request, task = sent(disp, name)
    w = FakeWorker(kv, worker)
    assert w.claim(request)
    w.finish(request, task, **outcome)  # type: ignore[arg-type]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0

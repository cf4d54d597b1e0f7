"""Runs and their builds as persisted coordinator state.

A run is a plan frozen at submission (recipes, commits, trees, dependency graph, environment) plus the live
state of each build. Everything the coordinator needs to continue after a crash is here; nothing needs the
recipe directory again.
"""

from __future__ import annotations

import enum
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from farm.coordinator.kv import KV
from farm.coordinator.plan import Decision, Plan
from farm.coordinator.policy import Lane
from farm.errors import E, FarmError

_T = TypeVar("_T")


# Fields added after state was first persisted: left out while empty, so that a run or job without them is written
# back byte for byte as the previous version wrote it (and the previous version reads what this one writes).
OPTIONAL_FIELDS = ("reason",)


def _encode(record: Any) -> bytes:
    """The persisted form of a run or job: its fields as JSON, keys sorted, empty optional fields left out."""
    fields = asdict(record)
    for name in OPTIONAL_FIELDS:
        if name in fields and not fields[name]:
            del fields[name]
    return json.dumps(fields, sort_keys=True).encode()


def _decode(cls: type[_T], data: bytes, **enums: Callable[[str], Any]) -> _T:
    """The inverse of :func:`_encode`, the fields named in ``enums`` turned back into their enum."""
    raw = json.loads(data)
    for name, kind in enums.items():
        raw[name] = kind(raw[name])
    return cls(**raw)


class State(enum.StrEnum):
    WAITING = "waiting"  # dependencies not done, or ready but no free slot, or retry pending
    QUEUED = "queued"  # dispatched, not yet picked up by a worker
    RUNNING = "running"  # a worker holds the lease
    BUILT = "built"
    CACHED = "cached"
    FAILED = "failed"
    BLOCKED = "blocked"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (State.BUILT, State.CACHED, State.FAILED, State.BLOCKED, State.CANCELLED)

    @property
    def in_flight(self) -> bool:
        return self in (State.QUEUED, State.RUNNING)


@dataclass
class Job:
    """One build of a run."""

    name: str
    version: str
    recipe: dict[str, Any]
    recipe_path: str
    fetch_url: str
    commit: str
    tree: str
    deps: list[str]
    critical_path: float
    key: str | None = None
    environment: str = ""  # empty: the run's environment
    state: State = State.WAITING
    why: str = ""
    outputs: dict[str, str] | None = None
    ready_since: float | None = None
    task_id: str | None = None
    lease: str | None = None
    worker: str | None = None
    dispatched_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    retry_at: float | None = None
    attempts: int = 0
    store_checked: int = -1  # the attempt count at which the store was last asked for this key
    failures: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None
    log_digest: str | None = None
    log_tail: str = ""
    reason: str = ""  # why this build was queued (a security update, a dependency's update); empty: a plain run

    def to_bytes(self) -> bytes:
        return _encode(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> Job:
        return _decode(cls, data, state=State)

    def summary(self, now: float) -> dict[str, Any]:
        out: dict[str, Any] = {
            "recipe": self.name,
            "version": self.version,
            "state": self.state.value,
            "why": self.why,
            "build_key": self.key,
            "artifacts": self.outputs,
            "attempts": self.attempts,
            "worker": self.worker,
            "dispatched_at": self.dispatched_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "failures": self.failures,
            "reason": self.reason,
        }
        if self.state is State.WAITING and self.ready_since:
            out["waiting_seconds"] = round(now - self.ready_since, 1)
        if self.started_at and self.finished_at:
            out["seconds"] = round(self.finished_at - self.started_at, 3)
        if self.state is State.FAILED:
            out |= {"error": self.error, "log": self.log_digest, "log_tail": self.log_tail}
        return out


@dataclass
class Run:
    id: str
    lane: Lane
    arch: str
    environment: str
    force: bool
    created: float
    order: list[str]
    status: str = "active"  # active | done | cancelled
    finished: float | None = None
    reason: str = ""  # why the run was queued ("security update zlib 1:1.2.13.dfsg-1 → ..."); empty: not said

    def to_bytes(self) -> bytes:
        return _encode(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> Run:
        return _decode(cls, data, lane=Lane)


def run_header(run: Run, jobs: dict[str, Job]) -> dict[str, Any]:
    """What every view of a run starts with: identity, status, outcome and counts by state."""
    counts = Counter(j.state.value for j in jobs.values())
    return {
        "run": run.id,
        "status": run.status,
        "lane": run.lane.value,
        "arch": run.arch,
        "created": run.created,
        "finished": run.finished,
        "reason": run.reason,
        "ok": run.status == "done" and not any(j.state in (State.FAILED, State.BLOCKED) for j in jobs.values()),
        "summary": {s.value: counts.get(s.value, 0) for s in State},
    }


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


class RunStore:
    """Runs and jobs in the KV: ``run:<id>`` (meta), ``run:<id>:jobs`` (hash name -> job)."""

    PREFIX = "mangos:run:"

    def __init__(self, kv: KV) -> None:
        self.kv = kv

    def create(
        self,
        plan: Plan,
        *,
        lane: Lane,
        arch: str,
        force: bool,
        run_id: str | None = None,
        reason: str = "",
        reasons: Mapping[str, str] | None = None,
    ) -> Run:
        """A run of ``plan``; ``reason`` says why it was queued, ``reasons`` why each named build was."""
        run = Run(
            id=run_id or new_run_id(),
            lane=lane,
            arch=arch,
            environment=plan.environment.digest,
            force=force,
            created=time.time(),
            order=list(plan.order),
            reason=reason,
        )
        jobs = {}
        for name in plan.order:
            pb = plan.builds[name]
            job = Job(
                name=name,
                version=pb.recipe.version,
                recipe=pb.recipe.content(),
                recipe_path=str(pb.recipe.path),
                fetch_url=pb.recipe.git_location,
                commit=pb.source.commit,
                tree=pb.source.tree,
                deps=list(pb.recipe.build_depends),
                critical_path=pb.critical_path,
                key=pb.key,
                environment=pb.environment if pb.environment != plan.environment.digest else "",
                reason=(reasons or {}).get(name, ""),
            )
            if pb.decision is Decision.CACHED and pb.record is not None and not force:
                job.state, job.why, job.outputs = State.CACHED, pb.reason, pb.record.outputs()
            jobs[name] = job
        self.kv.hset(self._jobs_key(run.id), {n: j.to_bytes() for n, j in jobs.items()})
        self.kv.set(self._meta_key(run.id), run.to_bytes())
        return run

    def _meta_key(self, run_id: str) -> str:
        return f"{self.PREFIX}{run_id}"

    def _jobs_key(self, run_id: str) -> str:
        return f"{self.PREFIX}{run_id}:jobs"

    def get(self, run_id: str) -> Run:
        data = self.kv.get(self._meta_key(run_id))
        if data is None:
            raise FarmError(
                E.RUN_UNKNOWN, f"no run '{run_id}' in {self.kv.url}", hint="list runs with 'mangos-farm status'"
            )
        return Run.from_bytes(data)

    def save(self, run: Run) -> None:
        self.kv.set(self._meta_key(run.id), run.to_bytes())

    def jobs(self, run_id: str) -> dict[str, Job]:
        raw = self.kv.hgetall(self._jobs_key(run_id))
        run = self.get(run_id)
        return {n: Job.from_bytes(raw[n]) for n in run.order if n in raw}

    def save_jobs(self, run_id: str, jobs: list[Job]) -> None:
        if jobs:
            self.kv.hset(self._jobs_key(run_id), {j.name: j.to_bytes() for j in jobs})

    def all_runs(self) -> list[Run]:
        runs = []
        for key in self.kv.keys(self.PREFIX):
            if key.endswith(":jobs"):
                continue
            data = self.kv.get(key)
            if data is not None:
                runs.append(Run.from_bytes(data))
        return sorted(runs, key=lambda r: r.created)

    def active(self) -> list[Run]:
        return [r for r in self.all_runs() if r.status == "active"]

    def latest(self) -> Run:
        runs = self.all_runs()
        if not runs:
            raise FarmError(E.RUN_UNKNOWN, "no runs yet", hint="start one with 'mangos-farm rebuild'")
        return runs[-1]

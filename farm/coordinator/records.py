"""A run and its builds as records: what the coordinator persists (:mod:`farm.coordinator.runs` stores them).

A run is a plan frozen at submission (recipes, commits, trees, dependency graph, environment) plus the live state
of each build. A build's record comes in two parts: the static part, written once at submission
(:data:`STATIC_FIELDS`: never changes), and the dynamic part (:data:`DYNAMIC_FIELDS`: its state, attempts,
lease...), rewritten as the build moves on. A :class:`Job` is the two together.
"""

from __future__ import annotations

import enum
import gc
import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, TypeVar

from farm.coordinator.policy import Lane
from farm.identity import json_encoder

_T = TypeVar("_T")


# The encoders of the persisted forms: json.dumps with these options (made once, see farm.identity.json_encoder).
_SORTED = json_encoder(sort_keys=True)
_SORTED_COMPACT = json_encoder(sort_keys=True, separators=(",", ":"))
_COMPACT = json_encoder(separators=(",", ":"))

# Fields added after state was first persisted: left out while empty, so that a run or job without them is written
# back byte for byte as the previous version wrote it (and the previous version reads what this one writes).
OPTIONAL_FIELDS = ("reason", "needs", "binnmu")


def _encode(record: Any) -> bytes:
    """The persisted form of a run or job: its fields as JSON, keys sorted, empty optional fields left out."""
    values = asdict(record)
    for name in OPTIONAL_FIELDS:
        if name in values and not values[name]:
            del values[name]
    return _SORTED(values).encode()


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

    @property
    def done_ok(self) -> bool:
        """Its dependents may go on."""
        return self in (State.BUILT, State.CACHED)

    @property
    def stops_dependents(self) -> bool:
        return self in (State.FAILED, State.BLOCKED, State.CANCELLED)


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
    needs: list[str] = field(default_factory=list)  # capabilities its worker must have (farm.recipes.needs)
    binnmu: int = 0  # a debian build's binNMU: its binaries are ``version+bN`` (farm.recipes.binnmu); 0: none

    def to_bytes(self) -> bytes:
        """The whole record (the version 1 form)."""
        return _encode(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> Job:
        return _decode(cls, data, state=State)

    def static_bytes(self) -> bytes:
        """The static part but for the recipe (:meth:`recipe_bytes`)."""
        kept = (f for f in STATIC_FIELDS if f != "recipe" and (f not in OPTIONAL or getattr(self, f)))
        fixed = {f: getattr(self, f) for f in kept}
        return _SORTED(fixed).encode()

    def recipe_bytes(self) -> bytes:
        return _SORTED(self.recipe).encode()

    def dynamic_bytes(self) -> bytes:
        """The live part, and the name; fields at their default are left out (a waiting build's record is a few
        bytes)."""
        values = {f: getattr(self, f) for f in DYNAMIC_FIELDS}
        out = {"name": self.name} | {f: v for f, v in values.items() if v != _DEFAULTS[f] or f == "state"}
        return _SORTED_COMPACT(out).encode()

    @classmethod
    def from_parts(cls, static: Mapping[str, Any], dynamic: bytes | Mapping[str, Any] | None) -> Job:
        """A job from its static part and its dynamic record (bytes, or already decoded; absent: as submitted);
        its recipe from ``static`` if there (else empty). A dynamic record holding a whole job (version 1) is
        taken whole. Built without ``__init__`` (a run of 35,000 builds is read in one go): the parts are the
        stored, complete records; lists and dicts of ``static`` are shared, not copied."""
        live = json.loads(dynamic) if isinstance(dynamic, bytes) else dict(dynamic or {})
        if "recipe" in live:
            return cls.from_bytes(json.dumps(live).encode())
        job = object.__new__(cls)
        values = job.__dict__
        values.update(_DEFAULTS)
        values["failures"], values["recipe"], values["needs"] = [], {}, []  # needs: absent in older records
        values["binnmu"] = 0  # absent unless the build is a binNMU (and in older records)
        values.update(static)
        values.update(live)
        values["state"] = _STATES[values["state"]]
        return job

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
            "ready_since": self.ready_since,
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


STATIC_FIELDS = (
    "name",
    "version",
    "recipe",
    "recipe_path",
    "fetch_url",
    "commit",
    "tree",
    "deps",
    "critical_path",
    "environment",
    "reason",
    "needs",
    "binnmu",
)
OPTIONAL = ("needs", "binnmu")  # left out of the static part while empty (older records have neither)
DYNAMIC_FIELDS = tuple(f.name for f in fields(Job) if f.name not in STATIC_FIELDS)
_STATES = {s.value: s for s in State} | {s: s for s in State}
_DEFAULTS: dict[str, Any] = {
    f.name: (f.default_factory() if callable(f.default_factory) else f.default)
    for f in fields(Job)
    if f.name in DYNAMIC_FIELDS
}


class Brief:
    """What a view reads of every build of a run, and no more: its place in the graph (static, from the run's
    graph) and where it stands (from its live record). A run of tens of thousands of builds is summed up from
    these; the builds a view lists are read whole (:class:`Job`). Made by :meth:`of` around the decoded live
    record itself (fields at their default are absent from it: the class holds the defaults), so that reading a
    large run costs one JSON parse and little more. Read-only: ``deps`` is shared with the graph."""

    name: str
    state: State
    deps: list[str]
    critical_path: float
    key: str | None = None
    ready_since: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    retry_at: float | None = None

    @classmethod
    def of(cls, name: str, deps: list[str], critical_path: float, live: dict[str, Any] | None) -> Brief:
        """The brief of build ``name`` from its graph node and its decoded live record (taken over, not copied;
        None: none stored, as submitted)."""
        brief = object.__new__(cls)
        values = brief.__dict__ = live if live is not None else {}
        values["name"], values["deps"], values["critical_path"] = name, deps, critical_path
        values["state"] = _STATES[values.get("state", "waiting")]
        return brief


@dataclass(frozen=True)
class Held:
    """A build a worker holds now (``RunStore.building``): its run, its name, the worker, since when."""

    run: str
    name: str
    worker: str
    since: float | None


def graph_bytes(jobs: Iterable[Job]) -> bytes:
    """A run's dependency graph as one document: build name -> [critical path, dependencies]. Written once at
    submission beside the static parts (it never changes), so that a view reads it in one go."""
    graph = {j.name: [j.critical_path, j.deps] for j in jobs}
    return _COMPACT(graph).encode()


def decode_graph(data: bytes) -> dict[str, tuple[float, list[str]]]:
    """The inverse of :func:`graph_bytes`."""
    raw: dict[str, list[Any]] = json.loads(data)
    return {name: (float(cp), deps) for name, (cp, deps) in raw.items()}


def decode_static(data: bytes) -> dict[str, Any]:
    static: dict[str, Any] = json.loads(data)
    return static


@contextmanager
def no_gc() -> Iterator[None]:
    """Python's cyclic garbage collector paused: building many objects at once otherwise triggers collections
    that scan every object alive, again and again (most of the time of reading a large run)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def decode_many(values: Iterable[bytes]) -> list[dict[str, Any]]:
    """Many JSON records decoded at once (one parse of one array: far quicker than one parse each)."""
    decoded: list[dict[str, Any]] = json.loads(b"[" + b",".join(values) + b"]")
    return decoded


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


def summary_counts(counts: Mapping[State, int] | Counter[State]) -> dict[str, int]:
    """Counts by state as views show them: every state, by name, zeros included."""
    return {s.value: int(counts.get(s, 0)) for s in State}


def run_header(
    run: Run, jobs: Mapping[str, Job] | None = None, *, counts: Mapping[State, int] | None = None
) -> dict[str, Any]:
    """What every view of a run starts with: identity, status, outcome and counts by state (from ``counts``, else
    counted from ``jobs``)."""
    if counts is None:
        counts = Counter(j.state for j in (jobs or {}).values())
    return {
        "run": run.id,
        "status": run.status,
        "lane": run.lane.value,
        "arch": run.arch,
        "created": run.created,
        "finished": run.finished,
        "reason": run.reason,
        "ok": run.status == "done" and not (counts.get(State.FAILED, 0) or counts.get(State.BLOCKED, 0)),
        "summary": summary_counts(counts),
    }


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def new_nonce() -> str:
    return uuid.uuid4().hex

"""The indexes over a run's builds that make a coordinator tick cost what changed, not what exists.

:class:`Live` is an active run as the coordinator holds it: its jobs (the static part of each decoded once, the
recipe left as bytes until the build is dispatched), the dependency graph both ways, for each waiting build the
number of its dependencies not yet done (a finished build decrements its dependents' counts: the one reaching 0
is released), the ready builds of each class best first (a heap per class by critical path, then earliest ready,
then name: the policy's order within a run) and all of them oldest first (for aging and the "oldest waiting" gauge),
and the counts by state. A build's class is what it needs of its worker (:func:`farm.recipes.needs.class_of`).

Each change is also queued for the state store (:meth:`Live.writes`): the builds whose records changed, the
members added to or removed from the run's ready indexes (``mangos:ready:<arch>:<class>:<lane>:<run>``), the counts
that moved (with the names of the builds in flight). :func:`evaluate` brings a run's waiting builds in line with
their dependencies (on submission, on load, after a command changed the run); :func:`index_slice` indexes a run
a slice of its plan order at a time, so that the coordinator loads a large run across several ticks.
"""

from __future__ import annotations

import heapq
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence

from farm.coordinator import layout
from farm.coordinator.kvbase import Batch
from farm.coordinator.records import Job, Run, State
from farm.recipes.needs import class_of


def evaluate(
    run: Run, jobs: Mapping[str, Job], now: float, names: Iterable[str] | None = None
) -> tuple[list[str], list[str]]:
    """Bring waiting builds in line with their dependencies, in plan order (dependencies first, so a block
    cascades in one pass): a build one of whose dependencies failed (or was blocked, or cancelled) is blocked; a
    blocked build none of whose dependencies stops it any more waits again. Returns the names whose
    dependencies are all done (eligible: key, store check, then ready) and the names whose records changed.
    ``names``: only these (a slice of the plan order, evaluated after every slice before it)."""
    eligible: list[str] = []
    changed: list[str] = []
    for name in run.order if names is None else names:
        job = jobs.get(name)
        if job is None or job.state not in (State.WAITING, State.BLOCKED):
            continue
        deps = [jobs[d] for d in job.deps if d in jobs]
        bad = [d.name for d in deps if d.state.stops_dependents]
        if bad:
            if job.state is State.WAITING:
                job.state, job.why, job.finished_at = State.BLOCKED, blocked_why(bad), now
                changed.append(name)
            continue
        if job.state is State.BLOCKED:
            job.state, job.why, job.finished_at = State.WAITING, "its dependencies are retried", None
            changed.append(name)
        if all(d.state.done_ok for d in deps):
            eligible.append(name)
    return eligible, changed


def index_run(
    run: Run, jobs: dict[str, Job], recipes: dict[str, bytes], now: float
) -> tuple[Live, list[str], list[str]]:
    """A run's :class:`Live` with its ready builds indexed (after :func:`evaluate`); also the eligible builds that
    are not ready yet (key unknown, store not asked for this attempt, retry not due) and the names whose records
    changed (blocked, unblocked, or ready from now)."""
    live = Live(run, jobs, recipes, names=())
    later: list[str] = []
    changed: list[str] = []
    index_slice(live, run.order, now, later, changed)
    return live, later, changed


def index_slice(live: Live, names: Sequence[str], now: float, later: list[str], changed: list[str]) -> None:
    """Index ``names`` of ``live`` (every job of the run is in ``live.jobs``; ``names`` is a slice of the plan
    order, indexed after every slice before it): :func:`evaluate` them, count them, and make ready those whose
    dependencies are done; the eligible builds not ready yet are appended to ``later``, the names whose records
    changed to ``changed``."""
    run, jobs = live.run, live.jobs
    eligible, moved = evaluate(run, jobs, now, [n for n in names if n in jobs])
    changed.extend(moved)
    live.add(n for n in names if n in jobs)
    for name in eligible:
        job = jobs[name]
        if job.key is not None and store_settled(run, job) and (job.retry_at is None or job.retry_at <= now):
            if job.ready_since is None:
                job.ready_since = now
                changed.append(name)
            live.make_ready(job)
        else:
            later.append(name)


def blocked_why(bad: list[str]) -> str:
    return f"blocked by failed dependency {', '.join(bad)}"


def store_settled(run: Run, job: Job) -> bool:
    """Whether the store need not be asked about this attempt (asked already, or a forced first attempt)."""
    return job.store_checked == job.attempts or (run.force and job.attempts == 0)


def job_class(job: Job) -> str:
    """The class of slots a build needs (``default`` for a build that needs nothing of its worker)."""
    return class_of(job.needs) if job.needs else layout.DEFAULT_CLASS


def score(job: Job) -> float:
    """A build's score in the persisted ready index: lowest first, so the longest critical path first."""
    return -float(job.critical_path)


class Live:
    """An active run held by the coordinator (see the module docstring). ``recipes`` holds each build's recipe
    as stored; a job's ``recipe`` stays empty in memory (:meth:`recipe` decodes it when needed)."""

    def __init__(
        self, run: Run, jobs: dict[str, Job], recipes: dict[str, bytes], *, names: Iterable[str] | None = None
    ) -> None:
        """The run with its builds ``names`` (default: all of ``jobs``) counted and linked to their dependencies
        (:meth:`add` the others later); nothing is made ready here."""
        self.run = run
        self.jobs = jobs
        self.recipes = recipes
        self.key = layout.ready_key(run.arch, layout.DEFAULT_CLASS, run.lane.value, run.id)  # the default class's
        self.dependents: dict[str, list[str]] = {}
        self.remaining: dict[str, int] = {}
        self.ready: set[str] = set()
        self.ready_by: Counter[str] = Counter()  # class -> how many of ``ready`` are of it
        self._best: dict[str, list[tuple[float, float, str]]] = {}  # class -> its ready builds, best first
        self._oldest: list[tuple[float, str]] = []
        self.counted: dict[str, State] = {}
        self.counts: Counter[State] = Counter()
        self.flight: set[str] = set()  # the builds queued or running
        self.dirty: set[str] = set()
        self._index: dict[str, float | None] = {}  # ready index changes to write: member -> score, None: removed
        self._stored: set[str] = set()  # members of the stored ready index, as far as this run knows
        self._moved: set[State] = set()
        self.reason = ""  # why its ready builds wait, as last written
        self.reasons: dict[str, str] = {}  # class -> why its ready builds wait, as last decided
        self.caps_seen: dict[str, int] = {}  # class -> its slots when its reason was last decided
        self.add(jobs if names is None else names)

    def add(self, names: Iterable[str]) -> None:
        """Count builds of ``jobs`` and link them to their dependencies (after their states are evaluated)."""
        jobs, dependents, remaining, counted = self.jobs, self.dependents, self.remaining, self.counted
        for name in names:
            job = jobs[name]
            left = 0
            for dep in job.deps:
                dependents.setdefault(dep, []).append(name)
                if dep in jobs and not jobs[dep].state.done_ok:
                    left += 1
            remaining[name] = left
            counted[name] = job.state
            self.counts[job.state] += 1
            if job.state.in_flight:
                self.flight.add(name)

    def recipe(self, name: str) -> dict[str, object]:
        import json

        recipe: dict[str, object] = json.loads(self.recipes[name])
        return recipe

    # -- the ready index ---------------------------------------------------------------------------------------
    def index_key(self, cls: str) -> str:
        return layout.ready_key(self.run.arch, cls, self.run.lane.value, self.run.id)

    def keys(self) -> list[str]:
        """The run's ready index of every class."""
        return layout.ready_keys(self.run.arch, self.run.lane.value, self.run.id)

    def classes(self) -> list[str]:
        """The classes the run has ready builds of."""
        return [c for c, n in self.ready_by.items() if n > 0]

    def make_ready(self, job: Job) -> None:
        assert job.ready_since is not None
        cls = job_class(job)
        if job.name not in self.ready:
            self.ready.add(job.name)
            self.ready_by[cls] += 1
        heapq.heappush(self._best.setdefault(cls, []), (-job.critical_path, job.ready_since, job.name))
        heapq.heappush(self._oldest, (job.ready_since, job.name))
        self._index[job.name] = score(job)

    def unready(self, name: str) -> None:
        if name in self.ready:
            self.ready.discard(name)
            self.ready_by[job_class(self.jobs[name])] -= 1
            if name in self._stored:
                self._index[name] = None
            else:  # ready and gone again before it was stored: nothing to write
                self._index.pop(name, None)

    def take(self, k: int, cls: str = layout.DEFAULT_CLASS) -> list[str]:
        """Up to ``k`` ready builds of class ``cls``, best first, out of its heap: give back those not dispatched
        (:meth:`give`)."""
        out: list[str] = []
        best = self._best.get(cls, [])
        while best and len(out) < k:
            _, since, name = heapq.heappop(best)
            if name in self.ready and name not in out and self.jobs[name].ready_since == since:
                out.append(name)
        return out

    def give(self, names: list[str]) -> None:
        for name in names:
            if name in self.ready:
                job = self.jobs[name]
                heap = self._best.setdefault(job_class(job), [])
                heapq.heappush(heap, (-job.critical_path, job.ready_since or 0.0, name))

    def oldest(self) -> str | None:
        """The ready build that has waited longest."""
        while self._oldest:
            since, name = self._oldest[0]
            if name in self.ready and self.jobs[name].ready_since == since:
                return name
            heapq.heappop(self._oldest)
        return None

    # -- bookkeeping -------------------------------------------------------------------------------------------
    def touch(self, job: Job) -> None:
        self.dirty.add(job.name)

    def settle(self) -> list[Job]:
        """Recount the states of the builds changed since the last call; those builds."""
        changed = [self.jobs[n] for n in sorted(self.dirty)]
        for job in changed:
            before = self.counted[job.name]
            if before is not job.state:
                self.counts[before] -= 1
                self.counts[job.state] += 1
                self.counted[job.name] = job.state
                self._moved |= {before, job.state}
                if job.state.in_flight:
                    self.flight.add(job.name)
                else:
                    self.flight.discard(job.name)
        self.dirty.clear()
        return changed

    @property
    def finished(self) -> bool:
        return not any(n for s, n in self.counts.items() if not s.terminal)

    def writes(self, batch: Batch, changed: list[Job]) -> None:
        """Queue the changes since the last call: records (``changed``, from :meth:`settle`), index, counts."""
        batch.hset(layout.jobs_key(self.run.id), {j.name: j.dynamic_bytes() for j in changed})
        gone = [m for m, s in self._index.items() if s is None]
        for cls, members in self._by_class(self._index).items():
            key = self.index_key(cls)
            batch.zrem(key, *(m for m, s in members.items() if s is None))
            batch.zadd(key, {m: s for m, s in members.items() if s is not None})
        if self._moved:
            batch.hset(layout.counts_key(self.run.id), self._counts(self._moved))
        self._stored.difference_update(gone)
        self._stored.update(m for m, s in self._index.items() if s is not None)
        self._index.clear()
        self._moved.clear()

    def _by_class(self, members: Mapping[str, float | None]) -> dict[str, dict[str, float | None]]:
        out: dict[str, dict[str, float | None]] = {}
        jobs = self.jobs
        for m, s in members.items():
            out.setdefault(job_class(jobs[m]) if m in jobs else layout.DEFAULT_CLASS, {})[m] = s
        return out

    def _counts(self, states: Iterable[State]) -> dict[str, bytes]:
        """The counts hash's fields for ``states``, and the builds in flight."""
        fields = {s.value: str(self.counts[s]).encode() for s in states}
        fields[layout.IN_FLIGHT] = json.dumps(sorted(self.flight)).encode()
        return fields

    def rewrite(self, batch: Batch, stored: set[str] | None = None) -> None:
        """Queue the whole of the run's indexes (after a load), replacing whatever was stored before; given the
        members of the stored ready index (``stored``), only what differs from it is written."""
        self._index.clear()
        self._moved.clear()
        if stored is None:
            batch.delete(*self.keys())
            gone: set[str] = set()
            added = self.ready
        else:
            gone, added = stored - self.ready, self.ready - stored
        changes: dict[str, float | None] = dict.fromkeys(gone)
        changes.update({n: score(self.jobs[n]) for n in added})
        for cls, members in self._by_class(changes).items():
            key = self.index_key(cls)
            batch.zrem(key, *(m for m, s in members.items() if s is None))
            batch.zadd(key, {m: s for m, s in members.items() if s is not None})
        self._stored = set(self.ready)
        batch.hset(layout.counts_key(self.run.id), self._counts(State))

    def in_flight(self) -> Iterator[Job]:
        return (self.jobs[n] for n in sorted(self.flight))

"""Read-only views of the coordinator's state as JSON-able rows, shared by the CLI and the web view.

A run's status (:func:`run_status`, behind ``mangos-farm status`` and ``/api/runs/<id>``) starts with a header over
every build of the run (counts by state, done of total, the critical path remaining, an ETA), then lists the builds
a :class:`StatusQuery` selects, one page of them, in :data:`ORDER`:

- **failures first** (failed builds, in plan order);
- then **the oldest waiting**: builds ready to go (their dependencies done) that wait for a slot, longest wait first;
- then **the rest in plan order** (dependencies before dependents).

What the views read from the state layer goes through the small functions under "state reads" below: of every
build of the run, only a :class:`~farm.coordinator.records.Brief` (:func:`_briefs`: the run's graph, kept between
reads, and its live records); the builds listed are read whole, by name (:func:`_details`); counts by state
(:func:`_counts`); what workers build now, from their heartbeats (:func:`_building`); durations of earlier runs
(:func:`previous_durations`). The header's arithmetic is in :mod:`farm.coordinator.remaining`.
"""

from __future__ import annotations

import fnmatch
import math
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from farm.coordinator import policy
from farm.coordinator.kv import KV
from farm.coordinator.leases import LeaseBoard
from farm.coordinator.policy import Lane
from farm.coordinator.records import Brief, no_gc, run_header
from farm.coordinator.remaining import Briefed, critical_path, estimate, eta, finished_seconds, left_of
from farm.coordinator.runs import Job, Run, RunStore, State
from farm.errors import E, FarmError

ORDER = "failures first, then the oldest waiting, then the rest in plan order"
EARLIER_BUDGET = 2000  # builds of earlier runs read at most for previous durations (see previous_durations)
_LANE_OF_LEVEL = {lane.level: lane for lane in Lane}


# -- the query ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StatusQuery:
    """Which builds of a run to list: ``states`` (any of), ``lane`` (the lane a build competes in now), ``name``
    (a glob on the recipe name), ``limit`` builds per page (None: all) and the ``page`` (from 1)."""

    states: frozenset[State] | None = None
    lane: Lane | None = None
    name: str | None = None
    limit: int | None = None
    page: int = 1

    @classmethod
    def parse(
        cls,
        *,
        state: str | None = None,
        lane: str | None = None,
        name: str | None = None,
        limit: str | int | None = None,
        page: str | int | None = None,
        default_limit: int | None = None,
    ) -> StatusQuery:
        """The query from its text form (command-line flags, URL query parameters); ``state`` may name several
        states separated by commas, ``limit`` 0 means all. A bad value raises ``E-STATUS-QUERY``."""
        states = None
        if state:
            wanted = [s.strip() for s in state.split(",") if s.strip()]
            unknown = [s for s in wanted if s not in {v.value for v in State}]
            if unknown or not wanted:
                raise _bad("state", f"unknown state '{','.join(unknown) or state}'", "one or more of " + _names(State))
            states = frozenset(State(s) for s in wanted)
        lane_value = None
        if lane:
            if lane not in {v.value for v in Lane}:
                raise _bad("lane", f"unknown lane '{lane}'", "one of " + _names(Lane))
            lane_value = Lane(lane)
        count = _whole("limit", limit, default_limit, 0)
        return cls(states, lane_value, name or None, count or None, _whole("page", page, 1, 1) or 1)

    def to_json(self) -> dict[str, Any]:
        return {
            "state": sorted(s.value for s in self.states) if self.states else None,
            "lane": self.lane.value if self.lane else None,
            "name": self.name,
            "limit": self.limit,
            "page": self.page,
        }


def _names(values: Iterable[Any]) -> str:
    return ", ".join(str(v.value) for v in values)


def _bad(field: str, message: str, hint: str) -> FarmError:
    return FarmError(E.STATUS_QUERY, message, field=field, hint=hint)


def _whole(field: str, value: str | int | None, default: int | None, least: int) -> int | None:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        number = least - 1
    if number < least:
        raise _bad(field, f"{field} '{str(value)[:40]}' is not a whole number of at least {least}", _WHOLE[field])
    return number


_WHOLE = {"limit": "builds per page; 0 lists them all", "page": "pages count from 1"}


# -- state reads (one function per kind of read) -----------------------------------------------------------------
def _briefs(runs: RunStore, run: Run) -> Mapping[str, Brief]:
    """What a status needs of every build of a run (:class:`Brief`: the graph and the live records), in plan
    order."""
    return runs.briefs(run.id, run)


def _details(runs: RunStore, run: Run, names: list[str], briefs: Mapping[str, Brief], now: float) -> list[Job]:
    """The builds named, whole, with why each waits (for their rows): one read of each part of them."""
    return list(runs.jobs(run.id, now, recipes=False, names=names, briefs=briefs, run=run).values())


def _counts(runs: RunStore, run_id: str, jobs: Mapping[str, Briefed] | None = None) -> dict[str, int]:
    """How many builds of a run are in each state (every state present, zeros included): counted from ``jobs``
    when they have been read anyway (the same snapshot as the builds listed), else the run's stored counts."""
    if jobs is None:
        stored = runs.counts(run_id)
        return {s.value: stored.get(s, 0) for s in State}
    counts = Counter(j.state for j in jobs.values())
    return {s.value: counts.get(s, 0) for s in State}


def _building(runs: RunStore) -> dict[str, list[dict[str, Any]]]:
    """What each worker builds now, by worker name (from the heartbeats: no run is read whole)."""
    building: dict[str, list[dict[str, Any]]] = {}
    for held in runs.building():
        building.setdefault(held.worker, []).append({"run": held.run, "recipe": held.name, "since": held.since})
    return building


def previous_durations(runs: RunStore, run: Run, names: Iterable[str]) -> dict[str, float]:
    """How long each of ``names`` took when last built in an earlier run, where known: the newest earlier runs
    are read (at most :data:`EARLIER_BUDGET` builds of them, so that a status stays cheap)."""
    wanted = set(names)
    found: dict[str, float] = {}
    budget = EARLIER_BUDGET
    for earlier_id in runs.earlier(run) if wanted else []:
        if not wanted:
            break
        try:
            earlier = runs.get(earlier_id)
        except FarmError:  # listed, but its meta is gone
            continue
        if earlier.created >= run.created:  # the index is a hint: the meta says when a run was made
            continue
        budget -= len(earlier.order)
        if budget < 0:
            break
        for name, seconds in finished_seconds(_briefs(runs, earlier).values()).items():
            if name in wanted:
                found[name] = seconds
                wanted.discard(name)
    return found


# -- headers -----------------------------------------------------------------------------------------------------
def header(run: Run, counts: Mapping[str, int]) -> dict[str, Any]:
    """The run's header (:func:`~farm.coordinator.records.run_header`) plus done of total (done: built, cached,
    failed, blocked or cancelled: nothing more happens to it)."""
    by_state = {State(s): n for s, n in counts.items()}
    return run_header(run, counts=by_state) | {
        "total": sum(by_state.values()),
        "done": sum(n for s, n in by_state.items() if s.terminal),
    }


def run_rows(runs: RunStore) -> list[dict[str, Any]]:
    """Every run, newest first, with how many of its builds are in each state."""
    return [header(run, _counts(runs, run.id)) for run in reversed(runs.all_runs())]


def slots(kv: KV, lease_timeout: float) -> dict[str, int]:
    """Build slots of the live workers in rotation, by arch."""
    found: Counter[str] = Counter()
    for w in LeaseBoard(kv, lease_timeout).workers():
        if not w.disabled:
            found[w.arch] += w.concurrency
    return dict(found)


def worker_rows(kv: KV, lease_timeout: float, now: float | None = None) -> list[dict[str, Any]]:
    """Every live worker: what it is, how long it has been up and silent, and what it builds (``workers --json``)."""
    now = time.time() if now is None else now
    workers = LeaseBoard(kv, lease_timeout).workers()
    building = _building(RunStore(kv)) if workers else {}
    return [
        {
            "name": w.name,
            "arch": w.arch,
            "concurrency": w.concurrency,
            "host": w.host,
            "up_seconds": round(now - w.started, 1),
            "last_seen_seconds": round(now - w.seen, 1),
            "disabled": w.disabled,
            "capabilities": w.capabilities,
            "building": building.get(w.name, []),
        }
        for w in workers
    ]


# -- one run -----------------------------------------------------------------------------------------------------
_TERMINAL = frozenset(s for s in State if s.terminal)


def run_status(
    runs: RunStore,
    run_id: str,
    query: StatusQuery | None = None,
    *,
    slots: Mapping[str, int] | None = None,
    aging: float = 600.0,
    now: float | None = None,
) -> dict[str, Any]:
    """A run's header, then the page of its builds ``query`` selects, in :data:`ORDER`.

    ``slots`` are the live build slots by arch (for the ETA; None: unknown, no ETA), ``aging`` the seconds of
    waiting that lift a build one lane (the lane a waiting build competes in is what ``--lane`` matches).
    """
    with no_gc():  # tens of thousands of small records, none of them in a cycle
        return _run_status(
            runs, run_id, query or StatusQuery(), slots, aging=aging, now=time.time() if now is None else now
        )


def _run_status(
    runs: RunStore, run_id: str, query: StatusQuery, slots: Mapping[str, int] | None, *, aging: float, now: float
) -> dict[str, Any]:
    run = runs.get(run_id)
    jobs = _briefs(runs, run)
    chosen = ordered(_select(query, run, jobs, now, aging))
    first = (query.page - 1) * query.limit if query.limit else 0
    page = chosen[first : first + query.limit] if query.limit else chosen
    shown = _details(runs, run, [j.name for j in page], jobs, now)
    live = {n: j for n, j in jobs.items() if j.state not in _TERMINAL}
    waiting = [j.ready_since for j in live.values() if j.state is State.WAITING and j.ready_since]
    estimates = estimate(finished_seconds(jobs.values()), previous_durations(runs, run, live) if live else {})
    left = {n: left_of(j, estimates, now) for n, j in live.items()}
    path = critical_path(run, live, left)
    return header(run, _counts(runs, run_id, jobs)) | {
        "oldest_waiting_seconds": round(now - min(waiting), 1) if waiting else 0.0,
        "critical_path": path,
        "eta": eta(run, left, estimates, path_seconds=path["seconds"], slots=slots, now=now),
        "order": ORDER,
        "query": query.to_json(),
        "matched": len(chosen),
        "page": query.page,
        "pages": max(1, math.ceil(len(chosen) / query.limit)) if query.limit else 1,
        "builds": [j.summary(now) | {"lane": lane_of(run, j, now, aging).value} for j in shown],
    }


def ordered(jobs: Iterable[Briefed]) -> list[Briefed]:
    """``jobs``, given in plan order, in :data:`ORDER` (the sort is stable: plan order within each group)."""

    def key(job: Briefed) -> tuple[int, float]:
        if job.state is State.FAILED:
            return (0, 0.0)
        if job.state is State.WAITING and job.ready_since is not None:
            return (1, job.ready_since)
        return (2, 0.0)

    return sorted(jobs, key=key)


def lane_of(run: Run, job: Briefed, now: float, aging: float) -> Lane:
    """The lane a build competes in: its run's, or for a build waiting for a slot, the lane waiting lifted it to."""
    if job.state is not State.WAITING or job.ready_since is None or job.key is None:
        return run.lane
    cand = policy.Candidate(run.id, job.name, run.lane, run.arch, job.ready_since, job.critical_path)
    level = int(policy.effective_level(cand, now, aging))
    return _LANE_OF_LEVEL.get(min(level, max(_LANE_OF_LEVEL)), run.lane)


def _select(query: StatusQuery, run: Run, jobs: Mapping[str, Briefed], now: float, aging: float) -> Iterable[Briefed]:
    """The builds ``query`` selects, in plan order (one filter after the other, the cheapest first)."""
    chosen: Iterable[Briefed] = jobs.values()
    if query.states is not None:
        states = query.states
        chosen = [j for j in chosen if j.state in states]
    if query.name is not None:
        match = _glob(query.name).fullmatch
        chosen = [j for j in chosen if match(j.name) is not None]
    if query.lane is not None:
        lane = query.lane
        chosen = [j for j in chosen if lane_of(run, j, now, aging) is lane]
    return chosen


_GLOBS: dict[str, re.Pattern[str]] = {}


def _glob(pattern: str) -> re.Pattern[str]:
    if pattern not in _GLOBS:
        _GLOBS[pattern] = re.compile(fnmatch.translate(pattern))
    return _GLOBS[pattern]

"""What remains of a run: the critical path through the builds not yet done and when the run should be done, from
the durations of builds already done. Pure functions of what :mod:`farm.coordinator.views` read.

A build not yet done is expected to take its recipe's previous duration where one is known, else the median of this
run's finished builds (:class:`Estimates`). The critical path is the longest chain of builds not yet done, each
waiting on the one before; the ETA is the larger of that chain and the remaining work spread over the arch's slots.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from farm.coordinator.runs import Run, State


class Briefed(Protocol):
    """What a status reads of every build of a run: a :class:`~farm.coordinator.records.Brief` (what views read) or
    a whole :class:`~farm.coordinator.records.Job`."""

    @property
    def name(self) -> str: ...
    @property
    def state(self) -> State: ...
    @property
    def deps(self) -> list[str]: ...
    @property
    def critical_path(self) -> float: ...
    @property
    def key(self) -> str | None: ...
    @property
    def ready_since(self) -> float | None: ...
    @property
    def started_at(self) -> float | None: ...
    @property
    def finished_at(self) -> float | None: ...


def finished_seconds(jobs: Iterable[Briefed]) -> dict[str, float]:
    """How long each built build took (worker start to finish), by recipe name."""
    return {
        j.name: j.finished_at - j.started_at
        for j in jobs
        if j.state is State.BUILT and j.started_at is not None and j.finished_at is not None
    }


@dataclass(frozen=True)
class Estimates:
    """Seconds a build is expected to take: its recipe's previous duration where one is known (``by_name``), else
    ``median`` (the median of this run's finished builds, else of the previous durations; None: nothing known)."""

    by_name: dict[str, float]
    median: float | None

    def of(self, name: str) -> float | None:
        return self.by_name.get(name, self.median)


def estimate(finished: Mapping[str, float], previous: Mapping[str, float]) -> Estimates:
    """Estimates from this run's finished builds' seconds and the previous durations of its remaining builds."""
    basis = list(finished.values()) or list(previous.values())
    return Estimates(dict(previous), statistics.median(basis) if basis else None)


def left_of(job: Briefed, estimates: Estimates, now: float) -> float | None:
    """Seconds a build not yet done still needs (a running build's elapsed time counts against its estimate)."""
    seconds = estimates.of(job.name)
    if seconds is not None and job.state is State.RUNNING and job.started_at is not None:
        seconds = max(0.0, seconds - (now - job.started_at))
    return seconds


def critical_path(run: Run, live: Mapping[str, Briefed], left: Mapping[str, float | None]) -> dict[str, Any]:
    """The longest chain of the builds not yet done (``live``; each waits on the one before): its length in builds,
    its estimated seconds from ``left`` (None when a build's is unknown), and the build it starts with.

    The chain is the longest by estimated seconds when they are known (ties by builds, then the earlier in plan
    order), else by builds. Plan order is a topological order, so one pass from the last build back computes every
    build's longest tail.
    """
    order = [n for n in run.order if n in live]  # a topological order of the live builds
    at = {n: i for i, n in enumerate(order)}
    dependents: list[list[int]] = [[] for _ in order]
    for i, name in enumerate(order):
        for dep in live[name].deps:
            if dep in at:
                dependents[at[dep]].append(i)
    timed = all(s is not None for s in left.values())
    seconds = [0.0] * len(order)  # of the longest tail from each build, itself included
    builds = [0] * len(order)
    for i in range(len(order) - 1, -1, -1):
        best_s, best_b = 0.0, 0
        for d in dependents[i]:
            if seconds[d] > best_s or (seconds[d] == best_s and builds[d] > best_b):
                best_s, best_b = seconds[d], builds[d]
        seconds[i], builds[i] = (left[order[i]] or 0.0) + best_s, 1 + best_b
    head = max(range(len(order)), key=lambda i: (seconds[i], builds[i], -i), default=None)
    if head is None:
        return {"builds": 0, "seconds": 0.0 if timed else None, "first": None}
    return {"builds": builds[head], "seconds": round(seconds[head], 1) if timed else None, "first": order[head]}


def eta(
    run: Run,
    left: Mapping[str, float | None],
    estimates: Estimates,
    *,
    path_seconds: float | None,
    slots: Mapping[str, int] | None,
    now: float,
) -> dict[str, Any]:
    """When the run should be done: the larger of its critical path (``path_seconds``) and its remaining work
    (``left``: the seconds each build not yet done still needs) spread over the arch's live slots, as if the run
    had them to itself. ``seconds`` is None, with ``why``, when that cannot be said."""
    have = None if slots is None else slots.get(run.arch, 0)
    out: dict[str, Any] = {
        "seconds": None,
        "at": None,
        "slots": have,
        "median_seconds": None if estimates.median is None else round(estimates.median, 3),
        "estimated_by_name": sum(1 for n in left if n in estimates.by_name),
        "why": "",
    }
    if not left:
        return out | {"seconds": 0.0, "at": run.finished or now, "why": f"the run is {run.status}"}
    if any(s is None for s in left.values()):
        return out | {"why": "no build of this run has finished yet, and none ran before: no duration to go by"}
    if not have:
        return out | {"why": f"no worker for arch {run.arch}" if have == 0 else "the workers' slots are unknown"}
    work = sum(s for s in left.values() if s is not None)
    seconds = round(max(path_seconds or 0.0, work / have), 1)
    return out | {"seconds": seconds, "at": round(now + seconds, 1)}

"""What views read of a run without reading its builds whole (behind :class:`~farm.coordinator.runs.RunStore`):
its dependency graph (one document, kept between reads: it never changes), a
:class:`~farm.coordinator.records.Brief` of every build (the graph and the live records: one read), why a waiting
build waits (from the briefs of the whole run), and the builds workers hold now (from their heartbeats).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from farm.coordinator import layout
from farm.coordinator.kvbase import KV
from farm.coordinator.records import Brief, Held, Job, Run, State, decode_graph, no_gc

Graph = dict[str, tuple[float, list[str]]]  # build name -> (critical path, dependencies)
CacheKey = tuple[str, str, float]  # the state's URL, the run id, when the run was made
_GRAPHS: OrderedDict[CacheKey, Graph] = OrderedDict()  # a few runs
_LOCK = threading.Lock()  # the web view reads from several threads


def recall(cache: OrderedDict[CacheKey, Any], key: CacheKey) -> Any:
    """What :func:`remember` kept under ``key``, or None."""
    with _LOCK:
        found = cache.get(key)
        if found is not None:
            cache.move_to_end(key)
        return found


def remember(cache: OrderedDict[CacheKey, Any], key: CacheKey, value: Any) -> None:
    """Keep ``value`` (if not empty) among the last few of its kind."""
    if value:
        with _LOCK:
            cache[key] = value
            while len(cache) > 4:
                cache.popitem(last=False)


def graph(kv: KV, run: Run, static: Callable[[], Mapping[str, Mapping[str, Any]]]) -> Graph:
    """Each build's critical path and dependencies: one read of the run's graph, or for a run stored before there
    was one, from its builds' ``static`` parts. Kept for a few runs; shared: callers must not change it."""
    key = (kv.url, run.id, run.created)
    found: Graph | None = recall(_GRAPHS, key)
    if found is not None:
        return found
    raw = kv.get(layout.graph_key(run.id))
    with no_gc():
        if raw is not None:
            found = decode_graph(raw)
        else:
            found = {n: (float(s.get("critical_path", 0.0)), s.get("deps", [])) for n, s in static().items()}
    remember(_GRAPHS, key, found)
    return found


def briefs(kv: KV, run: Run, nodes: Graph) -> dict[str, Brief]:
    """A :class:`Brief` of every build of ``run``, in plan order, from its graph ``nodes`` and one read of its live
    records (a version 1 record, whole, carries its own place in the graph)."""
    out = {}
    with no_gc():  # tens of thousands of new objects, none of them garbage
        live = {d["name"]: d for d in kv.hvalues_json(layout.jobs_key(run.id))}
        for name in run.order:
            node, record = nodes.get(name), live.get(name)
            if node is not None:
                out[name] = Brief.of(name, node[1], node[0], record)
            elif record is not None:
                out[name] = Brief.of(name, record.get("deps", []), record.get("critical_path", 0.0), record)
    return out


def explain(
    run: Run, jobs: Mapping[str, Job], now: float, every: Mapping[str, Brief | Job], reason: Callable[[], str | None]
) -> None:
    """Why each waiting build of ``jobs`` waits, derived rather than rewritten on every change: a pending retry
    (``retry in Ns``), the dependencies not done yet, or for a ready build the run's ``reason`` (read only when
    needed; ``{position}`` in it stands for the build's place among the run's ready builds). ``every`` is every
    build of the run (``jobs`` itself when whole)."""
    done = {n for n, j in every.items() if j.state is State.BUILT or j.state is State.CACHED}
    ready = []
    for job in jobs.values():
        if job.state is not State.WAITING:
            continue
        pending = [d for d in job.deps if d not in done and d in every]
        if job.retry_at is not None and job.retry_at > now:
            last = job.failures[-1].get("message") if job.failures else None
            job.why = f"retry in {job.retry_at - now:.0f}s" + (f" after: {last}" if last else "")
        elif pending:
            job.why = f"waiting on {', '.join(pending)}"
        elif job.key is not None and job.ready_since is not None:
            ready.append(job)
    why = reason() if ready and run.status == "active" else None
    if why is None:
        return
    place = {j.name: i for i, j in enumerate(ready_order(every, done, now), 1)}
    for job in ready:
        job.why = why.replace("{position}", str(place.get(job.name, 0)))


def held(kv: KV) -> list[Held]:
    """The builds workers hold now: those with a live heartbeat whose record still names that lease and is
    running. A few reads (the heartbeats, then each run's held records), whatever the size of the runs."""
    leases: dict[str, list[tuple[str, str]]] = {}
    for key in kv.keys(layout.BEAT):
        token = key[len(layout.BEAT) :]
        target = layout.lease_target(token)
        if target is not None:
            leases.setdefault(target[0], []).append((target[1], token))
    found = []
    for run_id, tokens in sorted(leases.items()):
        for (name, token), raw in zip(tokens, kv.hmget(layout.jobs_key(run_id), [n for n, _ in tokens]), strict=True):
            live = json.loads(raw) if raw else {}
            if live.get("lease") == token and live.get("state") == State.RUNNING.value and live.get("worker"):
                found.append(Held(run_id, name, str(live["worker"]), live.get("started_at")))
    return sorted(found, key=lambda h: (h.worker, h.since or 0.0, h.run, h.name))


def ready_order(every: Mapping[str, Brief | Job], done: set[str], now: float) -> list[Brief | Job]:
    """A run's ready builds (dependencies done, key known, no retry pending), in the order the run dispatches
    them: the longest critical path first, then the earliest ready."""
    ready = [
        j
        for j in every.values()
        if j.state is State.WAITING
        and j.key is not None
        and j.ready_since is not None
        and (j.retry_at is None or j.retry_at <= now)
        and all(d in done or d not in every for d in j.deps)
    ]
    ready.sort(key=lambda j: (-j.critical_path, j.ready_since or 0.0, j.name))
    return ready

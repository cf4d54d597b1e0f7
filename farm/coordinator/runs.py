"""Runs and their builds as persisted coordinator state (where each part lives: :mod:`farm.coordinator.layout`).

Everything the coordinator needs to continue after a crash is here; nothing needs the recipe directory again.
Commands that change a run from another process (submit, cancel, retry) write it and then tell the coordinator
through its inbox, so that its tick reloads that run instead of rereading every run.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from farm.coordinator import briefs as briefs_
from farm.coordinator import layout
from farm.coordinator.briefs import Graph
from farm.coordinator.indexes import Live, index_run
from farm.coordinator.kv import KV
from farm.coordinator.kvbase import Batch
from farm.coordinator.policy import Lane
from farm.coordinator.records import (
    Brief,
    Held,
    Job,
    Run,
    State,
    decode_many,
    graph_bytes,
    new_run_id,
    no_gc,
    run_header,
    summary_counts,
)
from farm.errors import E, FarmError
from farm.recipes.needs import required

if TYPE_CHECKING:  # the planner (and git behind it) is only needed to submit: readers do not load it
    from farm.coordinator.plan import Plan

__all__ = ["Brief", "Held", "Job", "Run", "RunStore", "State", "new_run_id", "run_header", "summary_counts"]

CHUNK = 5000  # hash fields per write when a run is stored whole
_STATIC_CACHE: OrderedDict[tuple[str, str, float], dict[str, dict[str, Any]]] = OrderedDict()  # a few runs


class RunStore:
    """Runs and jobs in the KV: meta, static and live parts of each build, counts by state, indexes."""

    PREFIX = layout.RUN

    def __init__(self, kv: KV) -> None:
        self.kv = kv

    # -- submission ----------------------------------------------------------------------------------------------
    def new(
        self,
        plan: Plan,
        *,
        lane: Lane,
        arch: str,
        force: bool,
        run_id: str | None = None,
        reason: str = "",
        reasons: Mapping[str, str] | None = None,
    ) -> tuple[Run, dict[str, Job]]:
        """A run of ``plan`` and its jobs, not yet stored (:meth:`insert`). A build the plan found in the store
        (and no ``force``) is cached; one it looked up and did not find is not looked up again on its first try."""
        from farm.coordinator.plan import Decision

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
                needs=list(required(pb.recipe.kind, pb.recipe.needs)),
                binnmu=pb.recipe.binnmu,
            )
            if pb.decision is Decision.CACHED and pb.record is not None and not force:
                job.state, job.why, job.outputs = State.CACHED, pb.reason, pb.record.outputs()
            elif pb.key is not None:
                job.store_checked = 0  # the plan has just asked the store for this key
            jobs[name] = job
        return run, jobs

    def insert(self, run: Run, jobs: dict[str, Job]) -> Live:
        """Store a new run whole (in one batch: its builds, its indexes, its place among the runs) and tell the
        coordinator. Builds whose dependencies are all done go into the ready index now."""
        live, _, _ = index_run(run, jobs, {}, run.created)
        with self.kv.batch() as b:
            items = list(jobs.values())
            for i in range(0, len(items), CHUNK):
                b.hset(layout.static_key(run.id), {j.name: j.static_bytes() for j in items[i : i + CHUNK]})
                b.hset(layout.recipes_key(run.id), {j.name: j.recipe_bytes() for j in items[i : i + CHUNK]})
                b.hset(layout.jobs_key(run.id), {j.name: j.dynamic_bytes() for j in items[i : i + CHUNK]})
            b.set(layout.graph_key(run.id), graph_bytes(items))
            live.rewrite(b)
            self._place(b, run)
        return live

    def create(self, plan: Plan, **kwargs: Any) -> Run:
        run, jobs = self.new(plan, **kwargs)
        self.insert(run, jobs)
        return run

    def _place(self, b: Batch, run: Run) -> None:
        """Queue the run's meta, its place in the runs index and the active set, and the coordinator's notice."""
        b.set(layout.meta_key(run.id), run.to_bytes())
        b.zadd(layout.RUNS, {run.id: run.created})
        if run.status == "active":
            b.sadd(layout.ACTIVE, run.id)
        else:
            b.srem(layout.ACTIVE, run.id)
            b.hdel(layout.WAITING, run.id)
            b.delete(*layout.ready_keys(run.arch, run.lane.value, run.id))
        b.rpush(layout.INBOX, json.dumps({"run": run.id}).encode())

    # -- commands from any process ---------------------------------------------------------------------------------
    def cancel(self, run_id: str, now: float) -> tuple[Run, list[Job]]:
        """Cancel every build of the run not yet done; the run and the builds that were in flight (their live
        records only). Costs what is in flight, not the run's size: one batch stores the run as cancelled, its
        counts (every build not ended counted as cancelled) and the records of its builds in flight, cancelled (a
        worker about to take one up finds its lease void), and tells the coordinator, which revokes their tasks.
        The records of builds that never left waiting are not rewritten: a build of a cancelled run that had not
        ended reads as cancelled (:meth:`_read_as_cancelled`)."""
        run = self.get(run_id)
        raw = self.kv.hgetall(layout.counts_key(run_id))
        if raw:
            counts = {s: int(raw.get(s.value, b"0")) for s in State}
            names = [str(n) for n in json.loads(raw.get(layout.IN_FLIGHT, b"[]"))]
        else:  # no counts stored yet (a version 1 run): from its records
            every = self.jobs(run_id, recipes=False)
            counts = {s: 0 for s in State} | _count(every.values())
            names = [n for n, j in every.items() if j.state.in_flight]
        in_flight = []
        for record in self.kv.hmget(layout.jobs_key(run_id), names):
            job = Job.from_parts({}, record) if record is not None else None
            if job is not None and job.state.in_flight:
                job.state, job.why, job.finished_at = State.CANCELLED, "run cancelled", now
                in_flight.append(job)
        ended = sum(n for s, n in counts.items() if not s.terminal)
        counts = {s: n if s.terminal else 0 for s, n in counts.items()}
        counts[State.CANCELLED] += ended
        fields = {s.value: str(n).encode() for s, n in counts.items()} | {layout.IN_FLIGHT: b"[]"}
        run.status, run.finished = "cancelled", now
        with self.kv.batch() as b:
            b.hset(layout.jobs_key(run.id), {j.name: j.dynamic_bytes() for j in in_flight})
            b.hset(layout.counts_key(run.id), fields)
            self._place(b, run)
        return run, in_flight

    @staticmethod
    def _read_as_cancelled(run: Run, builds: Any) -> None:
        """In a cancelled run, a build (a Job or a Brief) that had not ended reads as cancelled, ended when the run
        was: the cancel rewrote only the records of the builds in flight."""
        if run.status != "cancelled":
            return
        for build in builds:
            if not build.state.terminal:
                build.state, build.finished_at = State.CANCELLED, run.finished
                if isinstance(build, Job):
                    build.why = "run cancelled"

    def retry(self, run_id: str, name: str) -> Job:
        """Send a failed, blocked or cancelled build back to waiting, with its blocked and cancelled companions."""
        run = self.get(run_id)
        jobs = self.jobs(run_id)
        if name not in jobs:
            raise FarmError(E.BUILD_UNKNOWN, f"run {run_id} has no build '{name}'", hint="see 'mangos-farm status'")
        job = jobs[name]
        if job.state not in (State.FAILED, State.BLOCKED, State.CANCELLED):
            raise FarmError(
                E.BUILD_UNKNOWN,
                f"build '{name}' is {job.state.value}, not failed",
                hint="only failed, blocked or cancelled builds can be retried",
            )
        changed = [job]
        job.state, job.why, job.attempts, job.failures, job.error = State.WAITING, "retry requested", 0, [], None
        job.store_checked, job.finished_at, job.retry_at = -1, None, None
        for other in jobs.values():
            if other.state in (State.BLOCKED, State.CANCELLED):
                other.state, other.why, other.finished_at = State.WAITING, "retry requested", None
                changed.append(other)
        run.status, run.finished = "active", None
        self.rewrite(run, jobs, changed)
        return job

    def rewrite(self, run: Run, jobs: Mapping[str, Job], changed: list[Job]) -> None:
        """Store ``changed`` builds, the run's counts (recounted) and meta, and tell the coordinator."""
        counts = {s: 0 for s in State} | dict(_count(jobs.values()))
        with self.kv.batch() as b:
            b.hset(layout.jobs_key(run.id), {j.name: j.dynamic_bytes() for j in changed})
            b.hset(layout.counts_key(run.id), {s.value: str(n).encode() for s, n in counts.items()})
            self._place(b, run)

    # -- reads -----------------------------------------------------------------------------------------------------
    def get(self, run_id: str) -> Run:
        data = self.kv.get(layout.meta_key(run_id))
        if data is None:
            raise FarmError(
                E.RUN_UNKNOWN, f"no run '{run_id}' in {self.kv.url}", hint="list runs with 'mangos-farm status'"
            )
        return Run.from_bytes(data)

    def save(self, run: Run) -> None:
        self.kv.set(layout.meta_key(run.id), run.to_bytes())

    def static(self, run_id: str, created: float | None = None) -> dict[str, dict[str, Any]]:
        """The static part of every build of a run but for its recipe, decoded (kept for a few runs: it never
        changes; kept by run id and creation time). Shared: callers must not change what they get."""
        key = (self.kv.url, run_id, self.get(run_id).created if created is None else created)
        found: dict[str, dict[str, Any]] | None = briefs_.recall(_STATIC_CACHE, key)
        if found is None:
            with no_gc():
                found = {s["name"]: s for s in self.kv.hvalues_json(layout.static_key(run_id))}
            briefs_.remember(_STATIC_CACHE, key, found)
        return found

    def graph(self, run_id: str, run: Run | None = None) -> Graph:
        """Each build's critical path and dependencies (:func:`farm.coordinator.briefs.graph`)."""
        run = run or self.get(run_id)
        return briefs_.graph(self.kv, run, lambda: self.static(run_id, run.created))

    def briefs(self, run_id: str, run: Run | None = None) -> dict[str, Brief]:
        """What a view needs of every build of a run (:class:`Brief`), in plan order: the run's graph and its live
        records, no more (no recipe, no why: :meth:`jobs` reads the builds a view lists)."""
        run = run or self.get(run_id)
        briefs = briefs_.briefs(self.kv, run, self.graph(run_id, run))
        self._read_as_cancelled(run, briefs.values())
        return briefs

    def jobs(
        self,
        run_id: str,
        now: float | None = None,
        *,
        recipes: bool = True,
        names: list[str] | None = None,
        briefs: Mapping[str, Brief] | None = None,
        run: Run | None = None,
    ) -> dict[str, Job]:
        """Every build of a run, in plan order (or only those ``names``, in their order: one read of each part),
        each waiting one with why it waits as of ``now``. Without ``recipes`` each job's ``recipe`` is left empty
        (what views need is read several times faster). Why a named build waits depends on the whole run: its
        ``briefs`` (:meth:`briefs`) when the caller has them, else they are read; ``run``, its meta, likewise."""
        run = run or self.get(run_id)
        now = time.time() if now is None else now
        if names is not None:
            return self._named(run, names, now, recipes=recipes, briefs=briefs)
        static = self.static(run_id, run.created)
        jobs = {}
        with no_gc():  # tens of thousands of new objects, none of them garbage
            live = {d["name"]: d for d in self.kv.hvalues_json(layout.jobs_key(run_id))}
            for n in run.order:
                if n in static:
                    jobs[n] = Job.from_parts(static[n], live.get(n))
                elif n in live:
                    jobs[n] = Job.from_parts({}, live[n])  # a version 1 record, whole
            if recipes:
                raw = self.kv.hgetall(layout.recipes_key(run_id))
                for name, recipe in zip(raw, decode_many(raw.values()), strict=True):
                    if name in jobs:
                        jobs[name].recipe = recipe
            self._read_as_cancelled(run, jobs.values())
            self._explain(run, jobs, now, jobs)
        return jobs

    def _named(
        self, run: Run, names: list[str], now: float, *, recipes: bool, briefs: Mapping[str, Brief] | None
    ) -> dict[str, Job]:
        static = self.kv.hmget(layout.static_key(run.id), names)
        live = self.kv.hmget(layout.jobs_key(run.id), names)
        texts = self.kv.hmget(layout.recipes_key(run.id), names) if recipes else [None] * len(names)
        jobs = {}
        for name, fixed, record, recipe in zip(names, static, live, texts, strict=True):
            if fixed is not None:
                jobs[name] = Job.from_parts(json.loads(fixed), record)
            elif record is not None:
                jobs[name] = Job.from_parts({}, record)  # a version 1 record, whole
            else:
                continue
            if recipe is not None:
                jobs[name].recipe = json.loads(recipe)
        self._read_as_cancelled(run, jobs.values())
        if any(j.state is State.WAITING for j in jobs.values()):
            self._explain(run, jobs, now, self.briefs(run.id, run) if briefs is None else briefs)
        return jobs

    def _explain(self, run: Run, jobs: Mapping[str, Job], now: float, every: Mapping[str, Brief | Job]) -> None:
        def reason() -> str | None:
            raw = self.kv.hget(layout.WAITING, run.id)
            return None if raw is None else raw.decode()

        briefs_.explain(run, jobs, now, every, reason)

    def counts(self, run_id: str) -> dict[State, int]:
        """How many builds of the run are in each state (every state, zeros included): one read."""
        raw = self.kv.hgetall(layout.counts_key(run_id))
        if not raw:  # a run stored by version 1, not migrated yet
            return {s: 0 for s in State} | dict(_count(self.jobs(run_id).values()))
        return {s: int(raw.get(s.value, b"0")) for s in State}

    def header(self, run: Run) -> dict[str, Any]:
        """:func:`run_header` from the run's counts (no job read)."""
        return run_header(run, counts=self.counts(run.id)) | {"total": len(run.order)}

    def save_jobs(self, run_id: str, jobs: list[Job]) -> None:
        """Store builds' live records as they are (indexes and counts are the caller's: see :meth:`rewrite`)."""
        if jobs:
            self.kv.hset(layout.jobs_key(run_id), {j.name: j.dynamic_bytes() for j in jobs})

    def _runs(self, ids: list[str]) -> list[Run]:
        metas = self.kv.mget([layout.meta_key(i) for i in ids])
        return sorted((Run.from_bytes(m) for m in metas if m is not None), key=lambda r: r.created)

    def all_runs(self) -> list[Run]:
        ids: list[str] = [m for m, _ in self.kv.zrange(layout.RUNS)]
        if not ids:  # a state from version 1: no runs index yet
            ids = [k[len(self.PREFIX) :] for k in self.kv.keys(self.PREFIX) if k.count(":") == 2]
        return self._runs(ids)

    def earlier(self, run: Run) -> list[str]:
        """The ids of the runs created before ``run``, newest first (one read of the runs index)."""
        found = self.kv.zrangebyscore(layout.RUNS, float("-inf"), run.created)
        if not found and not self.kv.zcard(layout.RUNS):  # a state from version 1: no runs index yet
            return [r.id for r in reversed(self.all_runs()) if r.created < run.created]
        return [m for m, created in reversed(found) if created < run.created and m != run.id]

    def active(self) -> list[Run]:
        ids = sorted(self.kv.smembers(layout.ACTIVE))
        if not ids and not self.kv.zcard(layout.RUNS):
            return [r for r in self.all_runs() if r.status == "active"]
        return [r for r in self._runs(ids) if r.status == "active"]

    def building(self) -> list[Held]:
        """The builds workers hold now (:func:`farm.coordinator.briefs.held`)."""
        return briefs_.held(self.kv)

    def latest(self) -> Run:
        last = self.kv.zrange(layout.RUNS, -1, -1)
        runs = self._runs([last[0][0]]) if last else self.all_runs()
        if not runs:
            raise FarmError(E.RUN_UNKNOWN, "no runs yet", hint="start one with 'mangos-farm rebuild'")
        return runs[-1]


def _count(jobs: Any) -> dict[State, int]:
    counts: dict[State, int] = {}
    for job in jobs:
        counts[job.state] = counts.get(job.state, 0) + 1
    return counts

"""The coordinator: drives every active run to completion, healing what breaks on the way.

Each :meth:`Coordinator.tick` reads the persisted state, collects outcomes, expires leases of silent workers,
releases builds whose dependencies are done (or marks them cached or blocked), and dispatches the highest
priority ready builds into free worker slots. Because all of it is re-derived from persisted state, a killed
coordinator restarted on the same state simply continues: what finished stays finished.

This module holds the tick and the dispatch; which ready build goes first is :mod:`farm.coordinator.policy`'s
to say, and what happens to builds in flight (results, leases, blame) is :mod:`farm.coordinator.outcomes`'s.
It knows nothing of Celery: a :class:`Dispatcher` carries requests to workers and brings outcomes back.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from farm import metrics
from farm.build import BuildRequest, DependencyInput
from farm.coordinator import policy
from farm.coordinator.kv import KV
from farm.coordinator.leases import LeaseBoard
from farm.coordinator.outcomes import Config, Dispatcher, Listener, Outcomes
from farm.coordinator.plan import Plan
from farm.coordinator.policy import Lane
from farm.coordinator.runs import Job, Run, RunStore, State, run_header
from farm.coordinator.updates import LagBoard
from farm.errors import E, FarmError
from farm.identity import build_key
from farm.store import Store

__all__ = ["Config", "Coordinator", "Dispatcher", "Listener"]

log = logging.getLogger(__name__)


@dataclass
class _Scan:
    runs: list[Run] = field(default_factory=list)
    jobs: dict[str, dict[str, Job]] = field(default_factory=dict)
    dirty: dict[str, dict[str, Job]] = field(default_factory=dict)
    ready: dict[tuple[str, str], tuple[policy.Candidate, Job, Run, dict[str, Job]]] = field(default_factory=dict)
    in_flight: Counter[str] = field(default_factory=Counter)


class Coordinator(Outcomes):
    def __init__(
        self,
        kv: KV,
        store: Store,
        dispatcher_factory: Callable[[], Dispatcher],
        config: Config | None = None,
        on_change: Listener | None = None,
        *,
        lazy_workers: bool = False,
    ) -> None:
        self.kv = kv
        self.store = store
        self.runs = RunStore(kv)
        self.config = config or Config()
        self.board = LeaseBoard(kv, self.config.lease_timeout)
        self._factory = dispatcher_factory
        self._dispatcher: Dispatcher | None = None
        self.notify: Listener = on_change or (lambda _j, _a: None)
        self.lazy_workers = lazy_workers  # embedded: start local workers only once something must be built

    @property
    def dispatcher(self) -> Dispatcher:
        if self._dispatcher is None:
            self._dispatcher = self._factory()
        return self._dispatcher

    # -- commands ---------------------------------------------------------------------------------------------
    def submit(
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
        """Persist ``plan`` as a new active run; ``reason`` says why it was queued, ``reasons`` why each build was
        (``status`` and the web view show both)."""
        run = self.runs.create(plan, lane=lane, arch=arch, force=force, run_id=run_id, reason=reason, reasons=reasons)
        # The plan takes a build as cached when the store has a record for its key; it is only accepted as such
        # when that record's signed provenance checks out against the keyring (a rogue worker's record does not).
        jobs = self.runs.jobs(run.id)
        refused = []
        for job in jobs.values():
            if job.state is State.CACHED and job.key and (error := self._untrusted(job, "the store", job.key)):
                job.error, job.outputs = error.to_json(), None
                self._finish(run, job, State.FAILED, error.message, time.time())
                refused.append(job)
        if refused:
            self.runs.save_jobs(run.id, refused)
        log.info(
            "run %s submitted: %d builds, lane %s, arch %s%s",
            run.id,
            len(run.order),
            lane,
            arch,
            f" ({reason})" if reason else "",
        )
        return run

    def cancel(self, run_id: str) -> Run:
        run = self.runs.get(run_id)
        jobs = self.runs.jobs(run_id)
        for job in jobs.values():
            if job.state.in_flight and job.task_id:
                self.dispatcher.revoke(job.task_id)
                self.board.revoke(run_id, job.name)
            if not job.state.terminal:
                job.state, job.why, job.finished_at = State.CANCELLED, "run cancelled", time.time()
        self.runs.save_jobs(run_id, list(jobs.values()))
        run.status, run.finished = "cancelled", time.time()
        self.runs.save(run)
        return run

    def retry(self, run_id: str, name: str) -> Job:
        run = self.runs.get(run_id)
        jobs = self.runs.jobs(run_id)
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
        job.store_checked = -1
        for other in jobs.values():
            if other.state in (State.BLOCKED, State.CANCELLED):
                other.state, other.why = State.WAITING, "retry requested"
                changed.append(other)
        self.runs.save_jobs(run_id, changed)
        run.status, run.finished = "active", None
        self.runs.save(run)
        return job

    # -- the loop ---------------------------------------------------------------------------------------------
    def run_until_done(self, run_id: str, poll: float = 0.2) -> Run:
        while True:
            changed = self.tick()
            run = self.runs.get(run_id)
            if run.status != "active":
                return run
            if not changed:
                self._idle(poll)

    def serve(self, poll: float = 0.5, stop: Callable[[], bool] = lambda: False) -> None:
        while not stop():
            try:
                changed = self.tick()
            except FarmError as exc:
                log.warning("coordinator tick failed, retrying: %s", exc.message)
                changed = False
                time.sleep(1)
            if not changed:
                self._idle(poll)

    def _idle(self, poll: float) -> None:
        """Wait for the next tick: ``poll`` seconds, or less when an outcome arrives sooner.

        A dispatcher may offer ``wait_for_outcome(timeout)`` (not part of :class:`Dispatcher`: optional), which
        returns as soon as a worker stores a result; then a finished build's slot is refilled at once instead of
        up to ``poll`` seconds later. Everything else a tick reacts to (leases, retries, new runs) keeps the poll.
        """
        wait = getattr(self._dispatcher, "wait_for_outcome", None)
        if wait is None:
            time.sleep(poll)
        else:
            wait(poll)

    def tick(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        scan = self._scan(now)
        self._dispatch_ready(scan, now)
        self._export_gauges(scan, now)
        changed = False
        for run_id, jobs_changed in scan.dirty.items():
            if jobs_changed:
                changed = True
                self.runs.save_jobs(run_id, list(jobs_changed.values()))
        for run in scan.runs:
            if all(j.state.terminal for j in scan.jobs[run.id].values()):
                run.status, run.finished = "done", now
                self.runs.save(run)
                changed = True
        return changed

    def _scan(self, now: float) -> _Scan:
        """Collect outcomes and expire leases, advance waiting builds, gather the ready ones."""
        scan = _Scan()
        for run in self.runs.active():
            jobs = self.runs.jobs(run.id)
            scan.runs.append(run)
            scan.jobs[run.id] = jobs
            dirty = scan.dirty.setdefault(run.id, {})
            for job in jobs.values():
                if job.state.in_flight and self._check_in_flight(run, job, jobs, now):
                    dirty[job.name] = job
            for name in run.order:
                job = jobs[name]
                if job.state is State.WAITING and self._advance(run, job, jobs, now):
                    dirty[job.name] = job
                if job.state is State.WAITING and job.key and (job.retry_at is None or job.retry_at <= now):
                    cand = policy.Candidate(run.id, name, run.lane, run.arch, job.ready_since or now, job.critical_path)
                    scan.ready[(run.id, name)] = (cand, job, run, jobs)
                if job.state.in_flight:
                    scan.in_flight[run.arch] += 1
        return scan

    def _dispatch_ready(self, scan: _Scan, now: float) -> None:
        """Dispatch the highest-priority ready builds into free slots; tell the others why they wait."""
        if not scan.ready:
            return
        if self._dispatcher is None and self.lazy_workers:
            _ = self.dispatcher  # start local workers; they announce themselves within a second or two
        capacity = self._capacity()
        cands = [c[0] for c in scan.ready.values()]
        free = {arch: max(0, capacity.get(arch, 0) - scan.in_flight[arch]) for arch in {c.arch for c in cands}}
        chosen = {(c.run_id, c.name) for c in policy.pick(cands, free, now, self.config.aging)}
        position = 0
        for cand in policy.order(cands, now, self.config.aging):
            _, job, run, jobs = scan.ready[(cand.run_id, cand.name)]
            if (cand.run_id, cand.name) in chosen:
                self._dispatch(run, job, jobs, now)
                scan.dirty[run.id][job.name] = job
                continue
            position += 1
            why = (
                f"no worker for arch {run.arch}"
                if capacity.get(run.arch, 0) == 0
                else f"all {capacity[run.arch]} {run.arch} slots busy ({run.lane.value} lane, position {position})"
            )
            if job.why != why:
                job.why = why
                scan.dirty[run.id][job.name] = job

    # -- steps ---------------------------------------------------------------------------------------------------
    def _advance(self, run: Run, job: Job, jobs: dict[str, Job], now: float) -> bool:
        """Move a waiting job on if its dependencies allow: blocked, cached, or ready (key known)."""
        deps = [jobs[d] for d in job.deps]
        bad = [d.name for d in deps if d.state in (State.FAILED, State.BLOCKED, State.CANCELLED)]
        if bad:
            self._finish(run, job, State.BLOCKED, f"blocked by failed dependency {', '.join(bad)}", now)
            return True
        pending = [d.name for d in deps if d.state not in (State.BUILT, State.CACHED)]
        if pending:
            why = f"waiting on {', '.join(pending)}"
            changed = job.why != why
            job.why = why
            return changed
        changed = False
        if job.key is None:
            outputs = {d.name: d.outputs or {} for d in deps}
            job.key = build_key(job.recipe, job.commit, job.tree, job.environment or run.environment, outputs)
            changed = True
        if job.ready_since is None:
            job.ready_since = now
            changed = True
        due = job.retry_at is None or job.retry_at <= now
        # Ask the store once per attempt (not every tick: on S3 each ask is a request).
        if (not run.force or job.attempts > 0) and due and job.store_checked != job.attempts:
            job.store_checked = job.attempts
            changed = True
            record = self.store.get_record(job.key)
            metrics.cache_lookups.labels("hit" if record is not None else "miss").inc()
            refused = self._untrusted(job, "the store", job.key) if record is not None else None
            if refused is not None:  # a record nobody trusted wrote (a rogue worker, a poisoned index): not cached
                job.error = refused.to_json()
                self._finish(run, job, State.FAILED, refused.message, now)
                return True
            if record is not None:
                job.outputs = record.outputs()
                state = State.CACHED if job.attempts == 0 else State.BUILT
                self._finish(run, job, state, "found in the store", now)
                return True
        if job.retry_at and job.retry_at > now:
            why = f"retry in {job.retry_at - now:.0f}s (attempt {job.attempts + 1} of {self.config.max_attempts})"
            changed = changed or job.why != why
            job.why = why
        return changed

    def _request(self, run: Run, job: Job, jobs: dict[str, Job], lease: str) -> BuildRequest:
        assert job.key is not None
        return BuildRequest(
            build_key=job.key,
            recipe=job.recipe,
            recipe_path=job.recipe_path,
            fetch_url=job.fetch_url,
            tree=job.tree,
            environment=job.environment or run.environment,
            dependencies=tuple(DependencyInput(d, jobs[d].key or "", jobs[d].outputs or {}) for d in job.deps),
            lease=lease,
        )

    def _dispatch(self, run: Run, job: Job, jobs: dict[str, Job], now: float) -> None:
        assert job.key is not None
        lease = self.board.grant(run.id, job.name, job.key)
        job.task_id = self.dispatcher.submit(self._request(run, job, jobs, lease), arch=run.arch)
        job.lease, job.worker, job.started_at = lease, None, None
        job.state, job.why, job.dispatched_at = State.QUEUED, f"queued for arch {run.arch}", now
        job.attempts += 1
        job.retry_at = None
        metrics.builds_started.labels(job.name, run.lane.value, run.arch).inc()
        if job.attempts > 1:
            metrics.redispatches.labels(job.failures[-1]["code"] if job.failures else "retry").inc()
        self.notify(job, jobs)

    def _export_gauges(self, scan: _Scan, now: float) -> None:
        """Queue and fleet gauges for Prometheus, recomputed from state each tick (so they survive restarts)."""
        depth: Counter[tuple[str, str]] = Counter()
        oldest: dict[tuple[str, str], float] = {}
        for _cand, job, run, _jobs in scan.ready.values():
            if job.state is State.WAITING:
                where = (run.lane.value, run.arch)
                depth[where] += 1
                oldest[where] = max(oldest.get(where, 0.0), now - (job.ready_since or now))
        for lane in Lane:
            for arch in {r.arch for r in scan.runs} | {a for _, a in depth}:
                metrics.queue_depth.labels(lane.value, arch).set(depth[(lane.value, arch)])
                metrics.oldest_waiting.labels(lane.value, arch).set(oldest.get((lane.value, arch), 0.0))
        for arch, count in scan.in_flight.items():
            metrics.builds_in_flight.labels(arch).set(count)
        metrics.runs_active.set(len(scan.runs))
        workers = self.board.workers()
        busy = {j.worker for jobs in scan.jobs.values() for j in jobs.values() if j.state is State.RUNNING}
        for arch in {w.arch for w in workers} | set(scan.in_flight):
            mine = [w for w in workers if w.arch == arch]
            metrics.workers_alive.labels(arch).set(sum(1 for w in mine if not w.disabled))
            metrics.workers_disabled.labels(arch).set(sum(1 for w in mine if w.disabled))
            metrics.workers_busy.labels(arch).set(sum(1 for w in mine if w.name in busy))
        for w in workers:
            metrics.worker_heartbeat_age.labels(w.name, w.arch).set(max(0.0, now - w.seen))
        LagBoard(self.kv).refresh((j for jobs in scan.jobs.values() for j in jobs.values()), now)

    # -- workers ----------------------------------------------------------------------------------------------
    def _capacity(self) -> dict[str, int]:
        cap: Counter[str] = Counter()
        for w in self.board.workers():
            if not w.disabled:
                cap[w.arch] += w.concurrency
        return dict(cap)

    # -- views ------------------------------------------------------------------------------------------------
    def status(self, run_id: str, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        run = self.runs.get(run_id)
        jobs = self.runs.jobs(run_id)
        waiting = [now - j.ready_since for j in jobs.values() if j.state is State.WAITING and j.ready_since]
        return run_header(run, jobs) | {
            "oldest_waiting_seconds": round(max(waiting), 1) if waiting else 0.0,
            "builds": [jobs[n].summary(now) for n in run.order],
        }

"""The coordinator: drives every active run to completion, healing what breaks on the way.

Each :meth:`Coordinator.tick` reads the persisted state, collects outcomes, expires leases of silent workers,
releases builds whose dependencies are done (or marks them cached or blocked), and dispatches the highest
priority ready builds into free worker slots. Because all of it is re-derived from persisted state, a killed
coordinator restarted on the same state simply continues: what finished stays finished.

It knows nothing of Celery: a :class:`Dispatcher` carries requests to workers and brings outcomes back.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from farm import metrics
from farm.build.execute import BuildOutcome, BuildRequest, DependencyInput
from farm.coordinator import policy
from farm.coordinator.kv import KV
from farm.coordinator.leases import LeaseBoard
from farm.coordinator.plan import Plan
from farm.coordinator.policy import Lane
from farm.coordinator.runs import Job, Run, RunStore, State, run_header
from farm.errors import E, FarmError
from farm.identity import build_key
from farm.store import Store
from farm.trust import audit, keyring
from farm.trust.keys import PublicKey

log = logging.getLogger(__name__)

# Failures that say something about the build itself (retrying elsewhere may still help: a flaky test, a bad
# machine), as opposed to infrastructure trouble, which is retried with back-off.
JOB_FAILURES = {E.BUILD_FAILED, E.BUILD_OUTPUT, E.SOURCE_COMMIT, E.SOURCE_REF}
# A recipe that hits its sandbox limits, or whose dependency is refused, is not the worker's fault: never blame it.
JOB_FAILURES |= {E.SANDBOX_LIMIT, E.ARTIFACT_REFUSED, E.KEY_REVOKED}
WORKER_FAIL = "mangos:wfail:"


class Dispatcher(Protocol):
    def submit(self, request: BuildRequest, *, arch: str) -> str:
        """Send a build; returns a task id that :meth:`outcome` can be asked about (also after a restart)."""
        ...

    def outcome(self, task_id: str) -> BuildOutcome | None: ...

    def revoke(self, task_id: str) -> None: ...

    def stop_consuming(self, worker: str, arch: str) -> None: ...


@dataclass(frozen=True)
class Config:
    lease_timeout: float = 30.0
    requeue_after: float = 600.0
    max_attempts: int = 3
    aging: float = 600.0
    worker_failure_limit: int = 3
    # The builder keyring results are checked against (re-read at each result, so a revocation applies at once),
    # and the audit log refusals go to. Without a keyring (library use, tests of scheduling) results are not checked.
    trusted: Callable[[], Sequence[PublicKey]] | None = None
    audit_log: Path | None = None


Listener = Callable[[Job, dict[str, Job]], None]


@dataclass
class _Scan:
    runs: list[Run] = field(default_factory=list)
    jobs: dict[str, dict[str, Job]] = field(default_factory=dict)
    dirty: dict[str, dict[str, Job]] = field(default_factory=dict)
    ready: dict[tuple[str, str], tuple[policy.Candidate, Job, Run, dict[str, Job]]] = field(default_factory=dict)
    in_flight: Counter[str] = field(default_factory=Counter)


class Coordinator:
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
    def submit(self, plan: Plan, *, lane: Lane, arch: str, force: bool, run_id: str | None = None) -> Run:
        run = self.runs.create(plan, lane=lane, arch=arch, force=force, run_id=run_id)
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
        log.info("run %s submitted: %d builds, lane %s, arch %s", run.id, len(run.order), lane, arch)
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

    # -- steps --------------------------------------------------------------------------------------------------
    def _finish(self, run: Run, job: Job, state: State, why: str, now: float) -> None:
        job.state, job.why, job.finished_at = state, why, now
        metrics.builds_finished.labels(job.name, run.lane.value, run.arch, state.value).inc()
        self.notify(job, {job.name: job})

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

    def _check_in_flight(self, run: Run, job: Job, jobs: dict[str, Job], now: float) -> bool:
        assert job.task_id and job.lease
        changed = False
        lease = self.board.info(job.lease)
        if job.state is State.QUEUED and lease is not None and lease.worker:
            job.state, job.worker, job.started_at = State.RUNNING, lease.worker, lease.claimed
            if job.dispatched_at and lease.claimed:
                metrics.build_phase_seconds.labels("queue_wait", run.arch).observe(
                    max(0.0, lease.claimed - job.dispatched_at)
                )
            job.why = f"building on {lease.worker}"
            self.notify(job, jobs)
            changed = True
        outcome = self.dispatcher.outcome(job.task_id)
        if outcome is not None:
            if outcome.lease and outcome.lease != job.lease:
                log.info("discarding a stale result for %s (lease %s)", job.name, outcome.lease[:8])
                metrics.stale_results.inc()
                return changed
            self._record_outcome(run, job, jobs, outcome, now)
            return True
        if job.state is State.RUNNING and not self.board.alive(job.lease):
            self._lost(run, job, jobs, now, f"no heartbeat from {job.worker} for {self.config.lease_timeout:g}s")
            return True
        overdue = job.dispatched_at is not None and now - job.dispatched_at > self.config.requeue_after
        if (
            job.state is State.QUEUED
            and overdue
            and any(w.arch == run.arch and not w.disabled for w in self.board.workers())
        ):
            self._lost(run, job, jobs, now, f"not picked up within {self.config.requeue_after:g}s")
            return True
        return changed

    def _lost(self, run: Run, job: Job, jobs: dict[str, Job], now: float, why: str) -> None:
        """The build's worker vanished (or its message did): re-dispatch under a new lease."""
        assert job.task_id
        log.warning("build %s of run %s lost: %s; re-dispatching", job.name, run.id, why)
        if job.state is State.RUNNING:
            metrics.lease_expiries.labels(run.arch).inc()
        self.dispatcher.revoke(job.task_id)
        self.board.revoke(run.id, job.name)
        job.failures.append({"worker": job.worker, "code": "E-LEASE-EXPIRED", "message": why, "at": now})
        job.task_id = job.lease = None
        if job.attempts >= self.config.max_attempts:
            job.error = {"code": "E-LEASE-EXPIRED", "message": why, "hint": "check the workers' health"}
            self._finish(run, job, State.FAILED, f"{why}; gave up after {job.attempts} attempts", now)
            return
        job.state, job.why, job.retry_at = State.WAITING, f"re-dispatching: {why}", now

    def _refusal(self, job: Job, outcome: BuildOutcome) -> BuildOutcome:
        """``outcome`` unless it claims a build whose published provenance is not signed by a trusted, unrevoked
        builder key for exactly the artifacts the store's record lists: then a failed outcome (audited, counted)."""
        if not outcome.ok:
            return outcome
        refused = self._untrusted(job, outcome.worker or job.worker or "a worker", job.key or outcome.build_key)
        if refused is not None:
            return replace(outcome, ok=False, record=None, error=refused.to_json())
        return outcome

    def _untrusted(self, job: Job, who: str, key: str) -> FarmError | None:
        """Why the store's record of ``key`` must not be accepted (audited and counted), or None when it may."""
        if self.config.trusted is None:
            return None
        try:
            keyring.check_published(self.store, key, self.config.trusted())
        except FarmError as exc:
            event = audit.REVOKED_KEY_USED if exc.code == E.KEY_REVOKED else audit.REFUSED_RESULT
            what = f"result for {job.name} ({key})"
            audit.record(self.config.audit_log, event, who=who, what=what, error=exc.code, message=exc.message)
            metrics.signature_failures.inc()
            return FarmError(
                E.RESULT_REFUSED,
                f"result from {who} refused: {exc.message}",
                hint="its builder key is not in the keyring (or was revoked); see 'mangos-farm audit'. The record "
                f"stays in the store (records are immutable): remove records/{key}.json there to rebuild it",
            )
        return None

    def _record_outcome(self, run: Run, job: Job, jobs: dict[str, Job], outcome: BuildOutcome, now: float) -> None:
        job.worker = outcome.worker or job.worker
        outcome = self._refusal(job, outcome)
        if outcome.ok and outcome.record is not None:
            job.outputs = {a["name"]: a["digest"] for a in outcome.record["artifacts"]}
            job.log_digest = outcome.log_digest
            self._worker_succeeded(job.worker)
            self._finish(run, job, State.BUILT, f"built by {job.worker} in {outcome.duration:.2f}s", now)
            return
        error = outcome.error or {"code": E.WORKER, "message": "unknown error"}
        job.error, job.log_digest, job.log_tail = error, outcome.log_digest, outcome.log_tail
        job.failures.append(
            {"worker": job.worker, "code": error.get("code"), "message": error.get("message"), "at": now}
        )
        self._worker_failed(job.worker, f"{run.id}/{job.name}", infrastructure=error.get("code") not in JOB_FAILURES)
        job.task_id = job.lease = None
        message = str(error.get("message", "unknown error"))
        if error.get("code") in JOB_FAILURES or str(error.get("code", "")).startswith("E-RECIPE-"):
            failed_on = {f["worker"] for f in job.failures if f["code"] in JOB_FAILURES}
            others = [
                w for w in self.board.workers() if w.arch == run.arch and not w.disabled and w.name not in failed_on
            ]
            if not others or job.attempts >= self.config.max_attempts:
                where = f"on {len(failed_on)} worker(s)" if len(failed_on) > 1 else ""
                self._finish(run, job, State.FAILED, f"{message} {where}".strip(), now)
                return
        elif job.attempts >= self.config.max_attempts and not self._blame_one_worker(run, job):
            self._finish(run, job, State.FAILED, f"{message} (after {job.attempts} attempts)", now)
            return
        metrics.retries.labels(str(error.get("code", "unknown"))).inc()
        backoff = min(60.0, 2.0**job.attempts)
        job.state, job.retry_at = State.WAITING, now + backoff
        job.why = f"retry in {backoff:.0f}s after: {message}"
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

    # -- workers ----------------------------------------------------------------------------------------------
    def _capacity(self) -> dict[str, int]:
        cap: Counter[str] = Counter()
        for w in self.board.workers():
            if not w.disabled:
                cap[w.arch] += w.concurrency
        return dict(cap)

    def _blame_one_worker(self, run: Run, job: Job) -> bool:
        """Infrastructure failures that all happened on one worker while healthy others exist say more about that
        worker than about the build: allow more attempts (up to twice the limit) so the build lands elsewhere."""
        failed_on = {f["worker"] for f in job.failures}
        others = [w for w in self.board.workers() if w.arch == run.arch and not w.disabled and w.name not in failed_on]
        return len(failed_on) == 1 and bool(others) and job.attempts < 2 * self.config.max_attempts

    def _worker_failed(self, worker: str | None, job_id: str, *, infrastructure: bool) -> None:
        """Failure attribution: different jobs failing on one worker point at the worker. Infrastructure failures
        (no key, store unreachable, crashes) point at it sooner than build failures do."""
        if not worker:
            return
        key = WORKER_FAIL + worker
        raw = self.kv.get(key)
        failed: dict[str, bool] = json.loads(raw) if raw else {}
        failed[job_id] = failed.get(job_id, False) or infrastructure
        self.kv.set(key, json.dumps(failed).encode(), ttl=24 * 3600)
        infra = sum(1 for v in failed.values() if v)
        limit = self.config.worker_failure_limit
        if (len(failed) >= limit or infra >= max(2, limit - 1)) and not self.board.is_disabled(worker):
            why = f"{len(failed)} different builds failed in a row: {', '.join(list(failed)[-3:])}"
            log.warning("taking worker %s out of rotation: %s", worker, why)
            self.board.disable(worker, why)
            for w in self.board.workers():
                if w.name == worker:
                    self.dispatcher.stop_consuming(worker, w.arch)

    def _worker_succeeded(self, worker: str | None) -> None:
        if worker:
            self.kv.delete(WORKER_FAIL + worker)

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

"""What comes back from dispatched builds: results recorded, leases watched, failures attributed.

A build in flight ends one of three ways. Its outcome arrives (:meth:`Outcomes._record_outcome`): a success is
accepted only when its published provenance is signed by a trusted builder key; a failure is retried elsewhere
or with back-off, or fails the build. Its worker goes silent (:meth:`Outcomes._lost`): the lease expires and the
build is re-dispatched under a new one. Or its outcome carries a lease that is no longer current: it is
discarded. Failures are attributed (:meth:`Outcomes._worker_failed`): different builds failing on one worker
take that worker out of rotation.

:class:`Outcomes` holds these steps of the :class:`~farm.coordinator.engine.Coordinator`, which inherits them;
the knobs they read (:class:`Config`) and the :class:`Dispatcher` they talk to are defined here too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from farm import metrics
from farm.build import BuildOutcome, BuildRequest
from farm.coordinator.kv import KV
from farm.coordinator.leases import LeaseBoard
from farm.coordinator.runs import Job, Run, State
from farm.errors import E, FarmError, RecipeError, TrustError
from farm.store import Store
from farm.trust import audit, keyring
from farm.trust.keys import PublicKey

log = logging.getLogger(__name__)

# Failures that say something about the build itself (retrying elsewhere may still help: a flaky test, a bad
# machine), as opposed to infrastructure trouble, which is retried with back-off.
JOB_FAILURES = {E.BUILD_FAILED, E.BUILD_OUTPUT, E.SOURCE_COMMIT, E.SOURCE_REF}
# A recipe that hits its sandbox limits, or whose dependency is refused, is not the worker's fault: never blame it.
JOB_FAILURES |= {E.SANDBOX_LIMIT, E.ARTIFACT_REFUSED, E.KEY_REVOKED}
# A bad recipe fails the same on every worker: like a build failure, but not counted against the worker's builds.
RECIPE_FAILURES = RecipeError.ids
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


class Outcomes:
    """The coordinator's steps for builds in flight and for what they leave behind (a base of the Coordinator)."""

    kv: KV
    store: Store
    board: LeaseBoard
    config: Config
    notify: Listener

    @property
    def dispatcher(self) -> Dispatcher:
        raise NotImplementedError

    def _finish(self, run: Run, job: Job, state: State, why: str, now: float) -> None:
        job.state, job.why, job.finished_at = state, why, now
        metrics.builds_finished.labels(job.name, run.lane.value, run.arch, state.value).inc()
        self.notify(job, {job.name: job})

    # -- leases and heartbeats ---------------------------------------------------------------------------------
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
        job.failures.append({"worker": job.worker, "code": E.LEASE_EXPIRED, "message": why, "at": now})
        job.task_id = job.lease = None
        if job.attempts >= self.config.max_attempts:
            job.error = {"code": E.LEASE_EXPIRED, "message": why, "hint": "check the workers' health"}
            self._finish(run, job, State.FAILED, f"{why}; gave up after {job.attempts} attempts", now)
            return
        job.state, job.why, job.retry_at = State.WAITING, f"re-dispatching: {why}", now

    # -- results and records -----------------------------------------------------------------------------------
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
            return TrustError(
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
        if error.get("code") in JOB_FAILURES or error.get("code") in RECIPE_FAILURES:
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

    # -- blame -------------------------------------------------------------------------------------------------
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

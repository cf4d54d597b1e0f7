"""What comes back from dispatched builds: results recorded, leases watched, failures attributed.

A build in flight ends one of three ways. Its outcome arrives in the coordinator's inbox
(:meth:`Outcomes._on_outcome`): a success is accepted only when its published provenance is signed by a trusted
builder key; a failure is retried elsewhere or with back-off, or fails the build. An outcome whose lease is no
longer its build's (the build was re-dispatched, finished or cancelled meanwhile) is discarded and counted in
``mangos_stale_results_total``: the record that counts is the current lease's. Or its worker goes silent
(:meth:`Outcomes._check_beats`, one batched read of every beat in flight): the lease expires and the build is
re-dispatched under a new one (:meth:`Outcomes._lost`). Failures are attributed (:meth:`Outcomes._worker_failed`):
different builds failing on one worker take that worker out of rotation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from farm import metrics
from farm.coordinator.indexes import Live
from farm.coordinator.records import Job, State
from farm.coordinator.tickstate import Config, Dispatcher, Listener, TickState
from farm.errors import E, FarmError, RecipeError, TrustError
from farm.store import BuildRecord
from farm.trust import audit, keyring
from farm.trust.keys import PublicKey

if TYPE_CHECKING:  # loaded with the first outcome: a fully cached run has none
    from farm.build import BuildOutcome

__all__ = ["Config", "Dispatcher", "Listener", "Outcomes"]

log = logging.getLogger(__name__)

# Failures that say something about the build itself (retrying elsewhere may still help: a flaky test, a bad
# machine), as opposed to infrastructure trouble, which is retried with back-off.
JOB_FAILURES = {E.BUILD_FAILED, E.BUILD_OUTPUT, E.SOURCE_COMMIT, E.SOURCE_REF}
# A recipe that hits its sandbox limits, or whose dependency is refused, is not the worker's fault: never blame it.
JOB_FAILURES |= {E.SANDBOX_LIMIT, E.ARTIFACT_REFUSED, E.KEY_REVOKED}
# A bad recipe fails the same on every worker: like a build failure, but not counted against the worker's builds.
RECIPE_FAILURES = RecipeError.ids
WORKER_FAIL = "mangos:wfail:"


class Outcomes(TickState):
    """The coordinator's steps for builds in flight and for what they leave behind (a base of the Coordinator)."""

    # -- the inbox ---------------------------------------------------------------------------------------------
    def _on_outcome(self, message: dict[str, Any], now: float) -> None:
        token = str(message.get("lease") or "")
        where = self.inflight.get(token)
        live = self.live.get(where[0]) if where else None
        job = live.jobs.get(where[1]) if live and where else None
        task = message.get("task")
        if live is None or job is None or job.lease != token or (task and job.task_id and task != job.task_id):
            log.info("discarding a stale result (lease %s)", token[:8] or "none")
            metrics.stale_results.inc()
            return
        from farm.build import BuildOutcome

        try:
            outcome = BuildOutcome.from_json(message["outcome"])
        except (KeyError, TypeError) as exc:
            log.warning("discarding a malformed outcome for %s: %s", job.name, exc)
            return
        if job.state is State.QUEUED:  # it ran and ended between two looks at the beats
            self._started(live, job, str(message.get("worker") or outcome.worker), message.get("claimed"))
        self._record_outcome(live, job, outcome, now)

    def _started(self, live: Live, job: Job, worker: str, claimed: float | None) -> None:
        job.state, job.worker, job.started_at = State.RUNNING, worker or job.worker, claimed
        if job.dispatched_at and claimed:
            metrics.build_phase_seconds.labels("queue_wait", live.run.arch).observe(
                max(0.0, claimed - job.dispatched_at)
            )
        job.why = f"building on {job.worker}"
        live.touch(job)
        self.notify(job, live.jobs)

    # -- leases and heartbeats ---------------------------------------------------------------------------------
    def _check_beats(self, now: float) -> None:
        """One read of every beat in flight: a claimed build is running, a silent one is lost."""
        beats = self.board.beats(list(self.inflight))
        for token, beat in beats.items():
            where = self.inflight.get(token)
            live = self.live.get(where[0]) if where else None
            if where is None or live is None:
                continue
            job = live.jobs[where[1]]
            if beat is not None:
                if job.state is State.QUEUED:
                    self._started(live, job, beat.worker, beat.claimed or None)
            elif job.state is State.RUNNING:
                self._lost(live, job, now, f"no heartbeat from {job.worker} for {self.config.lease_timeout:g}s")
            elif (
                job.state is State.QUEUED
                and job.dispatched_at is not None
                and now - job.dispatched_at > self.config.requeue_after
                and self._workers_of(live.run.arch)
            ):
                self._lost(live, job, now, f"not picked up within {self.config.requeue_after:g}s")

    def _lost(self, live: Live, job: Job, now: float, why: str) -> None:
        """The build's worker vanished (or its message did): re-dispatch under a new lease."""
        log.warning("build %s of run %s lost: %s; re-dispatching", job.name, live.run.id, why)
        if job.state is State.RUNNING:
            metrics.lease_expiries.labels(live.run.arch).inc()
        if job.task_id:
            self.dispatcher.revoke(job.task_id)
        if job.lease:
            self.inflight.pop(job.lease, None)
        job.failures.append({"worker": job.worker, "code": E.LEASE_EXPIRED, "message": why, "at": now})
        job.task_id = job.lease = None
        if job.attempts >= self.config.max_attempts:
            job.error = {"code": E.LEASE_EXPIRED, "message": why, "hint": "check the workers' health"}
            self._finish(live, job, State.FAILED, f"{why}; gave up after {job.attempts} attempts", now)
            return
        job.state, job.why, job.retry_at = State.WAITING, f"re-dispatching: {why}", now
        live.touch(job)
        self.eligible.append((live.run.id, job.name))

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

    def _untrusted(
        self,
        job: Job,
        who: str,
        key: str,
        *,
        record: BuildRecord | None = None,
        trusted: Sequence[PublicKey] | None = None,
    ) -> FarmError | None:
        """Why the store's record of ``key`` must not be accepted (audited and counted), or None when it may.
        ``record``: the store's record the caller read already; ``trusted``: the keyring, read once by a caller
        checking many builds."""
        if self.config.trusted is None:
            return None
        try:
            keyring.check_published(
                self.store, key, self.config.trusted() if trusted is None else trusted, record=record
            )
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

    def _record_outcome(self, live: Live, job: Job, outcome: BuildOutcome, now: float) -> None:
        run = live.run
        job.worker = outcome.worker or job.worker
        if job.lease:
            self.inflight.pop(job.lease, None)
        outcome = self._refusal(job, outcome)
        if outcome.ok and outcome.record is not None:
            job.outputs = {a["name"]: a["digest"] for a in outcome.record["artifacts"]}
            job.log_digest = outcome.log_digest
            self._worker_succeeded(job.worker)
            self._finish(live, job, State.BUILT, f"built by {job.worker} in {outcome.duration:.2f}s", now)
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
            others = [w for w in self._workers_of(run.arch) if w.name not in failed_on]
            if not others or job.attempts >= self.config.max_attempts:
                where = f"on {len(failed_on)} worker(s)" if len(failed_on) > 1 else ""
                self._finish(live, job, State.FAILED, f"{message} {where}".strip(), now)
                return
        elif job.attempts >= self.config.max_attempts and not self._blame_one_worker(live, job):
            self._finish(live, job, State.FAILED, f"{message} (after {job.attempts} attempts)", now)
            return
        metrics.retries.labels(str(error.get("code", "unknown"))).inc()
        backoff = min(60.0, 2.0**job.attempts)
        job.state, job.retry_at = State.WAITING, now + backoff
        job.why = f"retry in {backoff:.0f}s after: {message}"
        live.touch(job)
        self._later(live, job)
        self.notify(job, live.jobs)

    # -- blame -------------------------------------------------------------------------------------------------
    def _blame_one_worker(self, live: Live, job: Job) -> bool:
        """Infrastructure failures that all happened on one worker while healthy others exist say more about that
        worker than about the build: allow more attempts (up to twice the limit) so the build lands elsewhere."""
        failed_on = {f["worker"] for f in job.failures}
        others = [w for w in self._workers_of(live.run.arch) if w.name not in failed_on]
        return len(failed_on) == 1 and bool(others) and job.attempts < 2 * self.config.max_attempts

    def _worker_failed(self, worker: str | None, job_id: str, *, infrastructure: bool) -> None:
        """Failure attribution: different jobs failing on one worker point at the worker. Infrastructure failures
        (no key, store unreachable, crashes) point at it sooner than build failures do."""
        if not worker:
            return
        self.clean_workers.discard(worker)
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
            for w in self.workers:
                if w.name == worker:
                    w.disabled = True
                    self.dispatcher.stop_consuming(worker, w.arch)

    def _worker_succeeded(self, worker: str | None) -> None:
        """A success clears the worker's run of failures (a write only when there may be one to clear)."""
        if worker and worker not in self.clean_workers:
            self.kv.delete(WORKER_FAIL + worker)
            self.clean_workers.add(worker)

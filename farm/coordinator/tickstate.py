"""What the coordinator holds between ticks, and the one way a build ends (:meth:`TickState._finish`).

The coordinator keeps each active run as a :class:`~farm.coordinator.indexes.Live` (``live``, by run id), the
builds in flight by lease (``inflight``), the builds whose dependencies are all done and that still need a key or a
look in the store (``eligible``), and the retries waiting for their time (``delayed``, a heap by due time). These
are rebuilt from the state store on start and whenever another process changes a run; in between, each tick only
writes what changed. The knobs (:class:`Config`) and the :class:`Dispatcher` it talks to are defined here too.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from farm import metrics
from farm.coordinator.indexes import Live, blocked_why
from farm.coordinator.kv import KV
from farm.coordinator.leases import LeaseBoard, WorkerInfo
from farm.coordinator.records import Job, State
from farm.errors import FarmError
from farm.store import Store
from farm.trust.keys import PublicKey

if TYPE_CHECKING:  # the build request is made only to dispatch: a fully cached run does not load farm.build
    from farm.build import BuildRequest


class Dispatcher(Protocol):
    """Carries build requests to workers (outcomes come back through the state store, not through this)."""

    def submit(self, request: BuildRequest, *, arch: str, task_id: str, cls: str = "default") -> str:
        """Send a build as task ``task_id`` to the workers of ``arch`` serving class ``cls``; returns the task id."""
        ...

    def revoke(self, task_id: str) -> None: ...

    def stop_consuming(self, worker: str, arch: str) -> None: ...

    def check(self) -> None:
        """Raise a FarmError if builds sent can no longer be carried out (e.g. local workers died)."""
        ...


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


class TickState:
    """The state a coordinator holds between ticks (a base of the Coordinator; see the module docstring)."""

    kv: KV
    store: Store
    board: LeaseBoard
    config: Config
    notify: Listener
    live: dict[str, Live]
    inflight: dict[str, tuple[str, str]]  # lease -> (run id, build name)
    eligible: deque[tuple[str, str]]
    delayed: list[tuple[float, str, str]]  # (due, run id, build name), a heap
    done_recently: list[Job]  # built or cached since the recipes-behind board last looked
    workers: list[WorkerInfo]
    clean_workers: set[str]  # workers known to have no failures on record

    @property
    def dispatcher(self) -> Dispatcher:
        raise NotImplementedError

    def _keep_hold(self) -> None:
        """Renew the coordinator lease when due; raise LeaseLost if another process drives the state now."""
        raise NotImplementedError

    def _untrusted(self, job: Job, who: str, key: str) -> FarmError | None:
        """Why the store's record of ``key`` must not be accepted, or None (:class:`~.outcomes.Outcomes`)."""
        raise NotImplementedError

    def _finish(self, live: Live, job: Job, state: State, why: str, now: float) -> None:
        """End a build (built, cached, failed, blocked, cancelled): its dependents are released when it succeeded,
        blocked (and theirs, all the way down) when it did not."""
        stack = [(job, state, why)]
        while stack:
            job, state, why = stack.pop()
            if job.state is State.BLOCKED:
                continue  # a dependent reached twice (through two failed dependencies): blocked once
            job.state, job.why, job.finished_at = state, why, now
            live.unready(job.name)
            if job.lease:
                self.inflight.pop(job.lease, None)
            metrics.builds_finished.labels(job.name, live.run.lane.value, live.run.arch, state.value).inc()
            live.touch(job)
            self.notify(job, live.jobs)
            if state.done_ok:
                self.done_recently.append(job)
            for name in live.dependents.get(job.name, ()):
                dependent = live.jobs[name]
                if dependent.state is not State.WAITING:
                    continue
                if state.done_ok:
                    live.remaining[name] -= 1
                    if live.remaining[name] <= 0:
                        self.eligible.append((live.run.id, name))
                elif state.stops_dependents:
                    bad = [d for d in dependent.deps if d in live.jobs and live.jobs[d].state.stops_dependents]
                    live.unready(name)
                    stack.append((dependent, State.BLOCKED, blocked_why(bad)))

    def _later(self, live: Live, job: Job) -> None:
        """Come back to a build when its retry is due."""
        assert job.retry_at is not None
        heapq.heappush(self.delayed, (job.retry_at, live.run.id, job.name))

    def _workers_of(self, arch: str) -> list[WorkerInfo]:
        return [w for w in self.workers if w.arch == arch and not w.disabled]

"""The coordinator's steps from a released build to a dispatched one, and the gauges.

A build whose dependencies are all done is *eligible*: it gets its key, the store is asked about it once per
attempt (found: cached, or refused when its provenance does not check out), and otherwise it enters its run's
ready index of its class (what it needs of its worker: :mod:`farm.recipes.needs`). Each tick offers
:func:`farm.coordinator.policy.pick`, per run and class, the best ``k`` ready builds (``k``: the free slots of that
arch and class, :class:`farm.coordinator.slots.Slots`) and its longest-waiting one (which sets the run's aging), and
dispatches what it picks that still fits the slots the classes share, to the class's queue. Why the others wait
is decided per run and class and written only when it changes; a build's place among its run's ready builds is
filled in when the state is read (:meth:`farm.coordinator.runs.RunStore.jobs`).
"""

from __future__ import annotations

import heapq
import logging
import uuid
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from farm import metrics
from farm.coordinator import layout, policy
from farm.coordinator.indexes import Live, job_class, store_settled
from farm.coordinator.policy import Lane
from farm.coordinator.records import Job, State, new_nonce
from farm.coordinator.slots import Slots
from farm.coordinator.tickstate import TickState
from farm.identity import build_key

if TYPE_CHECKING:  # loaded with the first dispatch: a fully cached run makes no request
    from farm.build import BuildRequest

log = logging.getLogger(__name__)

WORKERS_EVERY = (2.0, 10.0)  # seconds between looks at the workers' registry: with work to place, without
NO_WORKER_EAGER = 10.0  # seconds of looking often for the first worker of an arch with ready builds


class Scheduler(TickState):
    """Release, check, index and dispatch (a base of the Coordinator)."""

    last_dispatch: dict[str, float]
    outbox: list[tuple[Live, Job]]  # dispatched this tick, to send once their records are stored
    reasons: dict[str, str]  # run id -> why its ready builds wait, to store
    gauge_archs: set[str]
    loading: Mapping[str, object]  # runs being loaded (farm.coordinator.loading)
    lazy_workers: bool
    _dispatcher: Any
    _workers_due: float
    _no_worker_since: float

    # -- eligible builds ---------------------------------------------------------------------------------------
    def _due_retries(self, now: float) -> None:
        while self.delayed and self.delayed[0][0] <= now:
            due, run_id, name = heapq.heappop(self.delayed)
            live = self.live.get(run_id)
            if live is not None and live.jobs[name].retry_at == due:
                self.eligible.append((run_id, name))

    def _settle_eligible(self, now: float) -> None:
        """Give each eligible build its key, ask the store about it once per attempt, and index it as ready."""
        while self.eligible:
            self._keep_hold()  # each may ask the store: a long release must not outlive the coordinator lease
            run_id, name = self.eligible.popleft()
            live = self.live.get(run_id)
            job = live.jobs.get(name) if live else None
            if live is None or job is None or job.state is not State.WAITING or name in live.ready:
                continue
            if job.retry_at is not None and job.retry_at > now:
                self._later(live, job)
                continue
            self._check(live, job, now)

    def _check(self, live: Live, job: Job, now: float) -> None:
        run = live.run
        if job.key is None:
            outputs = {d: live.jobs[d].outputs or {} for d in job.deps}
            recipe = live.recipe(job.name)
            job.key = build_key(recipe, job.commit, job.tree, job.environment or run.environment, outputs)
            live.touch(job)
        if job.ready_since is None:
            job.ready_since = now
            live.touch(job)
        if not store_settled(run, job):  # once per attempt, not every tick: on S3 each ask is a request
            job.store_checked = job.attempts
            live.touch(job)
            record = self.store.get_record(job.key)
            metrics.cache_lookups.labels("hit" if record is not None else "miss").inc()
            if record is not None:
                refused = self._untrusted(job, "the store", job.key)
                if refused is not None:  # a record nobody trusted wrote (a rogue worker, a poisoned index)
                    job.error = refused.to_json()
                    self._finish(live, job, State.FAILED, refused.message, now)
                    return
                job.outputs = record.outputs()
                self._finish(live, job, State.CACHED if job.attempts == 0 else State.BUILT, "found in the store", now)
                return
        live.make_ready(job)

    # -- dispatch ----------------------------------------------------------------------------------------------
    def _look_at_workers(self, now: float) -> None:
        """Refresh the workers' registry: every few seconds while there is work, rarely when idle, and often
        while ready builds have no worker at all (local workers are starting, say)."""
        self.workers = self.board.workers()
        wanted = {(live.run.arch, cls) for live in self.live.values() for cls in live.classes()}
        slots = Slots(self.workers, {}, ())
        if any(not slots.capacity(arch, cls) for arch, cls in wanted):
            self._no_worker_since = self._no_worker_since or now
            self._workers_due = now + (0.2 if now - self._no_worker_since < NO_WORKER_EAGER else WORKERS_EVERY[0])
            return
        self._no_worker_since = 0.0
        if wanted or self.inflight:
            self._workers_due = now + WORKERS_EVERY[0]
        else:
            self._workers_due = now + WORKERS_EVERY[1]

    def _slots(self) -> Slots:
        """The fleet's slots, those of the builds in flight taken."""
        running_on: Counter[str] = Counter()
        unplaced: list[tuple[str, str]] = []
        for run_id, name in self.inflight.values():
            live = self.live.get(run_id)
            if live is None:
                continue
            job = live.jobs[name]
            if job.state is State.RUNNING and job.worker:
                running_on[job.worker] += 1
            else:
                unplaced.append((live.run.arch, job_class(job)))
        return Slots(self.workers, running_on, unplaced)

    def _busy(self) -> Counter[str]:
        return Counter(self.live[r].run.arch for r, _ in self.inflight.values() if r in self.live)

    def _busy_by_class(self) -> Counter[tuple[str, ...]]:
        """Builds queued on or running at workers, per (arch, class)."""
        return Counter(
            (self.live[r].run.arch, job_class(self.live[r].jobs[n]))
            for r, n in self.inflight.values()
            if r in self.live
        )

    def _dispatch_ready(self, now: float) -> None:
        """Dispatch the best ready builds into free slots; say why the others wait."""
        waiting = [live for live in self.live.values() if live.ready]
        if not waiting:
            return
        if self._dispatcher is None and self.lazy_workers:
            _ = self.dispatcher  # start local workers; they announce themselves within a second or two
        slots = self._slots()
        free = {(lv.run.arch, cls): 0 for lv in waiting for cls in lv.classes()}
        for arch, cls in free:
            free[(arch, cls)] = slots.free(arch, cls)
        taken: dict[str, list[str]] = {}
        cands = []
        for live in waiting:
            names = taken[live.run.id] = []
            for cls in live.classes():
                if free[(live.run.arch, cls)] > 0:
                    names += live.take(free[(live.run.arch, cls)], cls)
            oldest = live.oldest()
            extra = oldest and oldest not in names and free[(live.run.arch, job_class(live.jobs[oldest]))] > 0
            for name in [*names, oldest] if extra and oldest else names:
                job = live.jobs[name]
                assert job.ready_since is not None
                cls = job_class(job)  # policy.pick counts slots by its ``arch``: here the (arch, class) pair
                cands.append(policy.Candidate(live.run.id, name, live.run.lane, _slot(live.run.arch, cls),
                                              job.ready_since, job.critical_path, cls=cls))  # fmt: skip
        per_class = {_slot(arch, cls): n for (arch, cls), n in free.items()}
        picked = policy.pick(cands, per_class, now, self.config.aging, last_dispatch=self.last_dispatch)
        chosen = []
        for c in picked if cands else []:  # classes share slots: keep what still fits, best first
            live = self.live[c.run_id]
            if slots.place(live.run.arch, c.cls):
                chosen.append(c)
                self._dispatch(live, live.jobs[c.name], now)
        for run_id, names in taken.items():
            self.live[run_id].give(names)
        self._why_waiting(waiting, slots, free, chosen)

    def _why_waiting(
        self, waiting: list[Live], slots: Slots, free: dict[tuple[str, str], int], chosen: list[policy.Candidate]
    ) -> None:
        """Why each run's ready builds wait, per class (``{position}``: filled in on read), stored when it changes:
        no live worker can take them (and what it lacks), or the slots are busy or went to a higher lane."""
        for live in waiting:
            if not live.ready:
                continue
            arch, lane = live.run.arch, live.run.lane.value
            parts = {}
            for cls in sorted(live.classes()):
                cap = slots.capacity(arch, cls)
                where = arch if cls == layout.DEFAULT_CLASS else f"{arch} {cls}"
                if cap == 0:
                    parts[cls] = slots.no_worker(arch, cls)
                elif free.get((arch, cls), 0) > 0 or cls not in live.reasons or live.caps_seen.get(cls) != cap:
                    above = [
                        c.lane for c in chosen if c.arch == _slot(arch, cls) and c.lane.level > live.run.lane.level
                    ]
                    if above and free.get((arch, cls), 0) > 0:
                        first = max(above, key=lambda x: x.level).value
                        parts[cls] = (
                            f"{where} slots went to {first} lane builds first ({lane} lane, position {{position}})"
                        )
                    else:
                        parts[cls] = f"all {cap} {where} slots busy ({lane} lane, position {{position}})"
                else:
                    parts[cls] = live.reasons[cls]
                live.caps_seen[cls] = cap
            live.reasons = parts
            reason = (
                next(iter(parts.values()))
                if len(parts) == 1
                else "; ".join(f"{c} builds: {r}" for c, r in parts.items())
            )
            if reason != live.reason:
                live.reason = self.reasons[live.run.id] = reason

    def _dispatch(self, live: Live, job: Job, now: float) -> None:
        run = live.run
        live.unready(job.name)
        job.lease = layout.lease_token(new_nonce(), run.id, job.name)
        job.task_id = str(uuid.uuid4())
        job.worker, job.started_at = None, None
        job.state, job.why, job.dispatched_at = State.QUEUED, f"queued for arch {run.arch}", now
        job.attempts += 1
        job.retry_at = None
        self.inflight[job.lease] = (run.id, job.name)
        self.last_dispatch[run.id] = now
        metrics.builds_started.labels(job.name, run.lane.value, run.arch).inc()
        if job.attempts > 1:
            metrics.redispatches.labels(job.failures[-1]["code"] if job.failures else "retry").inc()
        live.touch(job)
        self.notify(job, live.jobs)
        self.outbox.append((live, job))

    def _request(self, live: Live, job: Job) -> BuildRequest:
        from farm.build import BuildRequest, DependencyInput

        assert job.key is not None and job.lease is not None
        jobs = live.jobs
        return BuildRequest(
            build_key=job.key,
            recipe=live.recipe(job.name),
            recipe_path=job.recipe_path,
            fetch_url=job.fetch_url,
            tree=job.tree,
            environment=job.environment or live.run.environment,
            dependencies=tuple(DependencyInput(d, jobs[d].key or "", jobs[d].outputs or {}) for d in job.deps),
            lease=job.lease,
        )

    def _send(self) -> list[tuple[Live, Job]]:
        """Send the builds dispatched this tick (their records are stored). Those that could not be sent go back
        to ready (returned: their records must be stored again)."""
        outbox, self.outbox = self.outbox, []
        for i, (live, job) in enumerate(outbox):
            try:
                assert job.task_id is not None
                self.dispatcher.submit(
                    self._request(live, job), arch=live.run.arch, task_id=job.task_id, cls=job_class(job)
                )
            except Exception as exc:  # the broker is down: try again on a later tick
                log.warning("cannot send build %s: %s", job.name, exc)
                back = outbox[i:]
                for lv, jb in back:
                    self._unsend(lv, jb)
                return back
        return []

    def _unsend(self, live: Live, job: Job) -> None:
        if job.lease:
            self.inflight.pop(job.lease, None)
        job.state, job.why, job.lease, job.task_id = State.WAITING, "dispatch failed; trying again", None, None
        job.attempts -= 1
        live.make_ready(job)
        live.touch(job)

    # -- gauges ------------------------------------------------------------------------------------------------
    def _export_gauges(self, now: float) -> None:
        """Queue and fleet gauges for Prometheus, from the indexes (no build is walked)."""
        depth: Counter[tuple[str, str]] = Counter()
        oldest: dict[tuple[str, str], float] = {}
        waiting: Counter[tuple[str, ...]] = Counter()  # (arch, class), the class from the ready index's key
        for live in self.live.values():
            where = (live.run.lane.value, live.run.arch)
            self.gauge_archs.add(live.run.arch)
            depth[where] += len(live.ready)
            for cls, n in live.ready_by.items():
                waiting[(live.run.arch, cls)] += n
            first = live.oldest()
            if first is not None:
                since = live.jobs[first].ready_since or now
                oldest[where] = max(oldest.get(where, 0.0), now - since)
        for lane in Lane:
            for arch in self.gauge_archs:
                metrics.queue_depth.labels(lane.value, arch).set(depth[(lane.value, arch)])
                metrics.oldest_waiting.labels(lane.value, arch).set(oldest.get((lane.value, arch), 0.0))
        busy = self._busy()
        running: set[str] = set()
        for run_id, name in self.inflight.values():
            job = self.live[run_id].jobs[name] if run_id in self.live else None
            if job is not None and job.state is State.RUNNING and job.worker:
                running.add(job.worker)
        in_flight = self._busy_by_class()
        for arch in self.gauge_archs | set(busy):  # every known arch has its default-class series, 0 when idle
            in_flight.setdefault((arch, layout.DEFAULT_CLASS), 0)
        metrics.publish(metrics.builds_in_flight, in_flight)
        metrics.publish(metrics.builds_ready_waiting, waiting)
        metrics.runs_active.set(len(self.live) + len(self.loading))
        archs = {live.run.arch for live in self.live.values()} | set(busy)
        metrics.fleet.publish(self.workers, running, archs, now, self.config.lease_timeout)


def _slot(arch: str, cls: str) -> str:
    """The key :func:`farm.coordinator.policy.pick` counts a candidate's slots under: its arch and class."""
    return f"{arch}/{cls}"

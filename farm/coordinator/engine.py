"""The coordinator: drives every active run to completion, healing what breaks on the way.

A tick costs what changed, not what exists. It drains the inbox (outcomes workers pushed, runs that commands in
other processes changed), looks at the beats of the builds in flight when that is due (one batched read), releases
the dependents of what finished, asks the store about each newly eligible build once, dispatches the best ready
builds into free slots, and stores every change in one batch. An idle coordinator waits on the inbox (a blocking
pop), so a finished build is noticed at once and an idle tick issues no command.

Between ticks the coordinator holds its active runs in memory (:mod:`farm.coordinator.tickstate`), loaded from
the state store on start and reloaded when a command changes one, a slice per tick (:mod:`farm.coordinator.loading`:
a large run arriving does not stall dispatch from the others): a killed coordinator restarted on the same
state simply continues, and what finished stays finished. Which ready build goes first is
:mod:`farm.coordinator.policy`'s to say; release and dispatch are :mod:`farm.coordinator.scheduler`'s, builds in
flight :mod:`farm.coordinator.outcomes`'. It knows nothing of Celery: a :class:`Dispatcher` carries requests.

One coordinator drives a state at a time: :meth:`Coordinator.serve` and :meth:`Coordinator.run_until_done` hold the
coordinator lease (:class:`~farm.coordinator.leases.CoordinatorLease`) while they tick, and wait while another
process holds it. Each tick's duration is observed in ``mangos_coordinator_tick_seconds``.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from farm import metrics
from farm.coordinator import layout
from farm.coordinator.commands import Commands, is_command
from farm.coordinator.indexes import Live
from farm.coordinator.kv import KV
from farm.coordinator.leases import CoordinatorLease, Hold, LeaseBoard, LeaseLost
from farm.coordinator.loading import RunLoader
from farm.coordinator.migrate import ensure_current
from farm.coordinator.outcomes import Outcomes
from farm.coordinator.plan import Plan
from farm.coordinator.policy import Lane
from farm.coordinator.records import Job, Run, State, run_header
from farm.coordinator.runs import RunStore
from farm.coordinator.scheduler import Scheduler
from farm.coordinator.tickstate import Config, Dispatcher, Listener
from farm.coordinator.updates import LagBoard
from farm.errors import FarmError
from farm.store import Store

__all__ = ["Config", "Coordinator", "Dispatcher", "LeaseLost", "Listener"]

log = logging.getLogger(__name__)

INBOX_BATCH = 1000  # inbox messages taken at once
LAG_EVERY = (5.0, 30.0)  # seconds between looks at the recipes-behind-archive board: after builds finished, else
LEASE_SECONDS = 30.0  # the coordinator lease lapses this long after its holder stopped renewing it
LEASE_POLL = 1.0  # seconds between looks at the coordinator lease while another process holds it


class Coordinator(Scheduler, Outcomes, Commands):
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
        ensure_current(kv)
        self.lease = CoordinatorLease(kv, LEASE_SECONDS)
        self.live: dict[str, Live] = {}
        self.loading: dict[str, RunLoader] = {}
        self.replay: list[dict[str, Any]] = []
        self.inflight: dict[str, tuple[str, str]] = {}
        self.eligible: deque[tuple[str, str]] = deque()
        self.delayed: list[tuple[float, str, str]] = []
        self.done_recently: list[Job] = []
        self.workers = []
        self.clean_workers: set[str] = set()
        self.last_dispatch: dict[str, float] = {}
        self.outbox: list[tuple[Live, Job]] = []
        self.reasons: dict[str, str] = {}
        self.gauge_archs: set[str] = set()
        self._rewrite: list[tuple[Live, set[str] | None]] = []
        self._recipes: dict[str, dict[str, bytes]] = {}  # run id -> build name -> recipe, as stored
        self._inbox: list[bytes] = []
        self._drained = False
        self._loaded = False
        self._waiting_noted = False
        self._gc_was: bool | None = None
        self._taken: list[dict[str, Any]] = []  # the messages this tick took up (back to the inbox if it stops)
        self._beat_every = max(0.2, min(1.0, self.config.lease_timeout / 4))
        self._beat_due = self._workers_due = self._lag_seen = self._no_worker_since = 0.0

    @property
    def dispatcher(self) -> Dispatcher:
        if self._dispatcher is None:
            self._dispatcher = self._factory()
        return self._dispatcher

    # -- commands (from any process: the coordinator hears of them through its inbox) ---------------------------
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
        (``status`` and the web view show both). With the embedded broker the process that submits drives the run
        (:meth:`run_until_done`): it takes the coordinator lease first, waiting while another process drives this
        state (a second ``rebuild`` on one farm home waits for the first), so that no run of its is left to a
        process about to stop."""
        if self.lazy_workers:
            while not self._hold():
                self._note_waiting()
                time.sleep(LEASE_POLL)
        run, jobs = self.runs.new(
            plan, lane=lane, arch=arch, force=force, run_id=run_id, reason=reason, reasons=reasons
        )
        # The plan takes a build as cached when the store has a record for its key; it is only accepted as such
        # when that record's signed provenance checks out against the keyring (a rogue worker's record does not).
        trusted = self.config.trusted() if self.config.trusted is not None else None
        for job in jobs.values():
            record = plan.builds[job.name].record if job.name in plan.builds else None
            if (
                job.state is State.CACHED
                and job.key
                and (error := self._untrusted(job, "the store", job.key, record=record, trusted=trusted))
            ):
                job.error, job.outputs = error.to_json(), None
                job.state, job.why, job.finished_at = State.FAILED, error.message, run.created
                metrics.builds_finished.labels(job.name, lane.value, arch, State.FAILED.value).inc()
                self.notify(job, jobs)
        self.runs.insert(run, jobs)
        log.info(
            "run %s submitted: %d builds, lane %s, arch %s%s",
            run.id,
            len(run.order),
            lane,
            arch,
            f" ({reason})" if reason else "",
        )
        return run

    # -- the loop ---------------------------------------------------------------------------------------------
    def run_until_done(self, run_id: str, poll: float = 5.0) -> Run:
        """Drive the state until run ``run_id`` ends (holding the coordinator lease; while another process holds
        it, wait, or return if that process ends the run); the lease is given back on return."""
        try:
            while True:
                if not self._hold():
                    run = self.runs.get(run_id)
                    if run.status != "active":
                        return run
                    self._note_waiting()
                    time.sleep(LEASE_POLL)
                    continue
                try:
                    self.tick()
                except LeaseLost:
                    continue
                if run_id not in self.live and run_id not in self.loading:
                    run = self.runs.get(run_id)
                    if run.status != "active":
                        return run
                    self._reload(run_id, time.time())
                self._idle(poll)
        finally:
            self.lease.release()

    def serve(self, poll: float = 5.0, stop: Callable[[], bool] = lambda: False) -> None:
        """Drive the state until ``stop()``: a standby while another process holds the coordinator lease."""
        try:
            while not stop():
                try:
                    if not self._hold():
                        self._note_waiting()
                        time.sleep(LEASE_POLL)
                        continue
                    self.tick()
                except LeaseLost:
                    continue
                except FarmError as exc:  # the state store away: keep serving, and start again from what it stored
                    log.warning("coordinator tick failed, retrying: %s", exc.message)
                    self._loaded = False
                    time.sleep(1)
                    continue
                self._idle(poll)
        finally:
            self.lease.release()

    def _hold(self) -> bool:
        """Hold the coordinator lease (take it, or renew it when due); whether this process drives the state. Taken
        afresh, everything is loaded again from the stored state (another process may have driven it meanwhile)."""
        hold = self.lease.hold()
        if hold is Hold.TAKEN:
            self._loaded = False
            if self._waiting_noted:
                log.warning("coordinator lease taken: this process drives %s now", self.kv.url)
            self._waiting_noted = False
        return hold is not Hold.LOST

    def _keep_hold(self) -> None:
        """As a tick works, and before it stores anything: the lease must still be this process's (renewed when
        due). If another process took it meanwhile, the messages this tick took from the inbox (and those held
        back for runs loading) go back to it, for whoever drives the state now, and the tick stops
        (:class:`LeaseLost`) with nothing stored."""
        if self.lease.taken and self.lease.hold() is not Hold.KEPT:
            self._loaded = False
            seen = {id(m) for m in self._taken}
            held = [*(m for loader in self.loading.values() for m in loader.deferred), *self.replay]
            messages = [*self._taken, *(m for m in held if id(m) not in seen)]
            back = [json.dumps(m, sort_keys=True).encode() for m in messages]
            if back:
                self.kv.rpush(layout.INBOX, *back)
            raise LeaseLost(self.kv.url)

    def _note_waiting(self) -> None:
        if not self._waiting_noted:
            holder = self.lease.holder() or {}
            who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
            log.warning("another coordinator (%s) drives %s; waiting until it stops", who, self.kv.url)
            self._waiting_noted = True

    def _idle(self, poll: float) -> None:
        """Wait for the next tick: until something arrives in the inbox, the next timer is due, or ``poll``."""
        now = time.time()
        timeout = max(0.0, min(poll, self._next_due(now) - now))
        found = self.kv.bpop(layout.INBOX, INBOX_BATCH, timeout)
        self._inbox.extend(found)
        self._drained = len(found) < INBOX_BATCH

    def _next_due(self, now: float) -> float:
        due = [self._lag_due(), self._workers_due]
        if self.inflight:
            due.append(self._beat_due)
        if self.delayed:
            due.append(self.delayed[0][0])
        if self.eligible or self.outbox or self.loading or self.replay:
            due.append(now)
        return min(due)

    def tick(self, now: float | None = None) -> bool:
        """One step (see the module docstring); whether anything changed. Its duration is observed in
        ``mangos_coordinator_tick_seconds``."""
        started = time.perf_counter()
        try:
            return self._tick(time.time() if now is None else now, started)
        finally:
            metrics.coordinator_tick_seconds.observe(time.perf_counter() - started)

    def _tick(self, now: float, started: float) -> bool:
        if not self._loaded:
            self._load_all(now)
            self._loaded = True
        events = self._take_inbox()
        self._take_events(events, now, started)
        if self.inflight and now >= self._beat_due:
            if self._dispatcher is not None:
                self._dispatcher.check()
            self._check_beats(now)
            self._beat_due = now + self._beat_every
        self._due_retries(now)
        self._settle_eligible(now)
        if now >= self._workers_due:
            self._look_at_workers(now)
        self._dispatch_ready(now)
        self._keep_hold()
        changed = self._flush(now)
        while self.outbox:
            for live, job in self._send():
                live.touch(job)
            self._flush(now)
        self._export_gauges(now)
        if now >= self._lag_due():
            LagBoard(self.kv).refresh(self.done_recently, now)
            self.done_recently = []
            self._lag_seen = now
        return changed or bool(events)

    def _take_events(self, events: list[dict[str, Any]], now: float, started: float) -> None:
        """Reload the runs commands changed (once each), load for a while (the tick ``started`` then), then take up
        the outcomes (those held back while their run loaded first); an outcome for a run still being loaded
        waits for it."""
        self._taken = list(events)
        outcomes: list[dict[str, Any]] = []
        changed: dict[str, None] = {}
        for message in events:
            if is_command(message):
                continue
            if "run" in message:
                changed[str(message["run"])] = None
            else:
                outcomes.append(message)
        for run_id in changed:
            loader = self.loading.get(run_id)
            if loader is None or loader.started:  # one not started yet will read the run as it is now
                self._reload(run_id, now)
        if self.loading or self._gc_was is not None:
            self._advance_loading(now, started)
        self._taken.extend(self.replay)
        outcomes, self.replay = self.replay + outcomes, []
        for message in outcomes:
            self._keep_hold()  # checking an outcome may take a while (its provenance is read from the store)
            if (message.get("lease") or "") in self.inflight or not self._defer(message):
                self._on_outcome(message, now)
        commands = [m for m in events if is_command(m)]
        if commands:  # after the outcomes (a build that ended, ended), stored first: a command reads the stored run
            self._flush(now)
            self._apply_commands(commands, now)

    def _lag_due(self) -> float:
        return self._lag_seen + LAG_EVERY[0 if self.done_recently else 1]

    def _take_inbox(self) -> list[dict[str, Any]]:
        raw, self._inbox = self._inbox, []
        if not self._drained:
            while len(found := self.kv.pop(layout.INBOX, INBOX_BATCH)) > 0:
                raw.extend(found)
                if len(found) < INBOX_BATCH:
                    break
        self._drained = False
        messages = []
        for item in raw:
            try:
                message = json.loads(item)
            except ValueError:
                log.warning("discarding a malformed inbox message: %r", item[:200])
                continue
            if isinstance(message, dict):
                messages.append(message)
        return messages

    # -- storing -----------------------------------------------------------------------------------------------
    def _flush(self, now: float) -> bool:
        """Store every change of this tick in one batch; finish the runs with nothing left to do."""
        finished = []
        with self.kv.batch() as b:
            for live, members in self._rewrite:
                if self.live.get(live.run.id) is live:
                    live.rewrite(b, members)
            self._rewrite.clear()
            for live in self.live.values():
                changed = live.settle()
                live.writes(b, changed)
                if live.finished:
                    finished.append(live)
            for live in finished:
                run = live.run
                run.status, run.finished = "done", now
                b.set(layout.meta_key(run.id), run.to_bytes())
                b.srem(layout.ACTIVE, run.id)
                b.delete(*live.keys())
                b.hdel(layout.WAITING, run.id)
                self.reasons.pop(run.id, None)
            b.hset(layout.WAITING, {r: why.encode() for r, why in self.reasons.items()})
            self.reasons.clear()
            stored = len(b) > 0
        for live in finished:
            del self.live[live.run.id]
            self._recipes.pop(live.run.id, None)
            self.last_dispatch.pop(live.run.id, None)
        return stored

    # -- views ------------------------------------------------------------------------------------------------
    def status(self, run_id: str, now: float | None = None) -> dict[str, Any]:
        """The run's header and the summary of each of its builds, in plan order (no recipe: none is shown)."""
        now = time.time() if now is None else now
        run = self.runs.get(run_id)
        jobs = self.runs.jobs(run_id, now, recipes=False)
        waiting = [now - j.ready_since for j in jobs.values() if j.state is State.WAITING and j.ready_since]
        return run_header(run, jobs) | {
            "oldest_waiting_seconds": round(max(waiting), 1) if waiting else 0.0,
            "builds": [jobs[n].summary(now) for n in run.order if n in jobs],
        }

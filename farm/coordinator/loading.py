"""How the coordinator takes up runs from the state store: a slice at a time, so that a large run arriving never
stalls dispatch from the runs already loaded.

A run is loaded when the coordinator starts (every active run) and when a command changed it (submitted, retried:
the inbox says so). :class:`RunLoader` reads it in slices of its plan order (each slice: the static parts, live
records and recipes of :data:`SLICE` builds, three reads), then the members of its stored ready index, then
indexes it a slice at a time (:func:`~farm.coordinator.indexes.index_slice`). Each tick gives loading what is
left of :data:`LOAD_SECONDS` after its other work, or of :data:`LOAD_IDLE_SECONDS` while no build is in flight
or ready (nothing is kept waiting) (:meth:`Loading._advance_loading`); a run fully loaded becomes
live (:meth:`Loading._activate`): its builds in flight are watched, its ready builds compete for slots, and the
outcomes that arrived for it while it loaded are taken up then. Its stored indexes are brought in line by writing
only what differs (for a run just submitted, whose submitter indexed it: nothing but its counts).

A run cancelled while the coordinator holds it is dropped at the cost of its builds in flight
(:meth:`Loading._cancelled`): the command counted every build not ended as cancelled, and readers take a build of
a cancelled run that had not ended as cancelled (:mod:`farm.coordinator.layout`).
"""

from __future__ import annotations

import gc
import logging
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from farm.coordinator import layout
from farm.coordinator.indexes import Live, index_slice
from farm.coordinator.kv import KV
from farm.coordinator.records import Job, Run, State, decode_many, no_gc
from farm.coordinator.runs import RunStore
from farm.coordinator.tickstate import TickState

log = logging.getLogger(__name__)

SLICE = 1000  # builds read, or indexed, in one step
LOAD_SECONDS = 0.05  # of a tick's time, what loading may take (a step begun is finished)
LOAD_IDLE_SECONDS = 1.0  # the same while nothing is in flight or ready (the inbox is still looked at this often)
STORED_SLICE = 5000  # members of a stored ready index read at once


class RunLoader:
    """One run being loaded (see the module docstring). ``recipes``: its recipes as stored, if known already
    (kept from an earlier load of the run); ``deferred``: outcomes for its builds that arrived meanwhile."""

    def __init__(self, kv: KV, run: Run, recipes: dict[str, bytes] | None) -> None:
        self.kv = kv
        self.run = run
        self.jobs: dict[str, Job] = {}
        self.recipes: dict[str, bytes] = recipes if recipes is not None else {}
        self._read_recipes = recipes is None
        self.stored: set[str] = set()
        self.live: Live | None = None
        self.later: list[str] = []
        self.changed: list[str] = []
        self.deferred: list[dict[str, Any]] = []
        self.started = False  # whether anything was read yet
        self._steps = self._work()

    def advance(self, deadline: float) -> bool:
        """Work until ``deadline`` (time.perf_counter()) or the end; whether the run is fully loaded."""
        return all(time.perf_counter() < deadline for _ in self._steps)

    def _work(self) -> Iterator[None]:
        kv, run = self.kv, self.run
        order = run.order
        self.started = True
        for i in range(0, len(order), SLICE):
            self._read(order[i : i + SLICE])
            yield
        for key in layout.ready_keys(run.arch, run.lane.value, run.id):
            start = 0
            while len(found := kv.zrange(key, start, start + STORED_SLICE - 1)) > 0:
                self.stored.update(m for m, _ in found)
                start += STORED_SLICE
                yield
        live = Live(run, self.jobs, self.recipes, names=())
        now = time.time()
        for i in range(0, len(order), SLICE):
            index_slice(live, order[i : i + SLICE], now, self.later, self.changed)
            if i + SLICE < len(order):
                yield
        self.live = live

    def _read(self, names: list[str]) -> None:
        kv, run = self.kv, self.run
        static = kv.hmget(layout.static_key(run.id), names)
        records = kv.hmget(layout.jobs_key(run.id), names)
        if self._read_recipes:
            for name, recipe in zip(names, kv.hmget(layout.recipes_key(run.id), names), strict=True):
                if recipe is not None:
                    self.recipes[name] = recipe
        with no_gc():  # thousands of new objects, none of them garbage (when no run loads, the collector runs)
            fixed = iter(decode_many(v for v in static if v is not None))
            live = iter(decode_many(v for v in records if v is not None))
            for name, has_static, record in zip(names, static, records, strict=True):
                part = next(fixed) if has_static is not None else None
                state = next(live) if record is not None else None
                if part is not None:
                    self.jobs[name] = Job.from_parts(part, state)
                elif state is not None:  # a whole version 1 record
                    job = self.jobs[name] = Job.from_parts({}, state)
                    self.recipes[name], job.recipe = job.recipe_bytes(), {}


class Loading(TickState):
    """The coordinator's steps for taking up runs (a base of the Coordinator; see the module docstring)."""

    runs: RunStore
    loading: dict[str, RunLoader]
    replay: list[dict[str, Any]]  # outcomes held back while their run loaded, to take up now
    outbox: list[tuple[Live, Job]]
    reasons: dict[str, str]
    last_dispatch: dict[str, float]
    lazy_workers: bool
    _dispatcher: Any
    _rewrite: list[tuple[Live, set[str] | None]]
    _recipes: dict[str, dict[str, bytes]]
    _beat_due: float
    _workers_due: float
    _gc_was: bool | None  # while runs load: whether the garbage collector was enabled before

    def _load_all(self, now: float) -> None:
        """Start from the stored state: every active run is loaded afresh (security runs first)."""
        self.live.clear()
        self.loading.clear()
        self.inflight.clear()
        self.eligible.clear()
        self.delayed.clear()
        self.outbox.clear()
        self._rewrite.clear()
        for run in sorted(self.runs.active(), key=lambda r: (-r.lane.level, r.created)):
            self.loading[run.id] = RunLoader(self.kv, run, self._recipes.get(run.id))
        self._beat_due = self._workers_due = now

    def _reload(self, run_id: str, now: float) -> None:
        """A run changed outside this coordinator (submitted, cancelled, retried): load it again."""
        data = self.kv.get(layout.meta_key(run_id))
        old = self.live.pop(run_id, None)
        loader = self.loading.pop(run_id, None)
        deferred = loader.deferred if loader is not None else []
        if old is not None:
            for name in old.flight:
                lease = old.jobs[name].lease
                if lease and self.inflight.get(lease, ("", ""))[0] == run_id:
                    del self.inflight[lease]
        run = Run.from_bytes(data) if data is not None else None
        if run is not None and run.status == "active":
            self.loading[run_id] = RunLoader(self.kv, run, self._recipes.get(run_id))
            self.loading[run_id].deferred = deferred
            return
        self.replay.extend(deferred)  # discarded as stale, and counted so
        if old is not None and run is not None and run.status == "cancelled":
            self._cancelled(old, run)
        self._recipes.pop(run_id, None)
        self.last_dispatch.pop(run_id, None)
        self.reasons.pop(run_id, None)

    def _defer(self, message: dict[str, Any]) -> bool:
        """Hold back an outcome for a build of a run being loaded (taken up once it is); whether it was."""
        target = layout.lease_target(str(message.get("lease") or ""))
        loader = self.loading.get(target[0]) if target else None
        if loader is not None:
            loader.deferred.append(message)
        return loader is not None

    def _advance_loading(self, now: float, started: float) -> None:
        """Load runs for what is left of this tick's budget (it ``started`` then); those fully loaded become live.

        Python's cyclic garbage collector is paused while runs load, and what they loaded is then moved out of its
        sight (``gc.freeze``): a loaded run's objects live as long as the run and hold no cycles (reference
        counting frees them when the run ends), and collections that scan them would stall ticks, several times
        per large run (collections are triggered by the number of objects allocated and kept)."""
        busy = self.inflight or any(live.ready for live in self.live.values())
        deadline = started + (LOAD_SECONDS if busy else LOAD_IDLE_SECONDS)
        if self._gc_was is None:
            self._gc_was = gc.isenabled()
            gc.disable()
        for run_id, loader in list(self.loading.items()):  # a step at least each tick, past the deadline or not
            if loader.advance(deadline):
                del self.loading[run_id]
                self._activate(loader, now)
            if time.perf_counter() >= deadline:
                break
        if not self.loading:
            gc.freeze()
            if self._gc_was:
                gc.enable()
            self._gc_was = None

    def _activate(self, loader: RunLoader, now: float) -> None:
        live = loader.live
        assert live is not None
        run, jobs = live.run, live.jobs
        for name in loader.changed:
            live.touch(jobs[name])
        self.live[run.id] = live
        self._recipes[run.id] = live.recipes
        for job in live.in_flight():
            if job.lease:
                self.inflight[job.lease] = (run.id, job.name)
        for name in loader.later:
            self.eligible.append((run.id, name))
        self.done_recently.extend(j for j in jobs.values() if j.state.done_ok)
        self._rewrite.append((live, loader.stored))
        self.replay.extend(loader.deferred)
        self._beat_due = min(self._beat_due, now)
        self._workers_due = min(self._workers_due, now)  # a run arrived: place it on the fleet as it is now
        log.info("run %s loaded: %d builds, %d ready", run.id, len(jobs), len(live.ready))

    def _cancelled(self, old: Live, run: Run) -> None:
        """A run cancelled while this coordinator held it. The command counted every build not ended as cancelled
        and rewrote the records of the builds in flight it knew of; this coordinator may have dispatched more
        since, and builds may have ended meanwhile: it revokes what it has in flight, rewrites those records, and
        stores the counts as it knows them. The records of builds that never left waiting are not rewritten."""
        revoke = self._dispatcher is not None or not self.lazy_workers  # embedded: no remote control to use
        flying = [old.jobs[n] for n in sorted(old.flight)]
        for job in flying:
            if job.task_id and revoke:
                self.dispatcher.revoke(job.task_id)
            job.state, job.why, job.finished_at = State.CANCELLED, "run cancelled", run.finished
        counts = Counter(old.counts)
        counts[State.CANCELLED] += sum(n for s, n in old.counts.items() if not s.terminal)
        fields = {s.value: str(0 if not s.terminal else counts[s]).encode() for s in State}
        with self.kv.batch() as b:
            b.hset(layout.jobs_key(run.id), {j.name: j.dynamic_bytes() for j in flying})
            b.hset(layout.counts_key(run.id), fields | {layout.IN_FLIGHT: b"[]"})
            b.delete(*old.keys())
            b.hdel(layout.WAITING, run.id)

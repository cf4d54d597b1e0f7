"""Running a plan: dispatch each build once its dependencies are done, longest critical path first; a failed
build stops only its dependents. Transport-agnostic: a :class:`Dispatcher` carries requests to workers.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from farm.build import BuildOutcome, BuildRequest, DependencyInput
from farm.coordinator.plan import Decision, Plan, PlannedBuild, compute_key
from farm.store import BuildRecord, Store

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    def submit(self, request: BuildRequest) -> None: ...

    def poll(self, timeout: float) -> list[BuildOutcome]:
        """Outcomes that arrived since the last call, waiting up to ``timeout`` for the first."""
        ...


class State(enum.StrEnum):
    WAITING = "waiting"
    RUNNING = "running"
    BUILT = "built"
    CACHED = "cached"
    FAILED = "failed"
    BLOCKED = "blocked"

    @property
    def terminal(self) -> bool:
        return self in (State.BUILT, State.CACHED, State.FAILED, State.BLOCKED)


@dataclass
class BuildState:
    planned: PlannedBuild
    state: State = State.WAITING
    why: str = ""
    key: str | None = None
    record: BuildRecord | None = None
    outcome: BuildOutcome | None = None
    started: float | None = None
    finished: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "recipe": self.planned.name,
            "state": self.state.value,
            "why": self.why,
            "build_key": self.key,
            "artifacts": self.record.outputs() if self.record else None,
        }
        if self.started and self.finished:
            out["seconds"] = round(self.finished - self.started, 3)
        if self.outcome and not self.outcome.ok:
            out["error"] = self.outcome.error
            out["log"] = self.outcome.log_digest
            out["log_tail"] = self.outcome.log_tail
        return out


@dataclass
class RunResult:
    builds: dict[str, BuildState] = field(default_factory=dict)
    seconds: float = 0.0

    def count(self, state: State) -> int:
        return sum(1 for b in self.builds.values() if b.state is state)

    @property
    def ok(self) -> bool:
        return not any(b.state in (State.FAILED, State.BLOCKED) for b in self.builds.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "summary": {s.value: self.count(s) for s in State if s.terminal},
            "builds": [b.to_json() for b in self.builds.values()],
        }


Listener = Callable[[BuildState, "RunResult"], None]


class Scheduler:
    """Drives one plan to completion. The dispatcher is created only if something must be built, so a fully
    cached rebuild starts no worker at all."""

    def __init__(
        self,
        plan: Plan,
        store: Store,
        dispatcher_factory: Callable[[], Dispatcher],
        *,
        force: bool = False,
        on_change: Listener | None = None,
    ) -> None:
        self.plan = plan
        self.store = store
        self.factory = dispatcher_factory
        self.force = force
        self.notify: Listener = on_change or (lambda _b, _r: None)
        self.result = RunResult({n: BuildState(plan.builds[n]) for n in plan.order})
        self.dispatcher: Dispatcher | None = None
        self.running: dict[str, BuildState] = {}

    def run(self, poll_interval: float = 0.2) -> RunResult:
        started = time.monotonic()
        while not all(b.state.terminal for b in self.result.builds.values()):
            if self._advance():
                continue
            assert self.dispatcher is not None, "nothing running and nothing ready: the plan has a cycle"
            for outcome in self.dispatcher.poll(poll_interval):
                self._collect(outcome)
        self.result.seconds = time.monotonic() - started
        return self.result

    def _finish(self, bs: BuildState, state: State, why: str) -> None:
        bs.state, bs.why, bs.finished = state, why, time.monotonic()
        self.notify(bs, self.result)

    def _ready(self) -> tuple[list[BuildState], bool]:
        """Builds whose dependencies are all done, longest critical path first; blocks dependents of failures."""
        builds = self.result.builds
        ready, changed = [], False
        for name in self.plan.order:
            bs = builds[name]
            if bs.state is not State.WAITING:
                continue
            deps = [builds[d] for d in bs.planned.recipe.build_depends]
            bad = [d.planned.name for d in deps if d.state in (State.FAILED, State.BLOCKED)]
            if bad:
                self._finish(bs, State.BLOCKED, f"blocked by failed dependency {', '.join(bad)}")
                changed = True
                continue
            waiting_on = [d.planned.name for d in deps if d.state not in (State.BUILT, State.CACHED)]
            if waiting_on:
                bs.why = f"waiting on {', '.join(waiting_on)}"
                continue
            ready.append(bs)
        ready.sort(key=lambda b: (-b.planned.critical_path, b.planned.name))
        return ready, changed

    def _advance(self) -> bool:
        ready, changed = self._ready()
        for bs in ready:
            outputs = {d: self._record_of(d).outputs() for d in bs.planned.recipe.build_depends}
            bs.key = bs.planned.key or compute_key(bs.planned.recipe, bs.planned.source, self.plan.environment, outputs)
            if not self.force:
                record = bs.planned.record if bs.planned.decision is Decision.CACHED else None
                record = record or self.store.get_record(bs.key)
                if record is not None:
                    bs.record = record
                    self._finish(bs, State.CACHED, bs.planned.reason if bs.planned.record else "found in the store")
                    changed = True
                    continue
            self._dispatch(bs, outputs)
            changed = True
        return changed

    def _dispatch(self, bs: BuildState, outputs: dict[str, dict[str, str]]) -> None:
        assert bs.key is not None
        if self.dispatcher is None:
            self.dispatcher = self.factory()
        recipe = bs.planned.recipe
        request = BuildRequest(
            build_key=bs.key,
            recipe=recipe.content(),
            recipe_path=str(recipe.path),
            fetch_url=recipe.git_location,
            tree=bs.planned.source.tree,
            environment=self.plan.environment.digest,
            dependencies=tuple(
                DependencyInput(d, self.result.builds[d].key or "", outputs[d]) for d in recipe.build_depends
            ),
        )
        self.dispatcher.submit(request)
        bs.state, bs.why, bs.started = State.RUNNING, "dispatched", time.monotonic()
        self.running[bs.key] = bs
        self.notify(bs, self.result)

    def _collect(self, outcome: BuildOutcome) -> None:
        bs = self.running.pop(outcome.build_key, None)
        if bs is None:
            log.info("ignoring an outcome for %s that no build of this run waits for", outcome.build_key)
            return
        bs.outcome = outcome
        if outcome.ok and outcome.record is not None:
            bs.record = BuildRecord.from_json(outcome.record)
            self._finish(bs, State.BUILT, f"built by {outcome.worker} in {outcome.duration:.2f}s")
        else:
            self._finish(bs, State.FAILED, str((outcome.error or {}).get("message", "unknown error")))

    def _record_of(self, name: str) -> BuildRecord:
        record = self.result.builds[name].record
        if record is None:
            raise AssertionError(f"dependency {name} finished without a record")
        return record


def run_plan(
    plan: Plan,
    store: Store,
    dispatcher_factory: Callable[[], Dispatcher],
    *,
    force: bool = False,
    on_change: Listener | None = None,
    poll_interval: float = 0.2,
) -> RunResult:
    return Scheduler(plan, store, dispatcher_factory, force=force, on_change=on_change).run(poll_interval)

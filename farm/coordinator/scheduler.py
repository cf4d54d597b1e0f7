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


def run_plan(
    plan: Plan,
    store: Store,
    dispatcher_factory: Callable[[], Dispatcher],
    *,
    force: bool = False,
    on_change: Listener | None = None,
    poll_interval: float = 0.2,
) -> RunResult:
    """Drive the plan to completion. The dispatcher is created only if something must be built, so a fully
    cached rebuild starts no worker at all."""
    started = time.monotonic()
    result = RunResult({n: BuildState(plan.builds[n]) for n in plan.order})
    dispatcher: Dispatcher | None = None
    running: dict[str, BuildState] = {}
    notify = on_change or (lambda _b, _r: None)

    def finish(bs: BuildState, state: State, why: str) -> None:
        bs.state, bs.why, bs.finished = state, why, time.monotonic()
        notify(bs, result)

    while True:
        progressed = False
        ready: list[BuildState] = []
        for name in plan.order:
            bs = result.builds[name]
            if bs.state is not State.WAITING:
                continue
            deps = [result.builds[d] for d in bs.planned.recipe.build_depends]
            bad = [d.planned.name for d in deps if d.state in (State.FAILED, State.BLOCKED)]
            if bad:
                finish(bs, State.BLOCKED, f"blocked by failed dependency {', '.join(bad)}")
                progressed = True
                continue
            waiting_on = [d.planned.name for d in deps if d.state not in (State.BUILT, State.CACHED)]
            if waiting_on:
                bs.why = f"waiting on {', '.join(waiting_on)}"
                continue
            ready.append(bs)
        ready.sort(key=lambda b: (-b.planned.critical_path, b.planned.name))
        for bs in ready:
            outputs = {
                d: (result.builds[d].record or _missing(d)).outputs() for d in bs.planned.recipe.build_depends
            }
            bs.key = bs.planned.key or compute_key(bs.planned.recipe, bs.planned.source, plan.environment, outputs)
            if not force and bs.planned.decision is Decision.CACHED and bs.planned.record is not None:
                bs.record = bs.planned.record
                finish(bs, State.CACHED, bs.planned.reason)
                progressed = True
                continue
            if not force:
                existing = store.get_record(bs.key)
                if existing is not None:
                    bs.record = existing
                    finish(bs, State.CACHED, "found in the store")
                    progressed = True
                    continue
            if dispatcher is None:
                dispatcher = dispatcher_factory()
            request = BuildRequest(
                build_key=bs.key,
                recipe=bs.planned.recipe.content(),
                recipe_path=str(bs.planned.recipe.path),
                fetch_url=bs.planned.recipe.git_location,
                tree=bs.planned.source.tree,
                environment=plan.environment.digest,
                dependencies=tuple(
                    DependencyInput(d, result.builds[d].key or "", outputs[d])
                    for d in bs.planned.recipe.build_depends
                ),
            )
            dispatcher.submit(request)
            bs.state, bs.why, bs.started = State.RUNNING, "dispatched", time.monotonic()
            running[bs.key] = bs
            notify(bs, result)
            progressed = True
        if all(b.state.terminal for b in result.builds.values()):
            break
        if progressed:
            continue
        assert dispatcher is not None, "nothing running and nothing ready: the plan has a cycle"
        for outcome in dispatcher.poll(poll_interval):
            bs = running.pop(outcome.build_key, None)  # type: ignore[assignment]
            if bs is None:
                log.info("ignoring an outcome for %s that no build of this run waits for", outcome.build_key)
                continue
            bs.outcome = outcome
            if outcome.ok and outcome.record is not None:
                bs.record = BuildRecord.from_json(outcome.record)
                finish(bs, State.BUILT, f"built by {outcome.worker} in {outcome.duration:.1f}s")
            else:
                message = (outcome.error or {}).get("message", "unknown error")
                finish(bs, State.FAILED, str(message))
    result.seconds = time.monotonic() - started
    return result


def _missing(name: str) -> BuildRecord:
    raise AssertionError(f"dependency {name} finished without a record")

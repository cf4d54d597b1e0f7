"""A full-distribution-sized run, seeded straight into the coordinator's state: no recipes on disk, no builds.

:func:`seed` makes a run of a synthetic plan (a random DAG shaped like an archive's: each package build-depends on
up to three earlier ones) as :meth:`RunStore.create` does, in its two steps: :meth:`RunStore.new`, then, once its
builds have been moved on as a long rebuild would have moved them, :meth:`RunStore.insert` (which writes the counts
and indexes too). The first builds in plan order are built (with durations), some of the next failed and
everything above them blocked, a few running and queued; builds whose dependencies are done wait for a slot
(ready at various times), the rest wait on their dependencies.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass, field

from farm.coordinator.kv import KV
from farm.coordinator.plan import Decision, Plan, PlannedBuild
from farm.coordinator.policy import Lane
from farm.coordinator.runs import Job, RunStore, State
from farm.envs.host import Environment
from farm.errors import E
from farm.recipes import Recipe, Source
from farm.sources.git import ResolvedSource

GIT = "file:///srv/git/archive.git"
COMMIT, TREE = "c" * 40, "d" * 40


@dataclass
class Seeded:
    run_id: str
    names: list[str]  # plan order
    states: dict[str, State]
    seconds: dict[str, float] = field(default_factory=dict)  # the built builds' durations

    def named(self, state: State) -> list[str]:
        """The builds in ``state``, in plan order."""
        return [n for n in self.names if self.states[n] is state]


def synthetic_plan(count: int, rng: random.Random) -> Plan:
    """``count`` recipes named ``pkgNNNNN``, each build-depending on up to three earlier ones."""
    names = [f"pkg{i:05d}" for i in range(count)]
    deps = {
        n: sorted({names[rng.randrange(i)] for _ in range(rng.randrange(4))}) if i else [] for i, n in enumerate(names)
    }
    return plan_of(deps, names)


def plan_of(deps: dict[str, list[str]], order: list[str] | None = None) -> Plan:
    """The plan of recipes with these build-depends, none cached; ``order`` (a topological order) is the names in
    the order given, which must list every dependency before its dependents."""
    order = list(order or deps)
    critical: dict[str, float] = {}
    dependents: dict[str, list[str]] = {}
    for name in order:
        for dep in deps[name]:
            dependents.setdefault(dep, []).append(name)
    for name in reversed(order):  # the longest chain from each through its dependents, as farm.graph counts it
        critical[name] = 1.0 + max((critical[c] for c in dependents.get(name, ())), default=0.0)
    env = Environment("host", "e" * 64, {})
    source = ResolvedSource(GIT, COMMIT, TREE, 0)
    builds = {}
    for name in order:
        recipe = Recipe(
            name=name,
            version="1.0-1",
            source=Source(git=GIT, commit=COMMIT),
            steps=("true",),
            outputs=(name,),
            build_depends=tuple(deps[name]),
        )
        builds[name] = PlannedBuild(
            recipe, source, Decision.BUILD, "", critical_path=critical[name], environment=env.digest
        )
    return Plan(env, order, builds)


def seed(kv: KV, count: int = 35_000, *, built: int = 20_000, seed_value: int = 13, now: float | None = None) -> Seeded:
    """A run of ``count`` builds in ``kv``, the first ``built`` of them (in plan order) built."""
    now = time.time() if now is None else now
    rng = random.Random(seed_value)
    plan = synthetic_plan(count, rng)
    runs = RunStore(kv)
    run, jobs = runs.new(plan, lane=Lane.REBUILD, arch="amd64", force=False)
    states: dict[str, State] = {}
    seconds: dict[str, float] = {}
    running = queued = 0
    for i, name in enumerate(plan.order):
        job = jobs[name]
        deps = [states[d] for d in job.deps]
        if i < built:
            took = float(rng.randrange(5, 600))
            finished(job, now - 86_400 + i, took)
            seconds[name] = took
        elif any(s in (State.FAILED, State.BLOCKED) for s in deps):
            job.state, job.why, job.finished_at = State.BLOCKED, "blocked by failed dependency", now - 60
        elif any(s is not State.BUILT for s in deps):
            job.why = "waiting on " + ", ".join(d for d in job.deps if states[d] is not State.BUILT)
        elif rng.randrange(40) == 0:
            job.key, job.attempts, job.state = "f" * 64, 2, State.FAILED
            job.started_at, job.finished_at, job.worker = now - 900, now - 300, "w1@farm"
            job.why = "build failed: step 1/1 exited 2"
            job.error = {"code": E.BUILD_FAILED, "message": "step 1/1 exited 2", "hint": "see the log tail"}
            job.log_tail = "make: *** [all] Error 2\n"
        elif running < 8:
            running += 1
            job.key, job.attempts, job.state, job.worker = "a" * 64, 1, State.RUNNING, f"w{running}@farm"
            job.dispatched_at = job.started_at = now - 30 * running
            job.why = "building on w1@farm"
        elif queued < 4:
            queued += 1
            job.key, job.attempts, job.state, job.dispatched_at = "b" * 64, 1, State.QUEUED, now - 5
            job.why = "queued for arch amd64"
        else:
            job.key, job.ready_since, job.store_checked = "0" * 64, now - rng.randrange(10, 7200), 0
            job.why = "all 8 amd64 slots busy (rebuild lane)"
        states[name] = job.state
    runs.insert(run, jobs)
    return Seeded(run.id, list(plan.order), states, seconds)


def finished(job: Job, at: float, took: float) -> None:
    """``job`` built, ``took`` seconds until ``at``."""
    job.key, job.attempts, job.worker = hashlib.sha256(job.name.encode()).hexdigest(), 1, "w1@farm"
    job.state, job.why, job.outputs = State.BUILT, "built on w1@farm", {job.name: "0" * 64}
    job.dispatched_at, job.started_at, job.finished_at = at - took - 1, at - took, at

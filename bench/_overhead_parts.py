"""The parts of the per-build overhead that :mod:`bench.bench_overhead` measures in its own process: baselines
(a Celery no-op round trip, bare bubblewrap, bubblewrap under the farm's limits, fork/exec) and ``execute_build``
called directly, by phase."""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._common import percentile, progress
from bench._fleet import BenchFleet, profile_share, profile_summary


@dataclass
class Stat:
    name: str
    ms: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.ms)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "n": len(self.ms),
            "median_ms": round(statistics.median(self.ms), 2),
            "p90_ms": round(percentile(self.ms, 90), 2),
            "mean_ms": round(statistics.fmean(self.ms), 2),
            "min_ms": round(min(self.ms), 2),
            "max_ms": round(max(self.ms), 2),
        }


def stat(name: str, seconds: list[float]) -> Stat:
    return Stat(name, [s * 1000 for s in seconds])


# -- baselines -------------------------------------------------------------------------------------------------
CELERY = "Celery no-op task round trip, same broker (send_task().get())"
BWRAP = "bwrap with the farm's sandbox argv, sh -e -c true"
# Under the limits the run also waits for bwrap's pid 1 to finish tearing the namespaces down (it outlives the
# outer bwrap briefly), which the bare run does not: the cgroup is only left empty.
LIMITED = "  the same under the farm's limits (the build's cgroup made, joined, emptied, removed; prlimit)"


def celery_round_trip(fleet: BenchFleet, runs: int) -> Stat:
    """send_task + result.get() of a no-op task, one at a time, through a prefork worker on the fleet's broker."""
    from bench._noop_app import QUEUE, TASK, make_noop_app
    from farm.settings import Settings

    env = fleet.env(fleet.root / "noop") | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    argv = [sys.executable, "-m", "celery", "-A", "bench._noop_app", "worker", "--pool", "prefork"]
    argv += ["--concurrency", "1", "--queues", QUEUE, "--hostname", "noop@bench", "--loglevel", "WARNING"]
    argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    with (fleet.root / "noop.log").open("ab") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    fleet.procs["noop"] = proc
    app = make_noop_app(Settings.from_env({"MANGOS_FARM_BROKER": fleet.redis.url}))
    try:
        app.send_task(TASK, queue=QUEUE).get(timeout=60)  # waits for the worker to come up
        for _ in range(20):
            app.send_task(TASK, queue=QUEUE).get(timeout=10)
        samples = []
        for _ in range(runs):
            t0 = time.perf_counter()
            app.send_task(TASK, queue=QUEUE).get(timeout=10)
            samples.append(time.perf_counter() - t0)
    finally:
        app.close()
    progress(f"baseline celery no-op round trip: median {1000 * statistics.median(samples):.2f} ms")
    return stat(CELERY, samples)


def interleaved(variants: dict[str, Callable[[], object]], runs: int) -> list[Stat]:
    """Each variant ``runs`` times, in a new random order each round (after 3 rounds of warm-up), so that the
    machine's other work weighs on all of them alike and their differences mean something."""
    samples: dict[str, list[float]] = {k: [] for k in variants}
    order = list(variants)
    shuffle = random.Random(0).shuffle  # noqa: S311 - an order, not a secret
    for i in range(runs + 3):
        shuffle(order)
        for name in order:
            t0 = time.perf_counter()
            variants[name]()
            if i >= 3:
                samples[name].append(time.perf_counter() - t0)
    return [stat(name, samples[name]) for name in variants]


def process_baselines(root: Path, runs: int) -> list[Stat]:
    from farm.build import sandbox

    dirs = {d: root / "bwrap" / d for d in ("src", "out", "home", "deps")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    spec = sandbox.SandboxSpec(
        src=dirs["src"], out=dirs["out"], home=dirs["home"], deps=dirs["deps"], env=sandbox.base_env(0)
    )
    farm_argv = sandbox.bwrap_argv(spec, sandbox.step_command("true"))
    env = sandbox.launcher_env()

    def run(argv: list[str]) -> Callable[[], object]:
        return lambda: subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def limited() -> None:
        with open(os.devnull, "wb") as sink, sandbox.LimitedRunner(sandbox.Limits()) as runner:
            result, _ = runner.run(farm_argv, logfh=sink, timeout=60, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"bwrap under the farm's limits exited {result.returncode}")

    out = interleaved(
        {
            BWRAP: run(farm_argv),
            LIMITED: limited,
            "bwrap --ro-bind / / true (minimal)": run(["bwrap", "--ro-bind", "/", "/", "true"]),
            "fork/exec of true (subprocess.run)": run(["true"]),
        },
        runs,
    )
    for s in out:
        progress(f"baseline {s.name.strip()}: median {s.median:.2f} ms")
    return out


# -- execute_build in process, by phase --------------------------------------------------------------------------
class PhaseClock:
    """Accumulates wall time per label while wrapped functions run; a wrapped call inside another of the same
    label is not counted twice."""

    def __init__(self) -> None:
        self.current: dict[str, float] = {}
        self.active: set[str] = set()

    def wrap(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*a: Any, **kw: Any) -> Any:
            if label in self.active:
                return fn(*a, **kw)
            self.active.add(label)
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.active.discard(label)
                self.current[label] = self.current.get(label, 0.0) + time.perf_counter() - t0

        return wrapper


@contextmanager
def patched(obj: object, name: str, value: Any) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


SOURCE = "source (tree cache copy; on a miss git resolve + export)"
STEP = "sandbox: the step's processes (sh joins the cgroup, prlimit, bwrap, the step)"
LIMITS = "limits: the build's cgroup (made, counters read, emptied, removed)"
PACK = "collect outputs (copy files, pack directories)"
STORE = "store writes (blobs, envelope, log, record; fsync)"
SIGN = "sign provenance"
PHASES = (SOURCE, STEP, LIMITS, PACK, STORE, SIGN)
TOTAL = "execute_build, in process (total)"


def inproc_breakdown(root: Path, recipe_dir: Path, runs: int) -> list[Stat]:
    """``execute_build`` called directly (no Celery, no coordinator), its phases timed by wrapping functions."""
    from farm.build import BuildRequest, outputs, sandbox, trees
    from farm.build.context import WorkerContext
    from farm.build.execute import execute_build
    from farm.coordinator.plan import make_plan
    from farm.envs.host import host_environment
    from farm.recipes import load_dir
    from farm.sources.git import SourceCache
    from farm.store import open_store
    from farm.trust import keys as keymod
    from farm.trust import provenance

    home = root / "inproc"
    store = open_store(str(home / "store"))
    sources = SourceCache(home / "cache" / "git")
    env = host_environment()
    plan = make_plan(
        load_dir(recipe_dir),
        store,
        lambda r: sources.resolve(r.git_location, r.source.commit, r.source.ref),
        env,
    )
    ctx = WorkerContext(
        store=store,
        builder_key=keymod.generate(home / "keys"),
        sources=sources,
        work_root=home / "work",
        builder_id="bench@inproc",
        environment=env,
    )
    requests = [
        BuildRequest(
            build_key=pb.key or "",
            recipe=pb.recipe.content(),
            recipe_path=str(pb.recipe.path),
            fetch_url=pb.recipe.git_location,
            tree=pb.source.tree,
            environment=env.digest,
        )
        for pb in plan.to_build
    ][: runs + 3]
    clock = PhaseClock()
    rows: dict[str, list[float]] = {p: [] for p in (TOTAL, *PHASES, "other")}
    with ExitStack() as stack:
        stack.enter_context(patched(trees, "checkout", clock.wrap(SOURCE, trees.checkout)))
        for name in ("spawn", "_wait"):
            stack.enter_context(patched(sandbox, name, clock.wrap(STEP, getattr(sandbox, name))))
        for name in ("create", "counters", "empty", "destroy"):
            stack.enter_context(patched(sandbox.Cgroup, name, clock.wrap(LIMITS, getattr(sandbox.Cgroup, name))))
        stack.enter_context(patched(outputs, "collect_outputs", clock.wrap(PACK, outputs.collect_outputs)))
        for method in ("put_file", "put_bytes", "put_record"):
            stack.enter_context(patched(store, method, clock.wrap(STORE, getattr(store, method))))
        stack.enter_context(patched(provenance, "sign", clock.wrap(SIGN, provenance.sign)))
        for i, req in enumerate(requests):
            clock.current = {}
            t0 = time.perf_counter()
            outcome = execute_build(req, ctx)
            total = time.perf_counter() - t0
            if not outcome.ok:
                raise RuntimeError(f"in-process build failed: {outcome.error}\n{outcome.log_tail}")
            if i < 3:  # warm-up: the first build of the commit exports it with git and fills the tree cache
                continue
            rows[TOTAL].append(total)
            for p in PHASES:
                rows[p].append(clock.current.get(p, 0.0))
            rows["other"].append(total - sum(clock.current.values()))
    out = [stat(TOTAL, rows[TOTAL])]
    out += [stat(f"  {p}", rows[p]) for p in (*PHASES, "other")]
    progress(f"execute_build in process: median {out[0].median:.2f} ms")
    return out


def phase(stats: list[Stat], name: str) -> float | None:
    """The median of the stat called ``name`` (leading spaces ignored), if measured."""
    return next((s.median for s in stats if s.name.strip() == name.strip()), None)


def summarize_profiles(directory: Path, workers: int) -> dict[str, Any]:
    """Where the time goes, from py-spy's samples (wall clock: idle threads included)."""
    coordinator = directory / "coordinator.txt"
    serve = "Coordinator.serve (farm/coordinator/engine.py)"
    tick = "Coordinator.tick (farm/coordinator/engine.py)"
    task = "_build (workers/tasks.py)"

    def ours(frames: list[tuple[str, float]]) -> list[tuple[str, float]]:
        """The farm's own frames, and the library calls it makes (the frame just below one of its own)."""
        keep = ("(farm/", "(workers/", "Repo.archive (", "Repo.commit (", "Repo.__init__ (", "rmtree (", "send_task (")
        return [(f, round(s, 3)) for f, s in frames if any(k in f for k in keep)]

    out: dict[str, Any] = {
        "coordinator_busy_share": round(profile_share(coordinator, tick, serve), 3),
        "coordinator_tick": ours(profile_summary(coordinator, tick, 200))[:25],
    }
    for i in range(workers):
        out[f"w{i + 1}_build_task"] = ours(profile_summary(directory / f"w{i + 1}.txt", task, 300))[:30]
    return out

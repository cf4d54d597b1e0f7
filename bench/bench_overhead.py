"""Benchmark: the farm's per-build overhead, measured with no-op builds on a real Redis fleet.

Run from the repository root::

    .venv/bin/python -m bench.bench_overhead [--builds 100] [--fleets 1x1,2x1] [--json]

In a temporary directory it makes one real git repository (git CLI, fixed dates) and N independent recipes whose
only step is ``true > "$OUT/NAME"`` (the step does nothing; its redirection creates the declared output file).
For each fleet shape (WORKERSxCONCURRENCY) it starts a fresh fleet: redis-server on a free port (AOF, fsync every
second), a local directory store (MANGOS_FARM_STORE), one ``mangos-farm coordinator`` process and the workers as
``mangos-farm worker --concurrency C --name wK@fleet`` processes. A warm-up run (2 builds per slot: clones the
source mirror, imports, forks) is not measured; then ``mangos-farm rebuild DIR`` submits the N builds and
``mangos-farm status RUN --json`` is polled until the run is done.

What is measured, per build, all on this machine's clock:

- dispatch -> start: ``dispatched_at`` (the coordinator tick that sent the build) to ``started_at`` (the worker
  claimed the lease): message delivery through Redis, Celery's hand-off to a pool process, the lease claim;
- start -> worker done: ``started_at`` to the Celery result's ``date_done`` (read from Redis): the build itself
  (git export, bwrap sandbox, pack, sign, store) plus storing the result; of which ``execute_build`` alone;
- worker done -> noticed: ``date_done`` to ``finished_at`` (the coordinator tick that collected the outcome; a
  tick's time is taken when it starts, so this can be slightly negative when a result lands during a tick);
- total: ``dispatched_at`` to ``finished_at``. For a no-op build everything in it is the farm's overhead; its
  median is the figure of merit (target <= 50 ms).

Also reported: the run's wall time per build (first dispatch to last finish / N, i.e. throughput), and baselines
measured by this same process: a bare Celery no-op task round trip (``send_task(...).get()``) on the same Redis
with the farm's Celery settings, a bare ``bwrap`` with the farm's sandbox argv running ``sh -c true``, a minimal
``bwrap --ro-bind / / true`` and a plain fork/exec of ``true``; and ``execute_build`` called in process, broken
down by phase. Per fleet, the Redis commands served during the measured run (INFO commandstats, all clients) are
counted per build. With ``--profile DIR`` the coordinator and the workers of the first fleet are sampled by py-spy
during the measured run (collapsed stacks in DIR) and the report says where their time went.

Nothing here is a test: timings depend on the machine (and on anything else running on it: the load average is
reported). Progress goes to stderr, the report to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._common import add_redis_fsync, parser, percentile, progress, require_tools, workdir
from bench._fleet import BenchFleet, BuildTimes, make_repo, profile_share, profile_summary, write_recipe

TARGET_MEDIAN_MS = 50.0


# -- statistics ------------------------------------------------------------------------------------------------
@dataclass
class Stat:
    name: str
    ms: list[float]

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


@dataclass
class FleetResult:
    shape: str
    builds: int
    wall_seconds: float
    segments: list[Stat]
    timelines: list[BuildTimes]
    redis_commands: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "shape": self.shape,
            "builds": self.builds,
            "wall_seconds": round(self.wall_seconds, 3),
            "wall_ms_per_build": round(1000 * self.wall_seconds / self.builds, 2),
            "builds_per_second": round(self.builds / self.wall_seconds, 2),
            "segments": [s.to_json() for s in self.segments],
            "redis_commands_per_build": {
                k: round(v / self.builds, 1) for k, v in sorted(self.redis_commands.items(), key=lambda kv: -kv[1])
            },
            "timelines": [t.to_json() for t in self.timelines],
        }


@dataclass
class Report:
    builds: int
    machine: dict[str, Any]
    fleets: list[FleetResult] = field(default_factory=list)
    baselines: list[Stat] = field(default_factory=list)
    inproc: list[Stat] = field(default_factory=list)
    profile: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def headline(self) -> Stat | None:
        return next((s for s in self.fleets[0].segments if s.name.startswith("total")), None) if self.fleets else None

    def ratios(self) -> dict[str, float]:
        """The headline and the in-process build against the baselines of this same run (medians)."""
        medians = {s.name: statistics.median(s.ms) for s in (*self.baselines, *self.inproc)}
        head = self.headline()
        out: dict[str, float] = {}
        celery = next((v for k, v in medians.items() if k.startswith("Celery")), None)
        bwrap = next((v for k, v in medians.items() if k.startswith("bwrap with the farm")), None)
        inproc = next((v for k, v in medians.items() if k.startswith("execute_build")), None)
        if head and celery:
            out["total / Celery no-op round trip"] = statistics.median(head.ms) / celery
        if head and inproc:
            out["total / execute_build in process"] = statistics.median(head.ms) / inproc
        if inproc and bwrap:
            out["execute_build in process / farm bwrap of true"] = inproc / bwrap
        return out

    def to_json(self, timelines: bool) -> dict[str, Any]:
        head = self.headline()
        fleets = []
        for f in self.fleets:
            data = f.to_json()
            if not timelines:
                data.pop("timelines")
            fleets.append(data)
        return {
            "builds": self.builds,
            "machine": self.machine,
            "fleets": fleets,
            "baselines": [b.to_json() for b in self.baselines],
            "execute_build_in_process": [s.to_json() for s in self.inproc],
            "profile": self.profile,
            "target_median_ms": TARGET_MEDIAN_MS,
            "median_total_ms": round(statistics.median(head.ms), 2) if head else None,
            "ratios": {k: round(v, 2) for k, v in self.ratios().items()},
            "meets_target": (statistics.median(head.ms) <= TARGET_MEDIAN_MS) if head else None,
            "notes": self.notes,
        }


# -- fixtures --------------------------------------------------------------------------------------------------
def write_noop_recipes(directory: Path, prefix: str, n: int, git_url: str, commit: str) -> Path:
    for i in range(n):
        name = f"{prefix}{i:04d}"
        write_recipe(directory, name, git_url=git_url, commit=commit, steps=[f'true > "$OUT/{name}"'])
    return directory


# -- the fleet -------------------------------------------------------------------------------------------------
def measure_fleet(
    root: Path, shape: str, *, repo: Path, commit: str, args: argparse.Namespace, report: Report
) -> FleetResult:
    n = args.builds
    count, concurrency = (int(x) for x in shape.split("x"))
    tag = shape.replace("x", "-")
    warm = write_noop_recipes(root / f"recipes-warm-{tag}", f"w{tag}-", 2 * count * concurrency, str(repo), commit)
    measured = write_noop_recipes(root / f"recipes-{tag}", f"n{tag}-", n, str(repo), commit)
    with BenchFleet(root / f"fleet-{tag}", appendfsync=args.redis_fsync) as fleet:
        fleet.start_coordinator()
        if fleet.start_workers(count, concurrency) != count * concurrency:
            report.notes.append(f"fleet {shape}: the workers registered fewer slots than {count} x {concurrency}")
        progress(f"fleet {shape}: {count} worker(s) x concurrency {concurrency} up; warm-up run")
        fleet.wait_run(fleet.submit(warm), timeout=300, poll=0.5)
        progress(f"fleet {shape}: measuring {n} no-op builds")
        profiling = args.profile is not None and shape == args.fleets[0]
        if profiling:
            args.profile.mkdir(parents=True, exist_ok=True)
            for name in ["coordinator"] + [f"w{i + 1}" for i in range(count)]:
                fleet.start_profiler(name, args.profile / f"{name}.txt")
            time.sleep(1)  # py-spy attaches
        fleet.reset_command_stats()
        run = fleet.submit(measured)
        status = fleet.wait_run(run, timeout=args.timeout, poll=args.poll)
        commands = fleet.command_stats()
        if profiling:
            fleet.stop_profilers()
            report.profile = summarize_profiles(args.profile, count)
        if not status["ok"] or status["summary"]["built"] != n:
            raise RuntimeError(f"run {run} did not build all {n}: {status['summary']}\n{fleet.log_tail('coordinator')}")
        times = fleet.timelines(run, status)
        if shape == args.fleets[0] and not args.no_baselines:
            report.baselines.append(celery_round_trip(fleet, args.baseline_runs))
    wall = max(t.noticed for t in times) - min(t.dispatched for t in times)
    with_done = [t for t in times if t.done is not None]
    segments = [
        stat("dispatch -> start (delivery, hand-off, lease claim)", [t.started - t.dispatched for t in times]),
        stat("start -> worker done (the build, result stored)", [t.done - t.started for t in with_done if t.done]),
        stat("  of which execute_build", [t.execute for t in times if t.execute is not None]),
        stat("worker done -> coordinator noticed", [t.noticed - t.done for t in with_done if t.done]),
        stat("total: dispatch -> noticed", [t.noticed - t.dispatched for t in times]),
    ]
    result = FleetResult(shape, n, wall, segments, times, commands)
    progress(
        f"fleet {shape}: {n} builds in {wall:.2f}s; median total "
        f"{statistics.median(segments[-1].ms):.1f} ms, wall {1000 * wall / n:.1f} ms/build"
    )
    return result


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


# -- baselines -------------------------------------------------------------------------------------------------
def celery_round_trip(fleet: BenchFleet, runs: int) -> Stat:
    """send_task + result.get() of a no-op task, one at a time, through a prefork worker on the fleet's Redis."""
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
    return stat("Celery no-op task round trip, same Redis (send_task().get())", samples)


def timed_runs(argv: list[str], runs: int) -> list[float]:
    for _ in range(3):
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples.append(time.perf_counter() - t0)
    return samples


def process_baselines(root: Path, runs: int) -> list[Stat]:
    from farm.build import sandbox

    dirs = {d: root / "bwrap" / d for d in ("src", "out", "home", "deps")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    spec = sandbox.SandboxSpec(
        src=dirs["src"], out=dirs["out"], home=dirs["home"], deps=dirs["deps"], env=sandbox.base_env(0)
    )
    farm_argv = sandbox.bwrap_argv(spec, sandbox.step_command("true"))
    out = [
        stat("bwrap with the farm's sandbox argv, sh -e -c true", timed_runs(farm_argv, runs)),
        stat("bwrap --ro-bind / / true (minimal)", timed_runs(["bwrap", "--ro-bind", "/", "/", "true"], runs)),
        stat("fork/exec of true (subprocess.run)", timed_runs(["true"], runs)),
    ]
    for s in out:
        progress(f"baseline {s.name}: median {statistics.median(s.ms):.2f} ms")
    return out


# -- execute_build in process, by phase --------------------------------------------------------------------------
class PhaseClock:
    """Accumulates wall time per label while wrapped functions run (no nesting among the wrapped ones)."""

    def __init__(self) -> None:
        self.current: dict[str, float] = {}

    def wrap(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
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


PHASES = (
    "source resolve (GitPython: mirror, commit, tree)",
    "source export (git archive + untar + utime)",
    "sandbox: bwrap per step",
    "collect outputs",
    "store writes (blobs, envelope, log, record; fsync)",
    "sign provenance",
)


def inproc_breakdown(root: Path, recipe_dir: Path, runs: int) -> list[Stat]:
    """``execute_build`` called directly (no Celery, no coordinator), its phases timed by wrapping functions."""
    from contextlib import ExitStack

    from farm.build import BuildRequest, outputs
    from farm.build import execute as buildmod
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
    rows: dict[str, list[float]] = {p: [] for p in ("total", *PHASES, "other")}
    with ExitStack() as stack:
        stack.enter_context(patched(sources, "resolve", clock.wrap(PHASES[0], sources.resolve)))
        stack.enter_context(patched(sources, "export", clock.wrap(PHASES[1], sources.export)))
        stack.enter_context(patched(buildmod, "_run_steps", clock.wrap(PHASES[2], buildmod._run_steps)))
        stack.enter_context(patched(outputs, "collect_outputs", clock.wrap(PHASES[3], outputs.collect_outputs)))
        for method in ("put_file", "put_bytes", "put_record"):
            stack.enter_context(patched(store, method, clock.wrap(PHASES[4], getattr(store, method))))
        stack.enter_context(patched(provenance, "sign", clock.wrap(PHASES[5], provenance.sign)))
        for i, req in enumerate(requests):
            clock.current = {}
            t0 = time.perf_counter()
            outcome = execute_build(req, ctx)
            total = time.perf_counter() - t0
            if not outcome.ok:
                raise RuntimeError(f"in-process build failed: {outcome.error}\n{outcome.log_tail}")
            if i < 3:  # warm-up
                continue
            rows["total"].append(total)
            for p in PHASES:
                rows[p].append(clock.current.get(p, 0.0))
            rows["other"].append(total - sum(clock.current.values()))
    out = [stat("execute_build, in process (total)", rows["total"])]
    out += [stat(f"  {p}", rows[p]) for p in (*PHASES, "other")]
    progress(f"execute_build in process: median {statistics.median(out[0].ms):.2f} ms")
    return out


# -- report ----------------------------------------------------------------------------------------------------
def render(report: Report) -> str:
    lines = [f"mangos-farm per-build overhead: {report.builds} no-op builds, {report.machine}", ""]
    header = f"{'per build (ms)':<58} {'median':>8} {'p90':>8} {'mean':>8} {'min':>8} {'max':>8}"

    def row(s: Stat) -> str:
        j = s.to_json()
        return (
            f"{s.name:<58} {j['median_ms']:>8.2f} {j['p90_ms']:>8.2f} {j['mean_ms']:>8.2f} "
            f"{j['min_ms']:>8.2f} {j['max_ms']:>8.2f}"
        )

    for f in report.fleets:
        count, conc = f.shape.split("x")
        lines.append(
            f"fleet {count} worker(s) x concurrency {conc}: {f.builds} builds, first dispatch -> last noticed "
            f"{f.wall_seconds:.2f}s = {1000 * f.wall_seconds / f.builds:.1f} ms/build "
            f"({f.builds / f.wall_seconds:.1f} builds/s)"
        )
        lines += [header, "-" * len(header)] + [row(s) for s in f.segments]
        top = sorted(f.redis_commands.items(), key=lambda kv: -kv[1])[:8]
        total = sum(f.redis_commands.values()) / f.builds
        lines.append(
            f"Redis commands per build (all clients, status polls included): {total:.0f} = "
            + ", ".join(f"{k} {v / f.builds:.1f}" for k, v in top)
        )
        lines.append("")
    for title, stats in (("baselines, same process", report.baselines), ("execute_build in process", report.inproc)):
        if stats:
            lines += [f"{title}:", header, "-" * len(header)] + [row(s) for s in stats] + [""]
    if report.profile:
        lines.append(
            f"py-spy, fleet {report.fleets[0].shape}: the coordinator spent "
            f"{100 * report.profile['coordinator_busy_share']:.0f}% of the run ticking; inside a tick:"
        )
        lines += [f"  {100 * share:5.1f}%  {frame}" for frame, share in report.profile["coordinator_tick"][1:16]]
        lines.append("inside the worker's build task (w1):")
        lines += [f"  {100 * share:5.1f}%  {frame}" for frame, share in report.profile["w1_build_task"][1:20]]
        lines.append("")
    lines += [f"ratio {name}: {value:.1f}x" for name, value in report.ratios().items()]
    for note in report.notes:
        lines.append(f"NOTE: {note}")
    head = report.headline()
    if head:
        med = statistics.median(head.ms)
        verdict = "meets" if med <= TARGET_MEDIAN_MS else "MISSES"
        lines.append(
            f"farm overhead per no-op build (dispatch -> noticed, fleet {report.fleets[0].shape}): "
            f"median {med:.1f} ms, p90 {percentile(head.ms, 90):.1f} ms; "
            f"{verdict} the target of {TARGET_MEDIAN_MS:g} ms median"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=False)
    return {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "redis": redis_version.stdout.split()[2] if redis_version.returncode == 0 else None,
        "loadavg_before": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    p = parser("bench_overhead", __doc__)
    p.add_argument("--builds", type=int, default=100, help="no-op builds per fleet (default 100)")
    p.add_argument(
        "--fleets", default="1x1,2x1", help="fleet shapes WORKERSxCONCURRENCY, comma-separated (default 1x1,2x1)"
    )
    p.add_argument("--poll", type=float, default=1.0, help="seconds between `mangos-farm status` polls (default 1)")
    p.add_argument("--timeout", type=float, default=600, help="give up on a run after this many seconds")
    p.add_argument("--baseline-runs", type=int, default=200, help="repetitions of each baseline (default 200)")
    p.add_argument("--no-baselines", action="store_true", help="skip the baselines and the in-process breakdown")
    add_redis_fsync(p)
    p.add_argument(
        "--profile", type=Path, help="record py-spy profiles of the coordinator and workers (first fleet) into DIR"
    )
    p.add_argument("--timelines", action="store_true", help="with --json: include every build's timeline")
    args = p.parse_args(argv)
    args.fleets = [s.strip() for s in args.fleets.split(",") if s.strip()]
    for shape in args.fleets:
        parts = shape.split("x")
        if len(parts) != 2 or not all(x.isdigit() and int(x) > 0 for x in parts):
            p.error(f"bad fleet shape '{shape}': use WORKERSxCONCURRENCY, e.g. 2x1")
    if args.builds < 1 or args.baseline_runs < 1:
        p.error("--builds and --baseline-runs must be at least 1")
    require_tools(p, "git", "bwrap", "redis-server", "dpkg-query")
    report = Report(builds=args.builds, machine=machine())
    with workdir("mangos-bench-overhead-", args.keep) as root:
        repo = root / "repo"
        commit = make_repo(repo)
        for shape in args.fleets:
            report.fleets.append(measure_fleet(root, shape, repo=repo, commit=commit, args=args, report=report))
        if not args.no_baselines:
            report.baselines += process_baselines(root, args.baseline_runs)
            inproc_dir = write_noop_recipes(root / "recipes-inproc", "i-", args.builds + 3, str(repo), commit)
            report.inproc = inproc_breakdown(root, inproc_dir, args.builds)
    report.machine["loadavg_after"] = os.getloadavg()
    print(json.dumps(report.to_json(args.timelines), indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: planning and fully cached rebuilds of a large recipe set.

Run from the repository root::

    .venv/bin/python -m bench.bench_plan [--recipes 1000] [--json]

It makes, in a temporary directory, one real git repository (git CLI, fixed dates) with a few commits and N
recipe files ``r0000.toml`` ... each depending on 0-3 earlier recipes (seeded random) and pinned to one of the
repository's commits. It then

1. generates a builder key under a temporary MANGOS_FARM_HOME;
2. times ``plan`` in process (the functions ``cmd_plan`` calls), with a cold and a warm source cache;
3. builds every recipe for real with one ``mangos-farm rebuild DIR`` (MANGOS_FARM_WORKERS=2), printing progress;
4. times a fully cached ``mangos-farm rebuild DIR`` as a subprocess, and the same in process (plan, submit with
   its provenance checks, run; checked to make no dispatcher, so nothing can be dispatched);
5. times baselines in the same process: ``python -c pass`` and parsing the N recipe files with tomllib alone.

With ``--keep`` the work directory stays; ``--reuse DIR`` then times only (4) and (5) on it, which takes seconds
instead of the minutes of the real build. The target for (4), as the CLI runs it, is 0.3 s for 1,000 recipes.

Nothing here is a test: timings depend on the machine. Progress goes to stderr, the report to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._common import parser, progress, require_tools, workdir
from farm.coordinator.plan import Decision, Plan, make_plan
from farm.coordinator.planning import source_resolver
from farm.coordinator.policy import Lane
from farm.envs.host import host_environment
from farm.recipes import RecipeSet, load_dir
from farm.settings import Settings
from farm.store import Store, open_store
from farm.trust import keys as keymod
from tests.lib.cli import CLI, clean_env
from tests.lib.git import commit_files
from workers.fleet import open_fleet

TARGET_SECONDS = 0.3
SEED = 20260203
COMMITS = 4


# -- measurements ----------------------------------------------------------------------------------------------
@dataclass
class Timing:
    name: str
    samples: list[float]
    note: str = ""

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "runs": len(self.samples),
            "min": round(self.min, 4),
            "median": round(self.median, 4),
            "samples": [round(s, 4) for s in self.samples],
            "note": self.note,
        }


@dataclass
class Report:
    recipes: int
    machine: dict[str, Any]
    timings: dict[str, Timing] = field(default_factory=dict)
    build: dict[str, Any] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, key: str, timing: Timing) -> Timing:
        self.timings[key] = timing
        progress(f"{timing.name}: min {timing.min:.3f}s median {timing.median:.3f}s")
        return timing

    def to_json(self) -> dict[str, Any]:
        cached = self.timings.get("cached_rebuild_cli")
        return {
            "recipes": self.recipes,
            "machine": self.machine,
            "timings": {k: t.to_json() for k, t in self.timings.items()},
            "build": self.build,
            "ratios": {k: round(v, 2) for k, v in self.ratios.items()},
            "target_seconds": TARGET_SECONDS,
            "cached_rebuild_median": round(cached.median, 4) if cached else None,
            "meets_target": (cached.median <= TARGET_SECONDS) if cached else None,
            "notes": self.notes,
        }


def repeat(fn: Callable[[], object], runs: int, cpu: list[float] | None = None) -> list[float]:
    """Wall seconds of each of ``runs`` calls of ``fn``; with ``cpu``, the CPU seconds (user + system) of the child
    processes each call waited for are appended to it (on a loaded machine, the steadier figure)."""
    samples = []
    for _ in range(runs):
        before = children_cpu()
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
        if cpu is not None:
            cpu.append(children_cpu() - before)
    return samples


def children_cpu() -> float:
    """CPU seconds (user + system) used so far by the child processes this process has waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- fixtures: a git repository and N recipes ------------------------------------------------------------------
def make_repo(path: Path, commits: int) -> list[str]:
    """One repository with ``commits`` commits, an hour apart (fixed identity and dates)."""
    shas = []
    for i in range(commits):
        files = {"README": f"bench source, revision {i}\n", f"src/file{i}.txt": f"content {i}\n" * 10}
        shas.append(commit_files(path, files, message=f"revision {i}", date=f"2026-02-03T{4 + i:02d}:05:06Z"))
    return shas


def dependencies(n: int, seed: int) -> list[list[int]]:
    """For each recipe i, 0-3 distinct earlier recipes, chosen by a seeded random (so the graph is stable)."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible graph, not a secret
    out = []
    for i in range(n):
        k = rng.randint(0, min(3, i))
        out.append(sorted(rng.sample(range(i), k)))
    return out


def write_recipes(directory: Path, n: int, repo_rel: str, commits: list[str], seed: int) -> list[list[int]]:
    directory.mkdir(parents=True)
    deps = dependencies(n, seed)
    for i in range(n):
        name = f"r{i:04d}"
        lines = [f'name = "{name}"', 'version = "1.0"', 'outputs = ["d"]']
        if deps[i]:
            lines.append("build-depends = [" + ", ".join(f'"r{d:04d}"' for d in deps[i]) + "]")
        lines += [
            "",
            "[source]",
            f'git = "{repo_rel}"',
            f'commit = "{commits[i % len(commits)]}"',
            "",
            "[build]",
            f'steps = [\'mkdir -p "$OUT/d" && echo {name} > "$OUT/d/f"\']',
        ]
        (directory / f"{name}.toml").write_text("\n".join(lines) + "\n")
    return deps


def depth(deps: list[list[int]]) -> int:
    level: list[int] = []
    for ds in deps:
        level.append(1 + max((level[d] for d in ds), default=0))
    return max(level, default=0)


# -- the farm, in process --------------------------------------------------------------------------------------
@dataclass
class PlanPhases:
    load: float
    environment: float
    plan: float
    submit: float = 0.0
    run: float = 0.0

    @property
    def total(self) -> float:
        return self.load + self.environment + self.plan + self.submit + self.run


def plan_in_process(settings: Settings, recipe_dir: Path) -> tuple[Plan, Store, PlanPhases]:
    """What ``cmd_plan`` does (``farm.coordinator.planning.plan_recipes``), phase by phase: with the farm's caches
    (parsed recipes, the host's package list) as a CLI process finds them, not this process's memory."""
    host_environment.cache_clear()  # each CLI invocation reads the host's package list once; so does each plan here
    t0 = time.perf_counter()
    recipes: RecipeSet = load_dir(recipe_dir, settings.cache_dir)
    t1 = time.perf_counter()
    env = host_environment(settings.cache_dir)
    t2 = time.perf_counter()
    store = open_store(settings.store_url)
    with source_resolver(settings) as resolve:
        plan = make_plan(recipes, store, resolve, env)
    t3 = time.perf_counter()
    return plan, store, PlanPhases(load=t1 - t0, environment=t2 - t1, plan=t3 - t2)


def cached_rebuild_in_process(settings: Settings, recipe_dir: Path, n: int) -> PlanPhases:
    """``cmd_rebuild`` minus the interpreter, the imports and result.json: key check, plan, submit (which checks
    every cached build's signed provenance, through the farm's memo), run. The coordinator is wired as the CLI wires
    it (``workers.fleet.open_fleet``); a fully cached run must not make a dispatcher, and that is checked."""
    keymod.check_builder(settings.keys_dir)
    plan, store, phases = plan_in_process(settings, recipe_dir)
    t0 = time.perf_counter()
    fleet = open_fleet(settings, store)
    run = fleet.coordinator.submit(plan, lane=Lane.REBUILD, arch=settings.build_arch, force=False)
    t1 = time.perf_counter()
    fleet.coordinator.run_until_done(run.id)
    status = fleet.coordinator.status(run.id)
    t2 = time.perf_counter()
    phases.submit, phases.run = t1 - t0, t2 - t1
    if fleet.dispatchers:
        fleet.close()
        raise AssertionError("a fully cached rebuild made a dispatcher (it would have built something)")
    if status["summary"]["cached"] != n or not status["ok"]:
        raise AssertionError(f"expected {n} cached builds, got {status['summary']}")
    return phases


# -- the farm, as subprocesses ---------------------------------------------------------------------------------
def latest_run_summary(settings: Settings) -> dict[str, int]:
    runs = sorted(p for p in settings.runs_dir.iterdir() if (p / "result.json").is_file())
    summary: dict[str, int] = json.loads((runs[-1] / "result.json").read_text())["summary"]
    return summary


def build_all(env: dict[str, str], recipe_dir: Path, n: int, limit: float) -> dict[str, Any]:
    """One real ``mangos-farm rebuild``; progress lines are relayed (thinned); stopped with SIGINT at ``limit``."""
    progress(f"building {n} recipes for real: {CLI} rebuild {recipe_dir} (limit {limit:.0f}s)")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [CLI, "rebuild", str(recipe_dir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    done = [0]
    shown = [0]
    stdout_lines: list[str] = []
    stderr_tail: list[str] = []
    every = max(1, n // 20)
    pattern = re.compile(r"^\[(\d+)/(\d+)\]")

    def relay_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            stderr_tail[:] = [*stderr_tail[-40:], line.rstrip()]
            m = pattern.match(line)
            if not m:
                continue
            done[0] = int(m.group(1))
            if done[0] >= shown[0] + every or (done[0] == n and shown[0] != n):
                shown[0] = done[0]
                elapsed = time.perf_counter() - t0
                progress(f"  {done[0]}/{n} done after {elapsed:.0f}s ({done[0] / elapsed:.2f} builds/s)")

    def collect_stdout() -> None:
        assert proc.stdout is not None
        stdout_lines.extend(proc.stdout)

    readers = [threading.Thread(target=relay_stderr), threading.Thread(target=collect_stdout)]
    for r in readers:
        r.start()
    interrupted = False
    try:
        rc = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        interrupted = True
        progress(f"build limit of {limit:.0f}s reached after {done[0]}/{n}: interrupting the rebuild (SIGINT)")
        proc.send_signal(signal.SIGINT)  # the CLI stops its workers on KeyboardInterrupt
        try:
            rc = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
    seconds = time.perf_counter() - t0
    for r in readers:
        r.join()
    finished = done[0]
    info: dict[str, Any] = {
        "seconds": round(seconds, 2),
        "exit_code": rc,
        "finished": finished,
        "complete": not interrupted and rc == 0,
        "builds_per_second": round(finished / seconds, 3) if seconds else 0.0,
        "last_line": ("".join(stdout_lines).strip().splitlines() or [""])[-1],
    }
    if rc != 0 and not interrupted:
        info["stderr_tail"] = stderr_tail
    progress(f"build finished: exit {rc}, {finished}/{n} in {seconds:.1f}s ({info['builds_per_second']} builds/s)")
    return info


def run_cli(env: dict[str, str], *args: str) -> None:
    proc = subprocess.run([CLI, *args], env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"mangos-farm {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")


# -- main ------------------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": sys.platform,
        "git": subprocess.run(["git", "--version"], capture_output=True, text=True, check=False).stdout.strip(),
    }


def farm_env(root: Path, home: Path, workers: int) -> dict[str, str]:
    """The environment of every farm process the bench starts. Python's bytecode cache is on (under ``root``), as
    for an installed farm: with PYTHONDONTWRITEBYTECODE set, every CLI run would compile each module it imports
    again (~0.1 s of CPU here), and the figure would measure the compiler."""
    env = clean_env(
        MANGOS_FARM_HOME=str(home), MANGOS_FARM_WORKERS=str(workers), PYTHONPYCACHEPREFIX=str(root / "pycache")
    )
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def reuse(args: argparse.Namespace, root: Path) -> Report:
    """Only the cached part (4) and the baselines (5), on a work directory an earlier ``--keep`` run built."""
    recipe_dir, home = root / "recipes", root / "home"
    if not (recipe_dir.is_dir() and (home / "store").is_dir()):
        raise SystemExit(f"{root} is not a work directory kept by 'bench_plan --keep' (no recipes/ or home/store/)")
    args.recipes = len(list(recipe_dir.glob("*.toml")))
    report = Report(recipes=args.recipes, machine=machine())
    report.notes.append(f"reused {root}: fixtures and the real build are from an earlier run")
    env = farm_env(root, home, args.workers)
    measure_cached(report, args, env, Settings.from_env(env), recipe_dir)
    baselines(report, recipe_dir, args.repeat, env)
    return report


def run_bench(args: argparse.Namespace, root: Path) -> Report:
    n = args.recipes
    report = Report(recipes=n, machine=machine())
    reps = args.repeat

    # Fixtures.
    t0 = time.perf_counter()
    commits = make_repo(root / "repo", COMMITS)
    deps = write_recipes(root / "recipes", n, "../repo", commits, args.seed)
    recipe_dir = root / "recipes"
    edges = sum(len(d) for d in deps)
    report.build["graph"] = {"recipes": n, "edges": edges, "depth": depth(deps), "commits": len(commits)}
    progress(
        f"made 1 repository ({len(commits)} commits) and {n} recipes ({edges} edges) in {time.perf_counter() - t0:.2f}s"
    )

    home = root / "home"
    env = farm_env(root, home, args.workers)
    settings = Settings.from_env(env)

    # (1) the builder key.
    key = keymod.generate(settings.keys_dir)
    progress(f"builder key {key.public.keyid[:16]}... in {settings.keys_dir}")

    # (2) plan in process: cold source cache (clone), then warm; the store is empty.
    shutil.rmtree(settings.cache_dir / "git", ignore_errors=True)
    plan, _, phases = plan_in_process(settings, recipe_dir)
    report.add("plan_cold", Timing("plan, in process, cold source cache, empty store", [phases.total]))
    report.build["plan_cold_phases"] = {k: round(v, 4) for k, v in vars(phases).items()}
    summary = plan.to_json()["summary"]
    report.build["plan_before_build"] = summary
    warm: list[PlanPhases] = []
    for _ in range(reps):
        warm.append(plan_in_process(settings, recipe_dir)[2])
    report.add("plan_warm", Timing("plan, in process, warm source cache, empty store", [p.total for p in warm]))

    # (3) build everything for real.
    info = build_all(env, recipe_dir, n, args.build_limit)
    report.build["real_build"] = info
    if not info["complete"]:
        rate = info["builds_per_second"]
        eta = n / rate if rate else float("inf")
        report.notes.append(
            f"the real build of {n} recipes did not complete within {args.build_limit:.0f}s: "
            f"{info['finished']} built at {rate} builds/s (all {n} would take about {eta / 60:.1f} min); "
            "cached-rebuild figures were skipped"
        )
        report.build["estimated_full_build_seconds"] = round(eta, 1)
        baselines(report, recipe_dir, reps, env)
        return report
    summary_after = latest_run_summary(settings)
    info["summary"] = summary_after
    info["finished"] = summary_after.get("built", 0) + summary_after.get("cached", 0)  # not the parsed progress
    info["builds_per_second"] = round(info["finished"] / info["seconds"], 3)

    measure_cached(report, args, env, settings, recipe_dir)
    baselines(report, recipe_dir, reps, env)
    return report


def measure_cached(
    report: Report, args: argparse.Namespace, env: dict[str, str], settings: Settings, recipe_dir: Path
) -> None:
    """(4) Everything is in the store now: time fully cached rebuilds (and plans), as a subprocess and in process."""
    n, reps = args.recipes, args.repeat

    # (4a) fully cached rebuild as a user runs it.
    def cli_rebuild() -> None:
        run_cli(env, "rebuild", str(recipe_dir))
        s = latest_run_summary(settings)
        if s.get("cached") != n or s.get("built", 0) != 0:
            raise AssertionError(f"a cached rebuild was not fully cached: {s}")

    cli_rebuild()  # once untimed: the bytecode cache is written, as it is for an installed farm
    cpu: list[float] = []
    report.add(
        "cached_rebuild_cli",
        Timing("cached `mangos-farm rebuild DIR` (subprocess wall)", repeat(cli_rebuild, args.cli_repeat, cpu)),
    )
    report.add("cached_rebuild_cli_cpu", Timing("  its CPU time (user + system, the same runs)", cpu))
    report.add(
        "plan_cli",
        Timing(
            "cached `mangos-farm plan DIR` (subprocess wall)",
            repeat(lambda: run_cli(env, "plan", str(recipe_dir)), reps),
        ),
    )

    # (4b) the same in process, with a dispatcher factory that raises.
    cached_plan, _, _ = plan_in_process(settings, recipe_dir)
    assert all(b.decision is Decision.CACHED for b in cached_plan.builds.values())
    phases_list = [cached_rebuild_in_process(settings, recipe_dir, n) for _ in range(reps)]
    report.add(
        "cached_rebuild_inproc",
        Timing("cached make_plan + submit + run, in process (no dispatcher)", [p.total for p in phases_list]),
    )
    for part in ("load", "environment", "plan", "submit", "run"):
        report.add(
            f"inproc_{part}",
            Timing(f"  of which {PHASE_NAMES[part]}", [getattr(p, part) for p in phases_list]),
        )


PHASE_NAMES = {
    "load": "load_dir (unchanged files from the parse cache)",
    "environment": "host_environment (package list cached by dpkg state)",
    "plan": "make_plan (resolve, keys, records by level)",
    "submit": "submit (provenance checks, memo)",
    "run": "coordinator run (all cached)",
}


def baselines(report: Report, recipe_dir: Path, reps: int, env: dict[str, str]) -> None:
    report.add(
        "python_startup",
        Timing("baseline: `python -c pass` (subprocess wall)", repeat(lambda: run_python("pass", env), reps)),
    )
    report.add(
        "cli_import",
        Timing(
            "reference: `python -c 'import farm.cli.main'`",
            repeat(lambda: run_python("import farm.cli.main", env), reps),
        ),
    )
    files = sorted(recipe_dir.glob("*.toml"))

    def parse_all() -> None:
        for f in files:
            with f.open("rb") as fh:
                tomllib.load(fh)

    report.add("tomllib", Timing(f"baseline: tomllib.load of {len(files)} files, in process", repeat(parse_all, reps)))
    cached = report.timings.get("cached_rebuild_cli")
    if cached is None:
        return
    startup, toml = report.timings["python_startup"].median, report.timings["tomllib"].median
    report.ratios = {
        "cached_rebuild / python startup": cached.median / startup,
        "cached_rebuild / tomllib load": cached.median / toml,
        "cached_rebuild / (python startup + tomllib load)": cached.median / (startup + toml),
        "cached_rebuild_inproc / tomllib load": report.timings["cached_rebuild_inproc"].median / toml,
    }


def run_python(code: str, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


def render(report: Report) -> str:
    lines = [f"mangos-farm plan/rebuild benchmark: {report.recipes} recipes, {report.machine}"]
    graph = report.build.get("graph", {})
    lines.append(f"graph: {graph}")
    lines.append("")
    width = max(len(t.name) for t in report.timings.values())
    lines.append(f"{'measurement':<{width}}  {'runs':>4}  {'min':>8}  {'median':>8}")
    lines.append("-" * (width + 28))
    for t in report.timings.values():
        lines.append(f"{t.name:<{width}}  {len(t.samples):>4}  {t.min:>7.3f}s  {t.median:>7.3f}s")
    build = report.build.get("real_build")
    if build:
        lines.append("")
        lines.append(
            f"real build (MANGOS_FARM_WORKERS={report.build.get('workers')}): {build['finished']} of {report.recipes} "
            f"in {build['seconds']:.1f}s = {build['builds_per_second']} builds/s, exit {build['exit_code']}"
        )
        if build.get("summary"):
            lines.append(f"  run summary: {build['summary']}")
    if report.ratios:
        lines.append("")
        for name, value in report.ratios.items():
            lines.append(f"ratio {name}: {value:.1f}x")
    for note in report.notes:
        lines.append(f"NOTE: {note}")
    lines.append("")
    cached = report.timings.get("cached_rebuild_cli")
    if cached:
        lines.append(
            f"cached rebuild of {report.recipes} recipes: median {cached.median:.2f}s (target <= {TARGET_SECONDS:g} s)"
        )
    else:
        lines.append(f"cached rebuild of {report.recipes} recipes: not measured (the real build did not complete)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = parser("bench_plan", __doc__)
    p.add_argument("--recipes", type=int, default=1000, help="number of generated recipes (default 1000)")
    p.add_argument("--workers", type=int, default=2, help="MANGOS_FARM_WORKERS for the real build (default 2)")
    p.add_argument("--repeat", type=int, default=5, help="repetitions of each in-process timing (default 5)")
    p.add_argument("--cli-repeat", type=int, default=5, help="repetitions of the cached CLI rebuild (default 5)")
    p.add_argument(
        "--build-limit", type=float, default=1800, help="stop the real build after this many seconds (default 1800)"
    )
    p.add_argument("--seed", type=int, default=SEED, help="seed for the dependency graph")
    p.add_argument(
        "--reuse",
        type=Path,
        metavar="DIR",
        help="time only the cached part, on a work directory kept (--keep) by an earlier complete run",
    )
    args = p.parse_args(argv)
    if args.recipes < 1 or args.repeat < 1 or args.cli_repeat < 1:
        p.error("--recipes, --repeat and --cli-repeat must be at least 1")
    require_tools(p, "git", "bwrap", "dpkg-query")
    if args.reuse is not None:
        report = reuse(args, args.reuse.resolve())
        print(json.dumps(report.to_json(), indent=2) if args.json else render(report))
        return 0
    with workdir("mangos-bench-", args.keep) as root:
        report = run_bench(args, root)
        report.build["workers"] = args.workers
    print(json.dumps(report.to_json(), indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

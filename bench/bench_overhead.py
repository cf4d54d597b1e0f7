"""Benchmark: the farm's per-build overhead, measured with no-op builds on a real Redis fleet.

Run from the repository root::

    .venv/bin/python -m bench.bench_overhead [--builds 100] [--fleets 1x1,2x1] [--json]

In a temporary directory it makes one real git repository (git CLI, fixed dates) and N independent recipes whose
only step is ``true > "$OUT/NAME"`` (the step does nothing; its redirection creates the declared output file).
For each fleet shape (WORKERSxCONCURRENCY) it starts a fresh fleet: two redis-server processes on free ports (AOF,
fsync every second), one the Celery broker (MANGOS_FARM_BROKER) and one the coordinator state (MANGOS_FARM_STATE),
a local directory store (MANGOS_FARM_STORE), one ``mangos-farm coordinator`` process and the workers as
``mangos-farm worker --concurrency C --name wK@fleet`` processes. A warm-up run (2 builds per slot: clones the
source mirror, imports, forks) is not measured; then ``mangos-farm rebuild DIR`` submits the N builds, which are
waited for (the active-runs set watched, ``mangos-farm status RUN --json`` every 10 s and at the end).

What is measured, per build, all on this machine's clock:

- dispatch -> start: ``dispatched_at`` (the coordinator tick that sent the build) to ``started_at`` (the worker
  claimed the lease): message delivery through the broker, Celery's hand-off to a pool process, the task's
  signature check, the lease claim;
- start -> worker done: ``started_at`` to the Celery result's ``date_done`` (read from the broker): the build
  itself (source, sandbox, pack, sign, store) plus storing the result; of which ``execute_build`` alone;
- worker done -> noticed: ``date_done`` to ``finished_at`` (the coordinator tick that recorded the outcome; a
  tick's time is taken when it starts, so this can be slightly negative when a result lands during a tick);
- total: ``dispatched_at`` to ``finished_at``. For a no-op build everything in it is the farm's overhead; its
  median is the figure of merit (target <= 20 ms).

The overhead split (``overhead_split_ms``, medians): Celery/Redis (dispatch -> start, and the worker's time around
``execute_build``: outcome, result stored), ``execute_build`` in the worker and, from this process, its parts:
source, sandbox start (a bare bwrap with the farm's argv), limits (the same bwrap under the farm's limits, minus the
bare one, measured interleaved), pack/sign/store, and the coordinator noticing.

Redis commands: every command the state store serves during the measured run is recorded (``redis-cli monitor``),
each process naming its connection (CLIENT SETNAME: ``coordinator``, ``w1``, ...). ``redis_commands_per_build`` is
the state store's commands from the submit to the last build recorded, per build, excluding what is paid per
second rather than per build: heartbeats (lease renewals, SET mangos:beat:*), worker presence (SET
mangos:worker:*), connection upkeep (HELLO, CLIENT, PING) and the benchmark's own status polls (their own connection
name); the excluded counts are reported beside it, and so is the state's idle rate (commands per second with no run
active, measured for a moment before the submit). The broker's commands (INFO commandstats, all clients, from
before the submit to after the run) are reported per build beside it.

Also reported: baselines measured by this same process: a bare Celery no-op task round trip on the same broker with
the farm's Celery settings, bwrap with the farm's sandbox argv (bare, and under the farm's limits), a minimal
``bwrap --ro-bind / / true`` and a plain fork/exec of ``true``; and ``execute_build`` called in process, by phase.
With ``--profile DIR`` the coordinator and the workers of the first fleet are sampled by py-spy during the measured
run (collapsed stacks in DIR) and the report says where their time went.

Nothing here is a test: timings depend on the machine (and on anything else running on it: the load average is
reported). Progress goes to stderr, the report to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import _overhead_parts as parts
from bench._common import add_redis_fsync, machine_state, parser, progress, require_tools, workdir
from bench._fleet import (
    POLL_CLIENT,
    BenchFleet,
    BuildTimes,
    CommandLog,
    attribute,
    idle_rate,
    make_repo,
    write_recipe,
)
from bench._overhead_parts import Stat, stat

TARGET_MEDIAN_MS = 20.0
IDLE_WINDOW = 0.5  # seconds of the state store's traffic with no run active, before the submit


@dataclass
class FleetResult:
    shape: str
    builds: int
    wall_seconds: float
    segments: list[Stat]
    timelines: list[BuildTimes]
    state_commands: dict[str, Any]
    broker_commands: dict[str, int]

    def segment(self, prefix: str) -> Stat | None:
        return next((s for s in self.segments if s.name.strip().startswith(prefix)), None)

    def to_json(self) -> dict[str, Any]:
        broker = sum(self.broker_commands.values())
        return {
            "shape": self.shape,
            "builds": self.builds,
            "wall_seconds": round(self.wall_seconds, 3),
            "wall_ms_per_build": round(1000 * self.wall_seconds / self.builds, 2),
            "builds_per_second": round(self.builds / self.wall_seconds, 2),
            "segments": [s.to_json() for s in self.segments],
            "redis_commands_per_build": self.state_commands["per_build"],
            "state_commands": self.state_commands,
            "broker_commands_per_build": round(broker / self.builds, 1),
            "broker_commands_by_command": {
                k: round(v / self.builds, 1) for k, v in sorted(self.broker_commands.items(), key=lambda kv: -kv[1])
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
        return self.fleets[0].segment("total") if self.fleets else None

    def ratios(self) -> dict[str, float]:
        """The headline and the in-process build against the baselines of this same run (medians)."""
        head = self.headline()
        celery = parts.phase(self.baselines, parts.CELERY)
        bwrap = parts.phase(self.baselines, parts.BWRAP)
        inproc = parts.phase(self.inproc, parts.TOTAL)
        out: dict[str, float] = {}
        if head and celery:
            out["total / Celery no-op round trip"] = head.median / celery
        if head and inproc:
            out["total / execute_build in process"] = head.median / inproc
        if inproc and bwrap:
            out["execute_build in process / farm bwrap of true"] = inproc / bwrap
        return out

    def split(self) -> dict[str, float]:
        """Where a no-op build's overhead goes (medians in ms; the parts of execute_build are measured in this
        process, so they add up to about, not exactly, the worker's execute_build)."""
        if not self.fleets:
            return {}
        f = self.fleets[0]
        out: dict[str, float | None] = {
            "celery_redis: dispatch -> start": _median(f.segment("dispatch -> start")),
            "celery_redis: around execute_build in the worker": _median(f.segment("around execute_build")),
            "execute_build in the worker": _median(f.segment("of which execute_build")),
        }
        bare, limited = parts.phase(self.baselines, parts.BWRAP), parts.phase(self.baselines, parts.LIMITED)
        if self.inproc:
            phases = {p: parts.phase(self.inproc, p) or 0.0 for p in (*parts.PHASES, "other")}
            out["  source"] = phases[parts.SOURCE]
            out["  sandbox start (bare bwrap)"] = bare
            out["  limits (under limits - bare)"] = limited - bare if bare is not None and limited is not None else None
            out["  pack/sign/store"] = phases[parts.PACK] + phases[parts.SIGN] + phases[parts.STORE]
            out["  other (in process)"] = phases["other"]
        out["noticing: worker done -> coordinator noticed"] = _median(f.segment("worker done -> coordinator"))
        out["total: dispatch -> noticed"] = _median(f.segment("total"))
        return {k: round(v, 2) for k, v in out.items() if v is not None}

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
            "overhead_split_ms": self.split(),
            "profile": self.profile,
            "target_median_ms": TARGET_MEDIAN_MS,
            "median_total_ms": round(head.median, 2) if head else None,
            "redis_commands_per_build": self.fleets[0].state_commands["per_build"] if self.fleets else None,
            "broker_commands_per_build": self.fleets[0].to_json()["broker_commands_per_build"] if self.fleets else None,
            "ratios": {k: round(v, 2) for k, v in self.ratios().items()},
            "meets_target": (head.median <= TARGET_MEDIAN_MS) if head else None,
            "notes": self.notes,
        }


def _median(s: Stat | None) -> float | None:
    return s.median if s is not None and s.ms else None


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
    with BenchFleet(root / f"fleet-{tag}", appendfsync=args.redis_fsync, separate_state=True) as fleet:
        assert fleet.state is not None
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
        with CommandLog(fleet.state, root / f"state-commands-{tag}.txt") as monitor:
            idle_from = time.time()
            time.sleep(IDLE_WINDOW)
            submitted = time.time()
            fleet.client_name = "bench-submit"
            run = fleet.submit(measured)
            fleet.client_name = POLL_CLIENT
            status = fleet.wait_run(run, timeout=args.timeout, poll=args.poll)
        broker = fleet.command_stats()
        if profiling:
            fleet.stop_profilers()
            report.profile = parts.summarize_profiles(args.profile, count)
        if not status["ok"] or status["summary"]["built"] != n:
            raise RuntimeError(f"run {run} did not build all {n}: {status['summary']}\n{fleet.log_tail('coordinator')}")
        times = fleet.timelines(run, status)
        if shape == args.fleets[0] and not args.no_baselines:
            report.baselines.append(parts.celery_round_trip(fleet, args.baseline_runs))
    recorded = max(t.noticed for t in times)
    commands = monitor.commands()
    state = attribute(commands, submitted, recorded, n)
    state["idle_per_second"] = idle_rate(commands, idle_from, submitted)
    wall = recorded - min(t.dispatched for t in times)
    with_done = [t for t in times if t.done is not None]
    with_both = [t for t in with_done if t.execute is not None]
    segments = [
        stat(
            "dispatch -> start (delivery, hand-off, task check, lease claim)", [t.started - t.dispatched for t in times]
        ),
        stat("start -> worker done (the build, result stored)", [t.done - t.started for t in with_done if t.done]),
        stat("  of which execute_build", [t.execute for t in times if t.execute is not None]),
        stat(
            "  around execute_build (outcome, result stored)",
            [t.done - t.started - t.execute for t in with_both if t.done and t.execute],
        ),
        stat("worker done -> coordinator noticed", [t.noticed - t.done for t in with_done if t.done]),
        stat("total: dispatch -> noticed", [t.noticed - t.dispatched for t in times]),
    ]
    result = FleetResult(shape, n, wall, segments, times, state, broker)
    progress(
        f"fleet {shape}: {n} builds in {wall:.2f}s; median total {segments[-1].median:.1f} ms, wall "
        f"{1000 * wall / n:.1f} ms/build; state commands per build {state['per_build']}"
    )
    return result


# -- report ----------------------------------------------------------------------------------------------------
def render(report: Report) -> str:
    lines = [f"mangos-farm per-build overhead: {report.builds} no-op builds, {report.machine}", ""]
    header = f"{'per build (ms)':<70} {'median':>8} {'p90':>8} {'mean':>8} {'min':>8} {'max':>8}"

    def row(s: Stat) -> str:
        j = s.to_json()
        return (
            f"{s.name[:70]:<70} {j['median_ms']:>8.2f} {j['p90_ms']:>8.2f} {j['mean_ms']:>8.2f} "
            f"{j['min_ms']:>8.2f} {j['max_ms']:>8.2f}"
        )

    for f in report.fleets:
        count, conc = f.shape.split("x")
        data = f.to_json()
        state = f.state_commands
        lines.append(
            f"fleet {count} worker(s) x concurrency {conc}: {f.builds} builds, first dispatch -> last noticed "
            f"{f.wall_seconds:.2f}s = {data['wall_ms_per_build']:.1f} ms/build "
            f"({data['builds_per_second']:.1f} builds/s)"
        )
        lines += [header, "-" * len(header)] + [row(s) for s in f.segments if s.ms]
        top = ", ".join(f"{k} {v}" for k, v in list(state["by_command"].items())[:8])
        lines.append(f"state store commands per build, submit -> recorded: {state['per_build']} = {top}")
        lines.append(f"  by connection: {state['by_connection']}; idle: {state['idle_per_second']}/s")
        lines.append(f"  not counted, per build: {state['excluded_per_build']}")
        broker = list(data["broker_commands_by_command"].items())[:6]
        lines.append(
            f"broker commands per build (all clients): {data['broker_commands_per_build']} = "
            + ", ".join(f"{k} {v}" for k, v in broker)
        )
        lines.append("")
    for title, stats in (("baselines, same process", report.baselines), ("execute_build in process", report.inproc)):
        if stats:
            lines += [f"{title}:", header, "-" * len(header)] + [row(s) for s in stats] + [""]
    split = report.split()
    if split:
        lines.append("overhead split (medians, ms):")
        lines += [f"  {name:<60} {ms:8.2f}" for name, ms in split.items()]
        lines.append("")
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
    lines += [f"NOTE: {note}" for note in report.notes]
    head = report.headline()
    if head:
        verdict = "meets" if head.median <= TARGET_MEDIAN_MS else "MISSES"
        lines.append(
            f"farm overhead per no-op build (dispatch -> noticed, fleet {report.fleets[0].shape}): "
            f"median {head.median:.1f} ms, p90 {head.to_json()['p90_ms']:.1f} ms; "
            f"{verdict} the target of {TARGET_MEDIAN_MS:g} ms median"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=False)
    return machine_state() | {"redis": redis_version.stdout.split()[2] if redis_version.returncode == 0 else None}


def main(argv: list[str] | None = None) -> int:
    p = parser("bench_overhead", __doc__)
    p.add_argument("--builds", type=int, default=100, help="no-op builds per fleet (default 100)")
    p.add_argument(
        "--fleets", default="1x1,2x1", help="fleet shapes WORKERSxCONCURRENCY, comma-separated (default 1x1,2x1)"
    )
    p.add_argument("--poll", type=float, default=0.25,
                   help="seconds between looks at the run state (default 0.25; the CLI status every 10 s)")  # fmt: skip
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
        parts_ = shape.split("x")
        if len(parts_) != 2 or not all(x.isdigit() and int(x) > 0 for x in parts_):
            p.error(f"bad fleet shape '{shape}': use WORKERSxCONCURRENCY, e.g. 2x1")
    if args.builds < 1 or args.baseline_runs < 1:
        p.error("--builds and --baseline-runs must be at least 1")
    require_tools(p, "git", "bwrap", "redis-server", "redis-cli", "dpkg-query")
    report = Report(builds=args.builds, machine=machine())
    with workdir("mangos-bench-overhead-", args.keep) as root:
        repo = root / "repo"
        commit = make_repo(repo)
        for shape in args.fleets:
            report.fleets.append(measure_fleet(root, shape, repo=repo, commit=commit, args=args, report=report))
        if not args.no_baselines:
            report.baselines += parts.process_baselines(root, args.baseline_runs)
            inproc_dir = write_noop_recipes(root / "recipes-inproc", "i-", args.builds + 3, str(repo), commit)
            report.inproc = parts.inproc_breakdown(root, inproc_dir, args.builds)
    report.machine["loadavg_after"] = os.getloadavg()
    print(json.dumps(report.to_json(args.timelines), indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

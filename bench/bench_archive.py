"""Benchmark: the coordinator at archive scale, on real data: Debian bookworm main's ~34,000 source packages as one
run, then the same set for two more architectures (~100,000 builds pending), on a real fleet.

Run from the repository root::

    .venv/bin/python -m bench.bench_archive [--limit N] [--json]

The sources and their Build-Depends come from apt's own lists on this machine (the bookworm main Sources index,
and the amd64 Packages index to turn each build-dependency into the source that builds it; see
:mod:`bench._archive_graph` for the rules, and for the bootstrap edges dropped to break the build graph's
cycles). Each source becomes a recipe of the same name whose one step creates its output and does nothing else
(``--sleep S``: sleeps first); all recipes come from one commit of one local git repository.

The fleet: redis-server as Celery's broker and a second one for the coordinator state (so the state store's
commands are counted apart), a local directory store, one ``mangos-farm coordinator`` process (its /metrics on
127.0.0.1) and ``--workers`` amd64 ``mangos-farm worker`` processes; a warm-up run of a few no-op builds first.

Then, measured:

1. plan the recipes and submit them as one amd64 run (``bench._archive_submit``: ``rebuild``'s planning and
   submission, timed apart), and wait for the first ``--dispatches`` dispatches: dispatch latency at ~34,000
   pending (:mod:`bench._archive_measure` says how it is derived), tick interval, state-store commands per build;
2. submit the same plan as one run each for arm64 and i386 (no workers: they stay pending, ``--force`` so that
   the amd64 builds found in the store do not count as theirs), and wait for the next ``--dispatches`` amd64
   dispatches: dispatch latency at ~100,000 pending;
3. cancel the three runs (``mangos-farm cancel``, timed) and check that nothing more is dispatched.

Throughout: the coordinator's RSS (/proc) and the Redis servers' ``used_memory``. The headline dispatch latency
is a free slot's whole wait, to the worker's start (the coordinator's decision alone is reported beside it: a
tick's time is taken when it starts, so the decision hides what the tick did before dispatching). Tick times come
from any ``mangos_*tick*_seconds`` histogram the coordinator exports; the coordinator's CPU per dispatch (/proc)
is reported either way. ``--profile`` samples the coordinator (py-spy) and the first cancel, and says where their
time went.

Targets: plan + submit of the amd64 run <= 60 s, dispatch p99 <= 1 s at 100,000 pending, cancel of every run
(the CLI, one per run) <= 10 s, coordinator RSS <= 1 GiB, state Redis <= 1 GiB. Progress (with an ETA) goes to
stderr, the report to stdout; exit status 1 if a target is missed, 2 if the bench failed (the report says where).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from bench import _archive_graph as archive
from bench import _archive_measure as measure
from bench._archive_fleet import ArchiveFleet, Submitter, Window, write_recipes
from bench._common import add_redis_fsync, parser, progress, require_tools, workdir
from bench._fleet import attribute, make_repo, profile_share, profile_summary, write_recipe
from farm.coordinator.kv import open_kv
from farm.coordinator.runs import RunStore
from farm.sources.apt import configured_lists

GIB = 2**30
TARGETS = {  # figure -> (limit, what)
    "plan_plus_submit_s": (60.0, "plan + submit of the amd64 run <= 60 s"),
    "dispatch_p99_ms_100k": (1000.0, "dispatch p99 <= 1 s at 100,000 pending"),
    "cancel_s": (10.0, "cancel of every run <= 10 s"),
    "coordinator_rss_bytes": (float(GIB), "coordinator RSS <= 1 GiB"),
    "state_redis_used_memory_bytes": (float(GIB), "state Redis used_memory <= 1 GiB"),
}


def load_graph(args: Any) -> archive.ArchiveGraph:
    lists_dir = args.lists or configured_lists()
    sources_lists, packages_lists = archive.suite_lists(lists_dir, args.suite, "amd64")
    if not sources_lists or not packages_lists:
        raise SystemExit(f"no Debian {args.suite} main Sources and amd64 Packages lists in {lists_dir}: run 'make apt'")
    start = time.monotonic()
    progress(f"reading {', '.join(p.name for p in [*sources_lists, *packages_lists])}")
    sources, binaries = archive.load(sources_lists, packages_lists)
    graph = archive.archive_graph(sources, binaries, args.limit)
    graph.stats["read_s"] = round(time.monotonic() - start, 2)
    st = graph.stats
    progress(f"{st['sources']} sources, {st['edges']} edges, {st['bootstrap_edges']} bootstrap edges dropped "
             f"in {st['cycles_sccs']} cycles (largest {st['largest_scc']})")  # fmt: skip
    return graph


def warm_up(af: ArchiveFleet, root: Path, git_url: str, commit: str, builds: int) -> float:
    """A small run of independent no-op builds: clones the source, forks the pools. Not measured."""
    start = time.monotonic()
    for i in range(builds):
        write_recipe(root / "warm", f"warm-{i}", git_url=git_url, commit=commit, steps=[f'true > "$OUT/warm-{i}"'])
    run = af.fleet.submit(root / "warm")
    af.fleet.wait_run(run, timeout=300)
    return time.monotonic() - start


class Session:
    """One bench on one fleet: the phases in order, then the figures."""

    def __init__(self, args: Any, root: Path, graph: archive.ArchiveGraph) -> None:
        self.args, self.root, self.graph = args, root, graph
        self.arches: list[str] = args.arches.split(",")
        self.report: dict[str, Any] = {}
        self.af: ArchiveFleet | None = None

    def run(self) -> dict[str, Any]:
        args, graph, root = self.args, self.graph, self.root
        commit = make_repo(root / "repo")
        t0 = time.monotonic()
        write_recipes(graph, root / "recipes", str(root / "repo"), commit, args.sleep)
        self.report["setup"] = {"write_recipes_s": round(time.monotonic() - t0, 2)}
        progress(f"wrote {len(graph.order)} recipes in {self.report['setup']['write_recipes_s']}s; starting the fleet")
        self.af = af = ArchiveFleet(root, args.redis_fsync)
        try:
            slots = af.start(args.workers, args.concurrency)
            self.report["fleet"] = {"workers": args.workers, "concurrency": args.concurrency, "slots": slots}
            self.report["setup"]["warm_up_s"] = round(warm_up(af, root, str(root / "repo"), commit, 2 * slots), 2)
            self.measure(af, slots)
        finally:
            af.close()
        return self.report

    def measure(self, af: ArchiveFleet, slots: int) -> None:
        args, n, built = self.args, len(self.graph.order), self.arches[0]
        progress(f"planning {n} recipes (rebuild's planning, in a helper process)")
        af.submitter = sub = Submitter(
            af.fleet, self.root / "recipes", self.root / "plan-profile.txt" if args.profile_plan else None
        )
        planned = sub.planned()
        self.report["plan"] = {k: planned[k] for k in ("plan_s", "import_s", "builds", "to_build")}
        if planned.get("profile"):
            self.report["plan"]["profile_top"] = planned["profile"]
        progress(f"planned in {planned['plan_s']}s; submitting the {built} run")
        if args.profile:
            af.fleet.start_profiler("coordinator", self.root / "coordinator.spy", rate=100)
        before, base = af.counters(), af.dispatched(built)
        first = sub.submit(built, force=False)
        submit_cost = measure.counter_delta(af.counters()["state"], before["state"])
        af.sample()
        runs, submits = {built: first["run"]}, {built: first["submit_s"]}
        self.report["submit"] = {"seconds": submits, "runs": runs, "state_commands": commands(submit_cost)}
        win_a = af.window(
            "first",
            f"{n} pending",
            built,
            min(args.dispatches, n),
            timeout=args.phase_timeout,
            since=(first["at"], base),
        )

        progress(f"submitting {', '.join(self.arches[1:]) or 'no more runs'}")
        for arch in self.arches[1:]:
            got = sub.submit(arch, force=True)
            runs[arch], submits[arch] = got["run"], got["submit_s"]
        af.sample()
        wanted = min(args.dispatches, n - win_a.counted)  # a small run may have no more to dispatch
        win_b = af.window("second", f"{n * len(self.arches)} submitted", built, wanted, timeout=args.phase_timeout)
        hwm = measure.proc_memory(af.coordinator_pid).get("VmHWM", 0)
        ticks = measure.tick_histograms(measure.scrape(af.metrics_port))
        if args.profile:
            af.fleet.stop_profilers()
            spy = self.root / "coordinator.spy"
            self.report["profile"] = {"coordinator_busy_share": profile_share(spy, "tick (", "serve ("),
                                      "coordinator_tick": profile_summary(spy, "tick (")}  # fmt: skip

        progress("cancelling every run")
        store = RunStore(open_kv(af.state.url))
        try:
            cancel = af.cancel(runs, built, self.root / "cancel.spy" if args.profile else None)
            if args.profile:
                self.report["profile"]["cancel_cli"] = profile_summary(self.root / "cancel.spy", "cmd_cancel")
            cancel["runs"] = {a: {"status": store.get(r).status, "states": measure.states(store.jobs(r).values())}
                              for a, r in runs.items()}  # fmt: skip
        except (AssertionError, RuntimeError) as exc:  # reported; the figures measured so far still are
            cancel = {"error": str(exc)[:2000], "total_s": None}
        progress(f"reading the timelines of the {built} run")
        lines, source = measure.timelines(store.jobs(runs[built]), af.broker_client)

        finished_before_b = sum(1 for t in lines.values() if t.noticed is not None and t.noticed < win_b.start)
        self.report["pending"] = {"first": n, "second": n * len(self.arches) - finished_before_b}
        self.report["dispatch"] = {"finish_times_from": source, "tick_metrics": ticks}
        for key, w in (("first", win_a), ("second", win_b)):
            self.report["dispatch"][key] = window_report(w, lines, slots, first["at"])
        self.report["cancel"] = cancel
        self.report["memory"] = {
            "coordinator_peak_rss": max(hwm, af.peaks.get("coordinator_rss", 0)),
            "state_redis_peak_used_memory": measure.redis_memory(af.state_client)["used_memory_peak"],
            "broker_redis_peak_used_memory": measure.redis_memory(af.broker_client)["used_memory_peak"],
        } | {f"sampled_peak_{k}": v for k, v in af.peaks.items()}
        self.report["figures"] = figures(self.report, planned, first)


def commands(delta: dict[str, int]) -> int:
    return sum(v for k, v in delta.items() if not k.startswith("_"))


def window_report(w: Window, lines: dict[str, measure.Timeline], slots: int, submitted: float) -> dict[str, Any]:
    """A window's dispatch latencies (to the coordinator's decision and to the worker's start), the coordinator's
    CPU per dispatch, and the Redis commands per build finished in it."""
    finished = sum(1 for t in lines.values() if t.noticed is not None and w.start <= t.noticed <= w.end)
    dispatched = [t.dispatched for t in lines.values() if t.dispatched is not None and t.dispatched >= w.start]
    first = round(min(dispatched) - w.start, 3) if dispatched else None
    out: dict[str, Any] = {"wanted": w.wanted, "counted": w.counted, "reached": w.reached,
                           "seconds": round(w.end - w.start, 1), "builds_finished": finished,
                           "first_dispatch_after_s": first}  # fmt: skip
    for at, key in (("dispatched", "to_decision"), ("started", "to_worker_start")):
        rows = measure.window(measure.dispatch_latencies(lines, slots, submitted, at), w.start, w.counted)
        out[key] = measure.latency_summary(rows)
    out["coordinator_cpu_ms_per_dispatch"] = round(1000 * w.cpu_s / max(w.counted, 1), 2)
    out["state_commands"] = attribute(w.commands, w.start, w.end, max(finished, 1))
    out["state_commands_all"] = measure.per_build(measure.counter_delta(w.after["state"], w.before["state"]), finished)
    out["broker_commands"] = measure.per_build(measure.counter_delta(w.after["broker"], w.before["broker"]), finished)
    return out


def figures(report: dict[str, Any], planned: dict[str, Any], first: dict[str, Any]) -> dict[str, Any]:
    d = report["dispatch"]
    out: dict[str, Any] = {
        "plan_s": planned["plan_s"],
        "submit_s": first["submit_s"],
        "plan_plus_submit_s": round(planned["plan_s"] + first["submit_s"], 3),
    }
    for key, label in (("first", "35k"), ("second", "100k")):
        for q in ("p50", "p99"):
            out[f"dispatch_{q}_ms_{label}"] = d[key]["to_worker_start"][f"{q}_ms"]
            out[f"decision_{q}_ms_{label}"] = d[key]["to_decision"][f"{q}_ms"]
        out[f"coordinator_cpu_ms_per_dispatch_{label}"] = d[key]["coordinator_cpu_ms_per_dispatch"]
    out["cancel_s"] = report["cancel"]["total_s"]
    out["cancel_slowest_run_s"] = max(report["cancel"].get("seconds", {}).values(), default=None)
    out["coordinator_rss_bytes"] = report["memory"]["coordinator_peak_rss"]
    out["state_redis_used_memory_bytes"] = report["memory"]["state_redis_peak_used_memory"]
    out["state_redis_commands_per_build"] = d["first"]["state_commands"]["per_build"]
    return out


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    figures = report.get("figures", {})
    out = {}
    for key, (limit, what) in TARGETS.items():
        value = figures.get(key)
        out[key] = {"target": what, "value": value, "met": value is not None and value <= limit}
    return out


def print_text(report: dict[str, Any]) -> None:
    g = report["graph"]
    print(f"bookworm main: {g['sources']} sources, {g['edges']} edges, {g['bootstrap_edges']} bootstrap edges "
          f"dropped ({g['cycles_sccs']} cycles, largest {g['largest_scc']} sources), depth {g['depth']}")  # fmt: skip
    print(f"{'figure':<34} {'value':>14}")
    for key, value in report.get("figures", {}).items():
        shown = f"{value / 2**20:.0f} MiB" if key.endswith("_bytes") and value is not None else value
        print(f"{key:<34} {shown!s:>14}")
    for key, row in report["targets"].items():
        print(f"{'met' if row['met'] else 'MISSED':<7} {row['target']} ({key}: {row['value']})")
    print(f"total {report['total_s']}s, load average {report['load_average']}")
    if "error" in report:
        print(f"FAILED: {report['error']}")


def main(argv: list[str] | None = None) -> int:
    p = parser("bench_archive", __doc__)
    p.add_argument("--limit", type=int, help="only the first N sources of the index (for a smoke run)")
    p.add_argument("--suite", default="bookworm", help="the Debian suite whose main sources to take")
    p.add_argument("--lists", type=Path, help="apt's lists directory (default: the one apt uses)")
    p.add_argument("--arches", default="amd64,arm64,i386", help="the runs, the first one built (workers' arch)")
    p.add_argument("--workers", type=int, default=2, help="amd64 worker processes (default 2)")
    p.add_argument("--concurrency", type=int, default=4, help="build slots per worker (default 4)")
    p.add_argument("--dispatches", type=int, default=2000, help="dispatches measured per phase (default 2000)")
    p.add_argument("--sleep", type=float, default=0.0, help="seconds each build's step sleeps (default 0: none)")
    p.add_argument("--phase-timeout", type=float, default=600, help="longest wait for a phase's dispatches")
    p.add_argument("--profile-plan", action="store_true", help="cProfile the planning (slower) and report it")
    p.add_argument(
        "--profile", action="store_true", help="py-spy the coordinator's ticks and the first cancel (slower)"
    )
    add_redis_fsync(p)
    args = p.parse_args(argv)
    require_tools(p, "git", "bwrap", "redis-server")

    start = time.monotonic()
    graph = load_graph(args)
    report: dict[str, Any] = {
        "graph": graph.stats,
        "command": " ".join(["python -m bench.bench_archive", *(argv or sys.argv[1:])]),
    }
    with workdir("bench-archive-", args.keep) as root:
        session = Session(args, root, graph)
        try:
            session.run()
        except Exception as exc:  # the report so far, and why it stops there
            session.report["error"] = f"{type(exc).__name__}: {exc}"[:5000]
            progress(f"FAILED: {session.report['error']}")
        report |= session.report
    report["targets"] = verdict(report)
    report["total_s"] = round(time.monotonic() - start, 1)
    report["load_average"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        import json

        print(json.dumps(report, indent=1))
    else:
        print_text(report)
    if "error" in report:
        return 2
    return 0 if all(t["met"] for t in report["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())

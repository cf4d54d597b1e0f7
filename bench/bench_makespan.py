"""Benchmark: the full rebuild's makespan on 1, 4, 16 and 64 build slots, simulated from measured durations.

Run from the repository root (nothing is built; the store and the coordinator state are only read)::

    MANGOS_FARM_HOME=/root/mangos-base .venv/bin/python -m bench.bench_makespan recipes/base \\
        [--slots 1,4,16,64] [--estimate NAME=SECONDS ...] [--floor timeout|all|none] [--hours 1] [--json]

The graph is the farm's own plan of the recipe directory (:func:`farm.coordinator.planning.plan_recipes`, what
``mangos-farm plan`` runs in process): farm edges only, the bootstrap edges dropped as the plan drops them. Each
build's duration is its measured wall time where the store has a record of it, else an estimate, each marked with
where it comes from (:mod:`bench._makespan_data`: the record of the plan's key, an earlier build of the recipe,
``--estimate``, the recipe's own "Estimated ..." comment, or the median of the measured builds; raised to the
time of an attempt the farm killed at its time limit). Every estimated row is marked ``*`` in the report and
``"estimated": true`` in the JSON, and the share of the work that is estimated is printed, so the figures say how
much of them is measurement.

For each slot count the plan is list-scheduled in simulation (:func:`bench._sched_model.simulate`, zero overhead)
under the farm's scheduler policy, :func:`farm.coordinator.policy.pick`, called as the coordinator calls it for
one rebuild run (:func:`bench._sched_model.farm_policy`: critical path in builds, as the plan records it, the
coordinator's aging period), beside the lower bound max(critical path by duration, work / slots) and, for
reference, an oracle that knows the durations (critical path by duration first). The figure of merit is the
policy's makespan / bound at 16 slots (target <= 1.05; exit 1 above it). Then the fewest slots whose makespan is
within ``--hours`` (none when the critical path alone is longer), and the slots past which more do not help.

What a slot means: the durations were measured on 2-core machines (the ``shared`` column: the share of a build's
time another build ran beside it on the same cores), so one slot is one 2-core worker at concurrency 1; a build
timed alone is what a slot gives it, one timed beside another is slower than that (the bound errs long).
Progress goes to stderr, the report to stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from bench._common import parser, progress
from bench._makespan_data import FLOORS, Attempt, Duration, durations, parse_estimates, summary, unfinished_attempts
from bench._sched_model import Dag, farm_policy, ranked, simulate
from farm import graph
from farm.coordinator.engine import Config
from farm.settings import Settings

TARGET = 1.05
TARGET_SLOTS = 16
DEFAULT_SLOTS = "1,4,16,64"


def oracle(dag: Dag) -> Any:
    cp = graph.critical_path_lengths(dag.deps, dag.duration)
    return ranked(lambda n, r: (-cp[n], r[n], n))


def row(dag: Dag, slots: int, aging: float) -> dict[str, Any]:
    """One slot count: the policy's simulated makespan beside the bound and the oracle's."""
    cp, work = dag.critical_path(), dag.work
    bound = max(cp, work / slots)
    ours = simulate(dag, slots, farm_policy(dag, aging))
    best = simulate(dag, slots, oracle(dag))
    return {
        "slots": slots,
        "makespan_s": round(ours, 1),
        "bound_s": round(bound, 1),
        "ratio": round(ours / bound, 4),
        "critical_path_s": round(cp, 1),
        "work_s": round(work, 1),
        "work_per_slot_s": round(work / slots, 1),
        "oracle_makespan_s": round(best, 1),
        "oracle_ratio": round(best / bound, 4),
    }


def slots_within(dag: Dag, aging: float, limit: float) -> dict[str, Any]:
    """The fewest slots whose simulated makespan (the farm's policy) is within ``limit`` seconds, and the fewest
    past which more slots do not shorten it (every build has a slot by then at the latest)."""
    cp = dag.critical_path()
    n = len(dag.deps)
    floor_ = simulate(dag, n, farm_policy(dag, aging))
    saturated = next(s for s in range(1, n + 1) if simulate(dag, s, farm_policy(dag, aging)) <= floor_ + 1e-6)
    needed = None
    if cp <= limit:
        for s in range(max(1, math.ceil(dag.work / limit)), n + 1):
            if simulate(dag, s, farm_policy(dag, aging)) <= limit:
                needed = s
                break
    return {
        "limit_s": limit,
        "slots": needed,
        "workers_2core_concurrency_1": needed,
        "why_none": None
        if needed is not None or cp <= limit
        else f"the critical path alone is {cp / 3600:.2f} h: no number of slots finishes within {limit / 3600:g} h",
        "slots_by_work_alone": math.ceil(dag.work / limit),
        "critical_path_s": round(cp, 1),
        "saturation_slots": saturated,
        "saturated_makespan_s": round(floor_, 1),
        "critical_path_builds": critical_chain(dag),
    }


def critical_chain(dag: Dag) -> list[str]:
    """The longest chain by duration, first build first."""
    cp = graph.critical_path_lengths(dag.deps, dag.duration)
    dependents = graph.dependents_of(dag.deps)
    chain = [max(cp, key=lambda n: (cp[n], n))]
    while nxt := [c for c in dependents.get(chain[-1], ()) if cp[c] == cp[chain[-1]] - dag.duration[chain[-1]]]:
        chain.append(min(nxt))
    return chain


def hms(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def render(report: dict[str, Any]) -> str:
    a, s = report["args"], report["durations"]
    lines = [
        f"mangos-farm makespan benchmark: {a['recipes']} ({s['builds']} builds, {len(report['bootstrap_edges'])} "
        f"bootstrap edges dropped), home {a['home']}",
        f"durations: {s['by_source']['measured']} measured, {s['by_source']['measured (earlier build)']} measured "
        f"on an earlier build, {s['by_source']['estimated']} estimated (*); {report['estimated_work_pct']:.0f}% of "
        f"the work is estimated",
        "",
        f"{'build':<20} {'duration':>9}  {'shared':>6}  source",
    ]
    for d in report["builds"]:
        shared = "" if d["shared_pct"] is None else f"{d['shared_pct']}%"
        mark = "*" if d["estimated"] else " "
        attempt = d["longest_unfinished_attempt"]
        extra = f" [longest unfinished attempt {hms(attempt['seconds'])}, {attempt['ended']}]" if attempt else ""
        lines.append(f"{d['name']:<19}{mark} {hms(d['seconds']):>9}  {shared:>6}  {d['source']}: {d['note']}{extra}")
    lines += [
        "",
        f"{'slots':>5} {'makespan':>9} {'bound':>9} {'ratio':>6} {'crit path':>9} {'work':>9} {'oracle':>9}",
    ]
    for r in report["table"]:
        lines.append(
            f"{r['slots']:>5} {hms(r['makespan_s']):>9} {hms(r['bound_s']):>9} {r['ratio']:>6.3f} "
            f"{hms(r['critical_path_s']):>9} {hms(r['work_s']):>9} {hms(r['oracle_makespan_s']):>9}"
        )
    w = report["within"]
    lines += ["", "critical path: " + " -> ".join(w["critical_path_builds"])]
    if w["slots"] is not None:
        lines.append(
            f"within {w['limit_s'] / 3600:g} h: {w['slots']} slots (= {w['workers_2core_concurrency_1']} 2-core "
            "workers at concurrency 1)"
        )
    else:
        lines.append(
            f"within {w['limit_s'] / 3600:g} h: none: {w['why_none']} (the work alone would need "
            f"{w['slots_by_work_alone']} slots)"
        )
    lines.append(
        f"more slots stop helping at {w['saturation_slots']}: makespan {hms(w['saturated_makespan_s'])} "
        f"(critical path {hms(w['critical_path_s'])})"
    )
    verdict = "meets" if report["meets_target"] else "MISSES"
    lines.append(
        f"makespan / bound at {TARGET_SLOTS} slots: {report['ratio']:.3f} ({verdict} the target of {TARGET:.2f})"
    )
    return "\n".join(lines)


def load(args: argparse.Namespace) -> tuple[Dag, dict[str, Duration], list[list[str]], Settings]:
    from farm.coordinator.planning import plan_recipes

    settings = Settings.from_env()
    if args.home is not None:
        settings = settings.with_home(args.home)
    t0 = time.monotonic()
    plan, store = plan_recipes(args.recipes, settings)
    progress(f"planned {len(plan.order)} recipes in {time.monotonic() - t0:.1f}s (store {store.url})")
    attempts: dict[str, Attempt] = {}
    if not args.no_state:
        attempts = unfinished_attempts(settings.state_url, plan.order)
        progress(f"read unfinished attempts of {len(attempts)} build(s) from {settings.state_url}")
    rows = durations(plan, store, estimates=args.estimates, attempts=attempts, floor=args.floor)
    deps = {n: list(b.recipe.build_depends) for n, b in plan.builds.items()}
    dag = Dag(deps, {n: d.seconds for n, d in rows.items()}, {n: d.source for n, d in rows.items()})
    return dag, rows, [list(e) for e in plan.bootstrap_edges], settings


def main(argv: list[str] | None = None) -> int:
    p = parser("bench_makespan", __doc__)
    p.add_argument("recipes", type=Path, help="the recipe directory (e.g. recipes/base)")
    p.add_argument("--home", type=Path, help="the farm home (default: MANGOS_FARM_HOME)")
    p.add_argument("--slots", default=DEFAULT_SLOTS, help=f"slot counts, comma-separated (default {DEFAULT_SLOTS})")
    p.add_argument("--estimate", action="append", default=[], metavar="NAME=SECONDS",
                   help="the duration of a build the store has no record of (repeatable)")  # fmt: skip
    p.add_argument("--floor", choices=FLOORS, default="timeout",
                   help="raise an estimate to the time of an unfinished attempt: one killed at the time limit "
                        "(timeout, default), any (all), none")  # fmt: skip
    p.add_argument("--no-state", action="store_true", help="do not read unfinished attempts from the state")
    p.add_argument("--hours", type=float, default=1.0, help="the makespan to find the slots for (default 1 h)")
    args = p.parse_args(argv)
    try:
        args.estimates = parse_estimates(args.estimate)
        slot_counts = sorted({int(s) for s in args.slots.split(",")})
    except ValueError as exc:
        p.error(str(exc))
    if not slot_counts or slot_counts[0] < 1 or args.hours <= 0:
        p.error("--slots must be positive integers and --hours positive")
    if not args.recipes.is_dir():
        p.error(f"{args.recipes} is not a directory")

    started = time.monotonic()
    try:
        dag, rows, bootstrap, settings = load(args)
    except ValueError as exc:
        p.error(str(exc))
    aging = Config().aging
    table = [row(dag, s, aging) for s in slot_counts]
    progress(f"simulated {', '.join(str(s) for s in slot_counts)} slots; searching the slots for {args.hours:g} h")
    at_target = next((r for r in table if r["slots"] == TARGET_SLOTS), None) or row(dag, TARGET_SLOTS, aging)
    estimated = sum(d.seconds for d in rows.values() if d.estimated)
    report = {
        "args": {
            "recipes": str(args.recipes),
            "home": str(settings.home),
            "slots": slot_counts,
            "estimates": args.estimates,
            "floor": args.floor,
            "state": not args.no_state,
            "hours": args.hours,
            "aging_s": aging,
        },
        "bootstrap_edges": bootstrap,
        "durations": summary(rows),
        "estimated_work_pct": round(100 * estimated / dag.work, 1),
        "builds": [d.to_json() for d in rows.values()],
        "graph": {n: {"deps": sorted(d), "seconds": round(dag.duration[n], 1)} for n, d in dag.deps.items()},
        "table": table,
        "within": slots_within(dag, aging, args.hours * 3600),
        "target": {"slots": TARGET_SLOTS, "ratio": TARGET},
        "ratio": at_target["ratio"],
        "meets_target": at_target["ratio"] <= TARGET,
        "wall_s": round(time.monotonic() - started, 2),
    }
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0 if report["meets_target"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: scheduling efficiency of the fleet on a DAG of builds with known durations.

Run from the repository root::

    .venv/bin/python -m bench.bench_sched [--builds 200] [--slots 4] [--seed N] [--json]

It generates (seeded) a DAG of N builds shaped like a distribution: a few base libraries that many builds need
(fan-out), layers of libraries and applications with 1-4 build-depends each, two long serial chains (a toolchain
and a runtime, which later layers depend on), and a few image builds that depend on many others (fan-in). Each
build's only step is ``sleep D && echo NAME > "$OUT/NAME"`` with D drawn between 0.2 and 2.0 s (1.0-2.0 s on the
chains), times ``--time-scale``. The recipes are real TOML files pointing at one real git repository (git CLI,
fixed dates).

The fleet: redis-server on a free port, a local directory store (MANGOS_FARM_STORE), one ``mangos-farm
coordinator`` process and SLOTS / CONCURRENCY worker processes (``mangos-farm worker --concurrency C``; by default
2 workers x concurrency 2 = 4 slots). After a small unmeasured warm-up run, ``mangos-farm rebuild DIR`` submits the
DAG and ``mangos-farm status RUN --json`` is polled until the run is done. From the status JSON:

- makespan: first ``dispatched_at`` to last ``finished_at`` (the coordinator noticing the last outcome);
- lower bound: max(critical path of the durations, total work / slots); the ratio makespan / lower bound is the
  figure of merit (target <= 1.10);
- overhead: sum(finished_at - started_at) against sum(D), and how long each build held its slot beyond D
  (``finished_at - dispatched_at - D``: the coordinator counts a slot busy from dispatch until it notices).

The same DAG is also scheduled by simulation in this process, with zero overhead, under: a naive list scheduler
(ready builds in plan, i.e. topological, order), FIFO (oldest ready first), the farm's policy as implemented
(:func:`farm.coordinator.policy.order`: lane plus aging, then critical path in build count), critical path in
build count strictly first, and critical path by the real durations (an oracle: the farm does not know D). Finally
the farm's policy is simulated with each D lengthened by the measured mean slot overhead, a model of the real run.
So the figures read: ideal with our policy -> ideal plus measured overhead -> measured. Nothing here is a test.
Progress goes to stderr, the report to stdout.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._common import add_redis_fsync, parser, percentile, progress, require_tools, workdir
from bench._fleet import BenchFleet, BuildTimes, make_repo, write_recipe
from farm import graph
from farm.coordinator import policy
from farm.coordinator.engine import Config

TARGET_RATIO = 1.10
SEED = 20260203
MIN_BUILDS = 12


# -- the DAG ---------------------------------------------------------------------------------------------------
@dataclass
class Dag:
    deps: dict[str, list[str]]
    duration: dict[str, float]
    kind: dict[str, str]

    @property
    def order(self) -> list[str]:
        return graph.topological_order(self.deps)

    @property
    def work(self) -> float:
        return sum(self.duration.values())

    def critical_path(self) -> float:
        return max(graph.critical_path_lengths(self.deps, self.duration).values())

    def depth(self) -> int:
        return int(max(graph.critical_path_lengths(self.deps).values()))

    def stats(self, slots: int) -> dict[str, Any]:
        fan_out = graph.dependents_of(self.deps)
        return {
            "builds": len(self.deps),
            "edges": sum(len(d) for d in self.deps.values()),
            "roots": sum(1 for d in self.deps.values() if not d),
            "depth_builds": self.depth(),
            "max_fan_in": max(len(d) for d in self.deps.values()),
            "max_fan_out": max(len(v) for v in fan_out.values()),
            "kinds": {k: sum(1 for v in self.kind.values() if v == k) for k in sorted(set(self.kind.values()))},
            "total_work_s": round(self.work, 2),
            "critical_path_s": round(self.critical_path(), 2),
            "work_per_slot_s": round(self.work / slots, 2),
        }


def make_dag(n: int, seed: int, scale: float = 1.0) -> Dag:
    """A distribution-like DAG of ``n`` builds (see the module docstring), reproducible from ``seed``; every
    duration multiplied by ``scale``."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible graph, not a secret
    deps: dict[str, list[str]] = {}
    duration: dict[str, float] = {}
    kind: dict[str, str] = {}

    def dur(lo: float, hi: float) -> float:
        return round(rng.uniform(lo, hi) / 0.05) * 0.05

    images = max(1, n // 60)
    chain_lengths = [max(2, round(n * 0.13)), max(2, round(n * 0.07))]
    layer_total = n - images - sum(chain_lengths)
    weights = [0.05, 0.12, 0.18, 0.22, 0.2, 0.14, 0.09]
    sizes = [max(1, round(layer_total * w)) for w in weights]
    sizes[-1] += layer_total - sum(sizes)
    layers = len(sizes)
    by_layer: list[list[str]] = [[] for _ in range(layers)]
    chains: list[list[tuple[str, int]]] = [[] for _ in chain_lengths]  # (name, layer at which it becomes usable)

    # Chains: node j depends on node j-1 (and on the first base library); later layers use their nodes.
    for c, length in enumerate(chain_lengths):
        for j in range(length):
            name = f"chain{c}-{j:02d}"
            deps[name] = [chains[c][-1][0]] if j else []
            duration[name], kind[name] = dur(1.0, 2.0), f"chain{c}"
            chains[c].append((name, 1 + (j * (layers - 1)) // length))
    # Layers: each build depends on 1-4 earlier builds, mostly the layer just above, often a hub or a chain.
    for k, size in enumerate(sizes):
        for i in range(size):
            name = f"l{k}-{i:03d}"
            duration[name], kind[name] = dur(0.2, 2.0), f"layer{k}"
            deps[name] = []
            if k == 0:
                if i == 0:
                    for chain in chains:
                        deps[chain[0][0]].append(name)  # the chains need the first base library
                by_layer[0].append(name)
                continue
            pool: list[tuple[str, float]] = []
            for kk in range(k):
                for j, other in enumerate(by_layer[kk]):
                    hub = kk <= 1 and j < 3
                    pool.append((other, 6.0 if hub else 3.0 if kk == k - 1 else 1.0))
            for chain in chains:
                pool += [(cn, 1.5) for cn, usable in chain if usable <= k]
            want = min(len(pool), rng.choices([1, 2, 3, 4], weights=[0.35, 0.35, 0.2, 0.1])[0])
            chosen: set[str] = set()
            while len(chosen) < want:
                chosen.add(rng.choices([p[0] for p in pool], weights=[p[1] for p in pool])[0])
            deps[name] = sorted(chosen)
            by_layer[k].append(name)
    # Images: fan-in from the chain ends and many builds of the last layers.
    late = by_layer[-1] + by_layer[-2]
    for m in range(images):
        name = f"image-{m}"
        picks = rng.sample(late, min(len(late), 12))
        deps[name] = sorted({*picks, *(chain[-1][0] for chain in chains)})
        duration[name], kind[name] = dur(1.0, 2.0), "image"
    assert len(deps) == n, (len(deps), n)
    # Neutral names in a random order: the plan's topological order breaks ties by name, and structural names
    # ("chain...", "image...") would hand the naive plan-order baseline a critical-path priority for free.
    ids = list(range(n))
    rng.shuffle(ids)
    label = {old: f"b{i:03d}" for old, i in zip(deps, ids, strict=True)}
    return Dag(
        {label[k]: sorted(label[d] for d in v) for k, v in deps.items()},
        {label[k]: v * scale for k, v in duration.items()},
        {label[k]: v for k, v in kind.items()},
    )


def write_dag(dag: Dag, directory: Path, git_url: str, commit: str) -> None:
    for name, ds in dag.deps.items():
        steps = [f'sleep {dag.duration[name]:g} && echo {name} > "$OUT/{name}"']
        write_recipe(directory, name, git_url=git_url, commit=commit, steps=steps, depends=ds)


# -- simulation ------------------------------------------------------------------------------------------------
Order = Callable[[list[str], dict[str, float], float], list[str]]


def simulate(dag: Dag, slots: int, order: Order, extra: float = 0.0) -> float:
    """List scheduling: whenever a slot is free, start the first ready build in ``order``. Zero overhead unless
    ``extra`` seconds are added to every build. Returns the makespan."""
    waiting = {n: set(d) for n, d in dag.deps.items()}
    dependents = graph.dependents_of(dag.deps)
    ready_at: dict[str, float] = {n: 0.0 for n, d in waiting.items() if not d}
    running: list[tuple[float, str]] = []
    now = end = 0.0
    while ready_at or running:
        free = slots - len(running)
        if free > 0 and ready_at:
            for name in order(list(ready_at), ready_at, now)[:free]:
                del ready_at[name]
                heapq.heappush(running, (now + dag.duration[name] + extra, name))
        now, done = heapq.heappop(running)
        finished = [done]
        while running and running[0][0] == now:
            finished.append(heapq.heappop(running)[1])
        end = max(end, now)
        for name in finished:
            for child in dependents.get(name, ()):
                waiting[child].discard(name)
                if not waiting[child]:
                    ready_at[child] = now
    return end


def policies(dag: Dag) -> dict[str, Order]:
    topo = {n: i for i, n in enumerate(dag.order)}
    cp_unit = graph.critical_path_lengths(dag.deps)
    cp_dur = graph.critical_path_lengths(dag.deps, dag.duration)
    aging = Config().aging

    def ours(names: list[str], ready: dict[str, float], now: float) -> list[str]:
        cands = [policy.Candidate("run", n, policy.Lane.REBUILD, "amd64", ready[n], cp_unit[n]) for n in names]
        return [c.name for c in policy.order(cands, now, aging)]

    def ours_whole_levels(names: list[str], ready: dict[str, float], now: float) -> list[str]:
        """policy.order with the aging bonus rounded down to whole levels: critical path decides within a level."""
        level = policy.Lane.REBUILD.level

        def key(n: str) -> tuple[float, float, float, str]:
            return (-(level + (now - ready[n]) // aging), -cp_unit[n], ready[n], n)

        return sorted(names, key=key)

    return {
        "naive: plan (topological) order": lambda names, ready, now: sorted(names, key=lambda n: topo[n]),
        "naive: FIFO (oldest ready first)": lambda names, ready, now: sorted(names, key=lambda n: (ready[n], topo[n])),
        "ours as implemented (lane+aging, then critical path in builds)": ours,
        "ours with aging in whole levels (proposed fix)": ours_whole_levels,
        "critical path in builds, strictly first": lambda names, ready, now: sorted(
            names, key=lambda n: (-cp_unit[n], ready[n], n)
        ),
        "oracle: critical path by duration": lambda names, ready, now: sorted(
            names, key=lambda n: (-cp_dur[n], ready[n], n)
        ),
    }


# -- the measured run ------------------------------------------------------------------------------------------
@dataclass
class Measured:
    times: list[BuildTimes]
    duration: dict[str, float]
    run_seconds: float
    registered_slots: int

    @property
    def makespan(self) -> float:
        return max(t.noticed for t in self.times) - min(t.dispatched for t in self.times)

    def slot_overheads(self) -> list[float]:
        return [t.noticed - t.dispatched - self.duration[t.name] for t in self.times]

    def figures(self, slots: int) -> dict[str, Any]:
        d = self.duration
        t = self.times
        run_time = sum(x.noticed - x.started for x in t)
        work = sum(d[x.name] for x in t)
        done = [x for x in t if x.done is not None]

        def dist(values: list[float]) -> dict[str, float]:
            return {
                "median_ms": round(1000 * statistics.median(values), 1),
                "p90_ms": round(1000 * percentile(values, 90), 1),
                "mean_ms": round(1000 * statistics.fmean(values), 1),
            }

        return {
            "makespan_s": round(self.makespan, 2),
            "sum_D_s": round(work, 2),
            "sum_finished_minus_started_s": round(run_time, 2),
            "overhead_started_to_finished_s": round(run_time - work, 2),
            "overhead_started_to_finished_pct": round(100 * (run_time - work) / work, 2),
            "slot_utilisation_pct": round(100 * work / (slots * self.makespan), 1),
            "per_build": {
                "dispatch -> start": dist([x.started - x.dispatched for x in t]),
                "start -> worker done, minus D": dist([x.done - x.started - d[x.name] for x in done if x.done]),
                "worker done -> noticed": dist([x.noticed - x.done for x in done if x.done]),
                "slot held beyond D (dispatch -> noticed, minus D)": dist(self.slot_overheads()),
            },
            "run_wall_s": round(self.run_seconds, 2),
            "registered_slots": self.registered_slots,
            "max_in_flight": self.max_in_flight(),
        }

    def max_in_flight(self) -> int:
        """The most builds the coordinator had dispatched and not yet collected at any one time."""
        events = sorted([(t.dispatched, 1) for t in self.times] + [(t.noticed, -1) for t in self.times])
        current = peak = 0
        for _, delta in events:
            current += delta
            peak = max(peak, current)
        return peak


def run_fleet(root: Path, dag: Dag, args: argparse.Namespace) -> Measured:
    repo = root / "repo"
    commit = make_repo(repo)
    recipes = root / "recipes"
    write_dag(dag, recipes, str(repo), commit)
    warm = root / "recipes-warm"
    for i in range(2 * args.slots):
        write_recipe(warm, f"warm-{i}", git_url=str(repo), commit=commit, steps=[f'true > "$OUT/warm-{i}"'])
    workers = args.slots // args.concurrency
    with BenchFleet(root / "fleet", appendfsync=args.redis_fsync) as fleet:
        fleet.start_coordinator()
        registered = fleet.start_workers(workers, args.concurrency)
        progress(f"fleet up: {workers} worker(s) x concurrency {args.concurrency}, {registered} slots; warm-up run")
        fleet.wait_run(fleet.submit(warm), timeout=300, poll=0.5)
        progress(f"submitting {len(dag.deps)} builds (mangos-farm rebuild), polling status every {args.poll:g}s")
        t0 = time.monotonic()
        run = fleet.submit(recipes)
        status = fleet.wait_run(run, timeout=args.timeout, poll=args.poll)
        seconds = time.monotonic() - t0
        if not status["ok"] or status["summary"]["built"] != len(dag.deps):
            raise RuntimeError(f"run {run} failed: {status['summary']}\n{fleet.log_tail('coordinator')}")
        times = fleet.timelines(run, status)
        if args.keep:
            (root / "status.json").write_text(json.dumps(status, indent=1))
    return Measured(times, dag.duration, seconds, registered)


# -- report ----------------------------------------------------------------------------------------------------
@dataclass
class Report:
    args: dict[str, Any]
    machine: dict[str, Any]
    dag: dict[str, Any]
    lower_bound: float
    simulated: dict[str, float] = field(default_factory=dict)
    measured: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        lb = self.lower_bound
        makespan = self.measured.get("makespan_s")
        return {
            "args": self.args,
            "machine": self.machine,
            "dag": self.dag,
            "lower_bound_s": round(lb, 2),
            "simulated": {k: {"makespan_s": round(v, 2), "ratio": round(v / lb, 3)} for k, v in self.simulated.items()},
            "measured": self.measured,
            "ratio": round(makespan / lb, 3) if makespan else None,
            "target_ratio": TARGET_RATIO,
            "meets_target": (makespan / lb <= TARGET_RATIO) if makespan else None,
        }


def render(report: Report) -> str:
    a, d, lb = report.args, report.dag, report.lower_bound
    lines = [
        f"mangos-farm scheduling benchmark: {d['builds']} builds, {a['slots']} slots "
        f"({a['slots'] // a['concurrency']} workers x concurrency {a['concurrency']}), seed {a['seed']}, "
        f"{report.machine}",
        f"DAG: {d['edges']} edges, {d['roots']} roots, depth {d['depth_builds']} builds, max fan-in {d['max_fan_in']}, "
        f"max fan-out {d['max_fan_out']}, kinds {d['kinds']}",
        f"total work {d['total_work_s']:.1f}s, critical path {d['critical_path_s']:.1f}s, work/slots "
        f"{d['work_per_slot_s']:.1f}s -> lower bound {lb:.2f}s",
        "",
    ]
    width = 72
    lines.append(f"{'schedule':<{width}} {'makespan':>9} {'/ bound':>8}")
    lines.append("-" * (width + 19))
    for name, value in report.simulated.items():
        lines.append(f"{'sim, ' + name:<{width}} {value:>8.2f}s {value / lb:>8.3f}")
    m = report.measured
    if m:
        lines.append(f"{'measured on the fleet (first dispatch -> last finish)':<{width}} {m['makespan_s']:>8.2f}s "
                     f"{m['makespan_s'] / lb:>8.3f}")  # fmt: skip
        lines += [
            "",
            f"sum(D) {m['sum_D_s']:.2f}s; sum(finished - started) {m['sum_finished_minus_started_s']:.2f}s: "
            f"overhead {m['overhead_started_to_finished_s']:.2f}s ({m['overhead_started_to_finished_pct']:.1f}%); "
            f"slot utilisation {m['slot_utilisation_pct']:.1f}%; slots registered by the workers "
            f"{m['registered_slots']}, most builds in flight {m['max_in_flight']}",
            f"{'per build':<56} {'median':>9} {'p90':>9} {'mean':>9}",
        ]
        for name, v in m["per_build"].items():
            lines.append(f"{name:<56} {v['median_ms']:>7.1f}ms {v['p90_ms']:>7.1f}ms {v['mean_ms']:>7.1f}ms")
        ratio = m["makespan_s"] / lb
        verdict = "meets" if ratio <= TARGET_RATIO else "MISSES"
        lines += ["", f"makespan / lower bound = {ratio:.3f} ({verdict} the target of {TARGET_RATIO:.2f})"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = parser("bench_sched", __doc__)
    p.add_argument("--builds", type=int, default=200, help=f"builds in the DAG (default 200, at least {MIN_BUILDS})")
    p.add_argument("--slots", type=int, default=4, help="build slots in the fleet (default 4)")
    p.add_argument("--concurrency", type=int, default=2, help="slots per worker process (default 2: 2 workers x 2)")
    p.add_argument("--seed", type=int, default=SEED, help="seed for the DAG and its durations")
    p.add_argument(
        "--time-scale", type=float, default=1.0, help="multiply every build's duration D by this (default 1)"
    )
    p.add_argument("--poll", type=float, default=2.0, help="seconds between `mangos-farm status` polls (default 2)")
    p.add_argument("--timeout", type=float, default=1200, help="give up on the run after this many seconds")
    p.add_argument("--simulate-only", action="store_true", help="only the in-process simulations, no fleet")
    add_redis_fsync(p)
    args = p.parse_args(argv)
    if args.builds < MIN_BUILDS:
        p.error(f"--builds must be at least {MIN_BUILDS} (the DAG has two chains, seven layers and an image)")
    if args.slots < 1 or args.concurrency < 1 or args.slots % args.concurrency:
        p.error("--slots must be a positive multiple of --concurrency")
    if args.time_scale <= 0:
        p.error("--time-scale must be positive")
    if not args.simulate_only:
        require_tools(p, "git", "bwrap", "redis-server", "dpkg-query")

    dag = make_dag(args.builds, args.seed, args.time_scale)
    lb = max(dag.critical_path(), dag.work / args.slots)
    report = Report(
        args={
            k: getattr(args, k) for k in ("builds", "slots", "concurrency", "seed", "time_scale", "poll", "redis_fsync")
        },
        machine={"cpus": os.cpu_count(), "python": sys.version.split()[0], "loadavg_before": os.getloadavg()},
        dag=dag.stats(args.slots),
        lower_bound=lb,
    )
    for name, order in policies(dag).items():
        report.simulated[name] = simulate(dag, args.slots, order)
    progress(f"DAG {report.dag}; lower bound {lb:.2f}s")
    if not args.simulate_only:
        with workdir("mangos-bench-sched-", args.keep) as root:
            measured = run_fleet(root, dag, args)
        report.measured = measured.figures(args.slots)
        report.machine["loadavg_after"] = os.getloadavg()
        extra = statistics.fmean(measured.slot_overheads())
        ours = "ours as implemented (lane+aging, then critical path in builds)"
        report.simulated[f"ours, each D + measured mean slot overhead ({1000 * extra:.0f} ms)"] = simulate(
            dag, args.slots, policies(dag)[ours], extra
        )
        report.simulated[f"whole-level aging, each D + measured mean slot overhead ({1000 * extra:.0f} ms)"] = simulate(
            dag, args.slots, policies(dag)["ours with aging in whole levels (proposed fix)"], extra
        )
    print(json.dumps(report.to_json(), indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

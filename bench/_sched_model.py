"""The scheduling benchmark's model: a seeded, distribution-shaped DAG of builds with known durations, and list
scheduling of it in simulation (zero overhead) under baselines and under the farm's own policy,
:func:`farm.coordinator.policy.pick`, called exactly as the coordinator calls it: the ready builds as candidates,
the free slots by arch, the time the run last got a slot."""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from farm import graph
from farm.coordinator import policy


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
    """A distribution-like DAG of ``n`` builds (its shape: :mod:`bench.bench_sched`), reproducible from ``seed``; every
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


# -- simulation ------------------------------------------------------------------------------------------------
# A scheduler: given the ready builds (name -> the time each became ready), the time and the free slots, the
# builds to start now (at most ``free``).
Choose = Callable[[dict[str, float], float, int], list[str]]
OURS = "ours: policy.pick (lane, capped aging, critical path in builds)"
OURS_AGED = "ours, aging period 1/20 of the lower bound (aging inside the run)"
ORACLE = "oracle: critical path by duration"


def simulate(dag: Dag, slots: int, choose: Choose, extra: float = 0.0) -> float:
    """List scheduling: whenever slots are free, start what ``choose`` picks from the ready builds. Zero overhead
    unless ``extra`` seconds are added to every build. Returns the makespan."""
    waiting = {n: set(d) for n, d in dag.deps.items()}
    dependents = graph.dependents_of(dag.deps)
    ready_at: dict[str, float] = {n: 0.0 for n, d in waiting.items() if not d}
    running: list[tuple[float, str]] = []
    now = end = 0.0
    while ready_at or running:
        free = slots - len(running)
        if free > 0 and ready_at:
            chosen = choose(dict(ready_at), now, free)
            assert 0 < len(chosen) <= free and len(set(chosen)) == len(chosen), chosen
            for name in chosen:
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


def ranked(key: Callable[[str, dict[str, float]], Any]) -> Choose:
    """A scheduler that starts the ready builds with the smallest ``key(name, ready_at)``."""
    return lambda ready, now, free: sorted(ready, key=lambda n: key(n, ready))[:free]


def farm_policy(dag: Dag, aging: float) -> Choose:
    """:func:`farm.coordinator.policy.pick` on the run's ready builds, as the coordinator calls it: one rebuild run,
    critical path in builds (what the plan records: the farm does not know the durations), one arch."""
    cp_unit = graph.critical_path_lengths(dag.deps)
    last: dict[str, float] = {}

    def choose(ready: dict[str, float], now: float, free: int) -> list[str]:
        cands = [policy.Candidate("run", n, policy.Lane.REBUILD, "amd64", t, cp_unit[n]) for n, t in ready.items()]
        chosen = policy.pick(cands, {"amd64": free}, now, aging, last)
        if chosen:
            last["run"] = now
        return [c.name for c in chosen]

    return choose


def schedulers(dag: Dag, aging: float, slots: int) -> dict[str, Choose]:
    """Every schedule the benchmark simulates, by name: two naive ones, the farm's policy (with the coordinator's
    aging period, and with one much shorter than the run), critical path strictly first, and an oracle."""
    topo = {n: i for i, n in enumerate(dag.order)}
    cp_unit = graph.critical_path_lengths(dag.deps)
    cp_dur = graph.critical_path_lengths(dag.deps, dag.duration)
    lower_bound = max(dag.critical_path(), dag.work / slots)
    return {
        "naive: plan (topological) order": ranked(lambda n, r: topo[n]),
        "naive: FIFO (oldest ready first)": ranked(lambda n, r: (r[n], topo[n])),
        OURS: farm_policy(dag, aging),
        OURS_AGED: farm_policy(dag, lower_bound / 20),
        "critical path in builds, strictly first": ranked(lambda n, r: (-cp_unit[n], r[n], n)),
        ORACLE: ranked(lambda n, r: (-cp_dur[n], r[n], n)),
    }

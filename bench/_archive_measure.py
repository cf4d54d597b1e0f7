"""What :mod:`bench.bench_archive` reads off a running fleet, and the figures it derives: the coordinator's
/metrics, a process's memory from /proc, a Redis server's memory and command counts, build timelines from the
coordinator state and Celery's results, and from them the dispatch latency and the tick interval.

Dispatch latency is the time a build that could go out waited for the coordinator to send it (to its decision,
the dispatching tick's time) or for a worker to start it (a free slot's whole wait: the decision, the delivery
through the broker, the worker's lease claim). The ``i``-th
dispatch of a run (in dispatch order) could go out once (a) the run was submitted and every dependency of the
build had finished on its worker, and (b) a slot was free: with ``S`` slots, the first ``S`` dispatches have one
each, and dispatch ``i >= S`` needs the ``(i - S)``-th build of the run to have finished on its worker (finish
times sorted). Its latency is its dispatch time minus the later of the two, never below 0. "Finished on its
worker" is Celery's ``date_done`` (the worker stored the result) where the result is in Redis, else the time the
coordinator collected the outcome (an upper bound: it then hides the coordinator's time to notice).
"""

from __future__ import annotations

import itertools
import json
import os
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench._common import percentile

IGNORED_COMMANDS = ("info", "config", "client", "ping", "hello", "command", "select")


# -- the coordinator's /metrics ------------------------------------------------------------------------------------
def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of the /metrics on 127.0.0.1:``port``, by sample name: (labels, value)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out


def total(samples: Mapping[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``."""
    return sum(v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items()))


def tick_histograms(samples: Mapping[str, list[tuple[dict[str, str], float]]]) -> dict[str, dict[str, float]]:
    """Any histogram of the coordinator's tick (a metric named ``mangos_*tick*_seconds``): count, sum, mean and
    the bucket bounds below which 50 % and 99 % of the ticks fell."""
    out: dict[str, dict[str, float]] = {}
    for name in samples:
        if not (name.startswith("mangos_") and "tick" in name and name.endswith("_seconds_count")):
            continue
        base = name.removesuffix("_count")
        count, sum_ = total(samples, name), total(samples, base + "_sum")
        buckets = sorted((float(lab["le"]), v) for lab, v in samples.get(base + "_bucket", []) if "le" in lab)
        row = {"count": count, "sum_s": round(sum_, 3), "mean_s": round(sum_ / count, 4) if count else 0.0}
        for q in (50, 99):
            row[f"p{q}_le_s"] = next((le for le, c in buckets if count and c >= count * q / 100), float("nan"))
        out[base] = row
    return out


# -- processes and Redis -------------------------------------------------------------------------------------------
def proc_memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of process ``pid`` in bytes, from /proc (empty if it is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used, from /proc (0.0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14 and 15


def redis_memory(client: Any) -> dict[str, int]:
    info: dict[str, Any] = client.info("memory")
    return {"used_memory": int(info["used_memory"]), "used_memory_peak": int(info["used_memory_peak"])}


def redis_counters(client: Any) -> dict[str, int]:
    """Commands served so far, by command (the bench's own INFO and CONFIG left out), and bytes in and out."""
    stats: dict[str, Any] = client.info("commandstats")
    out = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
    out = {k: v for k, v in out.items() if k.split("|")[0] not in IGNORED_COMMANDS}
    net: dict[str, Any] = client.info("stats")
    out["_net_input_bytes"] = int(net["total_net_input_bytes"])
    out["_net_output_bytes"] = int(net["total_net_output_bytes"])
    return out


def counter_delta(after: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def per_build(delta: Mapping[str, int], builds: int) -> dict[str, Any]:
    """Commands (all, and the ten most frequent) and bytes per build over a window in which ``builds`` finished."""
    commands = {k: v for k, v in delta.items() if not k.startswith("_")}
    n = max(builds, 1)
    top = sorted(commands.items(), key=lambda kv: -kv[1])[:10]
    return {
        "builds": builds,
        "commands_per_build": round(sum(commands.values()) / n, 1),
        "by_command": {k: round(v / n, 2) for k, v in top},
        "kib_in_per_build": round(delta.get("_net_input_bytes", 0) / 1024 / n, 1),
        "kib_out_per_build": round(delta.get("_net_output_bytes", 0) / 1024 / n, 1),
    }


# -- timelines -----------------------------------------------------------------------------------------------------
@dataclass
class Timeline:
    name: str
    deps: list[str]
    dispatched: float | None  # the coordinator decided (its tick's time)
    started: float | None  # a worker claimed the build (its lease)
    done: float | None  # the worker stored its result (or, failing that, the coordinator noticed it)
    noticed: float | None
    attempts: int


def celery_done(broker: Any, task_ids: Sequence[str]) -> dict[str, float]:
    """``date_done`` of each task's result in the Celery result backend (Redis), as a Unix time (naive: UTC)."""
    out: dict[str, float] = {}
    pipe = broker.pipeline(transaction=False)
    for tid in task_ids:
        pipe.get(f"celery-task-meta-{tid}")
    for tid, raw in zip(task_ids, pipe.execute(), strict=True):
        if not raw:
            continue
        meta = json.loads(raw)
        if meta.get("date_done"):
            when = datetime.fromisoformat(meta["date_done"])
            out[tid] = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    return out


def timelines(jobs: Mapping[str, Any], broker: Any) -> tuple[dict[str, Timeline], str]:
    """Each job's timeline (jobs as :meth:`RunStore.jobs` returns them) and where its finish times came from."""
    tids = [j.task_id for j in jobs.values() if j.task_id]
    done = celery_done(broker, tids)
    out = {}
    for j in jobs.values():
        finished = done.get(j.task_id or "")
        if finished is None and j.state.value == "built":
            finished = j.finished_at
        out[j.name] = Timeline(j.name, list(j.deps), j.dispatched_at, j.started_at, finished, j.finished_at,
                               int(j.attempts))  # fmt: skip
    source = "celery date_done" if len(done) >= 0.9 * max(len(tids), 1) else "coordinator finished_at (partly)"
    return out, source


def dispatch_latencies(
    lines: Mapping[str, Timeline], slots: int, submitted: float, at: str = "dispatched"
) -> list[tuple[float, float]]:
    """(time, latency) of every dispatch of one run in time order, the time being the coordinator's decision
    (``at="dispatched"``) or the worker's start (``at="started"``: what a free slot waited, delivery included);
    see the module's docstring."""
    frees = sorted(t.done for t in lines.values() if t.done is not None and t.dispatched is not None)
    when = {n: getattr(t, at) for n, t in lines.items() if getattr(t, at) is not None}
    out = []
    for i, name in enumerate(sorted(when, key=lambda n: when[n])):
        t = lines[name]
        slot = float("-inf") if i < slots else (frees[i - slots] if i - slots < len(frees) else when[name])
        deps_done = [lines[d].done for d in t.deps if d in lines]
        ready = max([submitted, *(d for d in deps_done if d is not None)])  # a cached dependency: at submit
        out.append((when[name], max(0.0, when[name] - max(slot, ready))))
    return out


def window(latencies: Sequence[tuple[float, float]], start: float, count: int) -> list[tuple[float, float]]:
    """The first ``count`` dispatches at or after ``start``."""
    return [x for x in latencies if x[0] >= start][:count]


def latency_summary(rows: Sequence[tuple[float, float]]) -> dict[str, Any]:
    ms = [lat * 1000 for _, lat in rows]
    ticks = sorted({round(t, 6) for t, _ in rows})
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    worst = sorted(rows, key=lambda r: -r[1])[:5]
    return {
        "worst": [{"after_s": round(t - rows[0][0], 2), "ms": round(lat * 1000, 1)} for t, lat in worst],
        "dispatches": len(rows),
        "p50_ms": round(percentile(ms, 50), 1) if ms else None,
        "p99_ms": round(percentile(ms, 99), 1) if ms else None,
        "max_ms": round(max(ms), 1) if ms else None,
        "seconds": round(rows[-1][0] - rows[0][0], 2) if rows else None,
        "dispatch_ticks": len(ticks),
        "tick_interval_p50_ms": round(percentile(gaps, 50) * 1000, 1) if gaps else None,
        "tick_interval_p99_ms": round(percentile(gaps, 99) * 1000, 1) if gaps else None,
    }


def states(jobs: Iterable[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for j in jobs:
        out[j.state.value] = out.get(j.state.value, 0) + 1
    return out

"""Read-only views of the coordinator's state as JSON-able rows, shared by the CLI and the web view."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from farm.coordinator.kv import KV
from farm.coordinator.leases import LeaseBoard
from farm.coordinator.runs import RunStore, State


def worker_rows(kv: KV, lease_timeout: float, now: float | None = None) -> list[dict[str, Any]]:
    """Every live worker: what it is, how long it has been up and silent, and what it builds (``workers --json``)."""
    now = time.time() if now is None else now
    workers = LeaseBoard(kv, lease_timeout).workers()
    building: dict[str, list[dict[str, Any]]] = {}
    runs = RunStore(kv)
    for run in runs.active():
        for job in runs.jobs(run.id).values():
            if job.state is State.RUNNING and job.worker:
                building.setdefault(job.worker, []).append({"run": run.id, "recipe": job.name, "since": job.started_at})
    return [
        {
            "name": w.name,
            "arch": w.arch,
            "concurrency": w.concurrency,
            "host": w.host,
            "up_seconds": round(now - w.started, 1),
            "last_seen_seconds": round(now - w.seen, 1),
            "disabled": w.disabled,
            "building": building.get(w.name, []),
        }
        for w in workers
    ]


def run_rows(runs: RunStore) -> list[dict[str, Any]]:
    """Every run, newest first, with how many of its builds are in each state."""
    rows = []
    for run in reversed(runs.all_runs()):
        jobs = runs.jobs(run.id)
        counts = Counter(j.state.value for j in jobs.values())
        rows.append(
            {
                "run": run.id,
                "status": run.status,
                "lane": run.lane.value,
                "arch": run.arch,
                "created": run.created,
                "finished": run.finished,
                "ok": run.status == "done" and not any(j.state in (State.FAILED, State.BLOCKED) for j in jobs.values()),
                "total": len(jobs),
                "summary": {s.value: counts.get(s.value, 0) for s in State},
            }
        )
    return rows

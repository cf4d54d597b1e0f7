"""Read-only views of the coordinator's state as JSON-able rows, shared by the CLI and the web view."""

from __future__ import annotations

import time
from typing import Any

from farm.coordinator.kv import KV
from farm.coordinator.leases import LeaseBoard
from farm.coordinator.runs import RunStore, State, run_header


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
        rows.append(run_header(run, jobs) | {"total": len(jobs)})
    return rows

"""Rechecks on a fleet: the task and its per-worker queue, the payload it carries, and which worker rechecks.

A recheck is sent to one chosen worker, never the one that made the published build when another is alive. The
payload is covered by the coordinator's signature (:mod:`farm.trust.tasksig`) like a build task's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from farm.build import BuildRequest
from farm.build.variation import Variation
from farm.coordinator.runs import Job
from farm.coordinator.runs import State as JobState
from farm.crossval.diffreport import DEFAULT_DIFF_TIMEOUT, DEFAULT_MAX_REPORT
from farm.store import BuildRecord

RECHECK_TASK = "mangos.recheck"


def recheck_queue(worker: str) -> str:
    """The queue only ``worker`` consumes (workers.tasks adds it at start): a recheck is sent to a chosen worker."""
    return f"mangos.recheck.{worker}"


def variation_from_json(data: Mapping[str, Any]) -> Variation:
    """The inverse of :meth:`Variation.to_json` (the umask travels as an octal string)."""
    values = dict(data)
    umask = values.get("umask", "0022")
    values["umask"] = int(umask, 8) if isinstance(umask, str) else int(umask)
    return Variation(**values)


def recheck_payload(
    req: BuildRequest,
    record: BuildRecord,
    variation: Variation,
    *,
    original: str,
    max_report_size: int = DEFAULT_MAX_REPORT,
    diff_timeout: float = DEFAULT_DIFF_TIMEOUT,
) -> dict[str, Any]:
    """What a recheck task carries (all of it covered by the coordinator's signature, farm.trust.tasksig)."""
    return {
        "request": req.to_json(),
        "record": record.to_json(),
        "variation": variation.to_json(),
        "original": original,
        "max_report_size": max_report_size,
        "diff_timeout": diff_timeout,
    }


def original_workers(jobs: Iterable[Job]) -> dict[str, str]:
    """Build key -> the worker that built it, from the coordinator's runs (the latest build wins). A cached job
    names no worker; a key built by no run here (another farm's, or an embedded build) is absent."""
    found: dict[str, tuple[float, str]] = {}
    for job in jobs:
        if job.state is not JobState.BUILT or not job.key or not job.worker:
            continue
        when = job.finished_at or 0.0
        if job.key not in found or when >= found[job.key][0]:
            found[job.key] = (when, job.worker)
    return {key: worker for key, (_, worker) in found.items()}


def choose_worker(original: str, live: Sequence[str], assigned: Mapping[str, int]) -> str | None:
    """The worker to recheck on: a live one other than the original builder, the least loaded by this recheck
    (then by name, for a stable choice). None when no other worker is alive: then any worker will do."""
    others = sorted((w for w in live if w != original), key=lambda w: (assigned.get(w, 0), w))
    return others[0] if others else None

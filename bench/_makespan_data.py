"""The makespan benchmark's inputs: the plan's graph and one duration per build, each saying where it comes from.

Nothing here builds or writes: the plan is the farm's own (:func:`farm.coordinator.planning.plan_recipes`, what
``mangos-farm plan`` runs), the durations are read from the store's build records and, for the builds that never
finished, from the coordinator state's unfinished attempts. Where a duration comes from, in order:

1. ``measured``: the store's record for the build key the plan computes (the build the rebuild would reuse):
   its ``finished - started``;
2. ``measured (earlier build)``: the newest record of the recipe under another key (an older version, other
   dependencies);
3. ``estimated``: ``--estimate NAME=SECONDS``; else the recipe's own comment "Estimated A-B h|min on N cores"
   (the midpoint); else the median of the measured durations (what the farm's ETA assumes for a build it has
   never seen: :func:`farm.coordinator.remaining.estimate`). A build attempt the farm killed at its time limit
   ran at least that long, so an estimate is raised to it (``--floor all``: to every unfinished attempt's time,
   cancelled and failed ones too; ``none``: never).
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from farm.coordinator.plan import Plan
from farm.coordinator.remaining import estimate
from farm.store import Store
from farm.store.base import BuildRecord

MEASURED = "measured"
EARLIER = "measured (earlier build)"
ESTIMATED = "estimated"
FLOORS = ("timeout", "all", "none")
# "Estimated 1.5-2 h on 2 cores", "Estimated 20-30 min on 2 cores" in a recipe's comments.
COMMENT = re.compile(r"#.*?[Ee]stimated (\d+(?:\.\d+)?)(?:-(\d+(?:\.\d+)?))? ?(h|min)\b[^\n]*?on (\d+) cores")


@dataclass
class Attempt:
    """The longest unfinished attempt at a build: how long it ran and how it ended (``timeout``, the failure's
    classified cause, or the job's state)."""

    seconds: float
    ended: str
    run: str

    def to_json(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds), "ended": self.ended, "run": self.run}


@dataclass
class Duration:
    name: str
    seconds: float
    source: str  # MEASURED, EARLIER or ESTIMATED
    note: str = ""
    shared: float | None = None  # measured: the share of its time another measured build ran beside it
    attempt: Attempt | None = None

    @property
    def estimated(self) -> bool:
        return self.source == ESTIMATED

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seconds": round(self.seconds, 1),
            "source": self.source,
            "estimated": self.estimated,
            "note": self.note,
            "shared_pct": None if self.shared is None else round(100 * self.shared),
            "longest_unfinished_attempt": self.attempt.to_json() if self.attempt else None,
        }


def parse_estimates(values: Iterable[str]) -> dict[str, float]:
    """``NAME=SECONDS`` pairs (the ``--estimate`` flags); ValueError names the bad one."""
    found: dict[str, float] = {}
    for value in values:
        name, sep, seconds = value.partition("=")
        try:
            number = float(seconds)
        except ValueError:
            number = -1.0
        if not sep or not name or number <= 0:
            raise ValueError(f"--estimate {value!r}: expected NAME=SECONDS with SECONDS > 0, e.g. gcc-12=7200")
        found[name] = number
    return found


def comment_estimate(path: Path) -> tuple[float, str] | None:
    """The recipe file's own estimate ("Estimated 1-1.5 h on 2 cores"): the midpoint in seconds, and the words."""
    try:
        text = path.read_text()
    except OSError:
        return None
    m = COMMENT.search(text)
    if m is None:
        return None
    low, high, unit, cores = m.group(1), m.group(2) or m.group(1), m.group(3), m.group(4)
    scale = 3600 if unit == "h" else 60
    words = f"{low}-{high} {unit}" if m.group(2) else f"{low} {unit}"
    return (float(low) + float(high)) / 2 * scale, f"the recipe's comment: {words} on {cores} cores (midpoint)"


def _epoch(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def record_seconds(record: BuildRecord) -> float:
    return _epoch(record.finished) - _epoch(record.started)


def shared_share(records: Mapping[str, BuildRecord]) -> dict[str, float]:
    """For each record, the share of its wall time during which another of ``records`` was building too (the
    measurement was then made on cores shared with another build)."""
    spans = {n: (_epoch(r.started), _epoch(r.finished)) for n, r in records.items()}
    out: dict[str, float] = {}
    for name, (start, end) in spans.items():
        cuts = sorted(
            (max(start, s), min(end, e)) for n, (s, e) in spans.items() if n != name and s < end and e > start
        )
        covered, reach = 0.0, start
        for s, e in cuts:
            if e > reach:
                covered += e - max(s, reach)
                reach = e
        out[name] = covered / (end - start) if end > start else 0.0
    return out


def measured(plan: Plan, store: Store) -> tuple[dict[str, BuildRecord], dict[str, str]]:
    """The record behind each build's measured duration, and its source (MEASURED or EARLIER)."""
    records: dict[str, BuildRecord] = {}
    source: dict[str, str] = {}
    for name, build in plan.builds.items():
        if build.record is not None:
            records[name], source[name] = build.record, MEASURED
        elif earlier := store.records_for_recipe(name):
            records[name], source[name] = max(earlier, key=lambda r: r.finished), EARLIER
    return records, source


def durations(
    plan: Plan,
    store: Store,
    *,
    estimates: Mapping[str, float],
    attempts: Mapping[str, Attempt],
    floor: str = "timeout",
) -> dict[str, Duration]:
    """One :class:`Duration` per build of ``plan``, in plan order."""
    records, source = measured(plan, store)
    shared = shared_share(records)
    seconds = {n: record_seconds(r) for n, r in records.items()}
    median = estimate({}, seconds).median
    out: dict[str, Duration] = {}
    for name, build in plan.builds.items():
        attempt = attempts.get(name)
        if name in records:
            note = f"{records[name].version}, built {records[name].finished}"
            out[name] = Duration(name, seconds[name], source[name], note, shared[name], attempt)
            continue
        if name in estimates:
            value, note = estimates[name], "--estimate"
        elif (found := comment_estimate(build.recipe.path)) is not None:
            value, note = found
        elif median is not None:
            value, note = median, f"the median of the {len(seconds)} measured builds (the farm's ETA rule)"
        else:
            raise ValueError(f"no duration for {name}: no build has a record; give --estimate {name}=SECONDS")
        raised = (
            attempt is not None
            and attempt.seconds > value
            and (floor == "all" or (floor == "timeout" and attempt.ended == "timeout"))
        )
        if raised and attempt is not None:
            note += f"; raised to its {attempt.ended} attempt's {attempt.seconds:.0f} s (run {attempt.run})"
            value = attempt.seconds
        out[name] = Duration(name, value, ESTIMATED, note, None, attempt)
    return out


def unfinished_attempts(state_url: str, names: Iterable[str]) -> dict[str, Attempt]:
    """The longest attempt at each of ``names`` that did not end in a build, over every run of the coordinator
    state at ``state_url`` (read only: runs and jobs are read, nothing is written). Empty when there is no state."""
    from farm.coordinator.kv import open_kv
    from farm.coordinator.runs import RunStore, State

    if state_url.startswith("sqlite:///") and not Path(state_url[len("sqlite:///") :]).is_file():
        return {}
    wanted = set(names)
    runs = RunStore(open_kv(state_url))
    found: dict[str, Attempt] = {}
    for run in runs.all_runs():
        for name, job in runs.jobs(run.id, recipes=False).items():
            if name not in wanted or job.state is State.BUILT or job.started_at is None:
                continue
            # The last attempt began at started_at; a failure after that ended it (the job then waited for a retry
            # or gave up), else the job's end did (a run cancelled under it, a failure with no retry).
            cause = str(((job.error or {}).get("cause") or {}).get("kind") or "")
            ends = [f for f in job.failures if f.get("at", 0) > job.started_at]
            if ends:
                last = max(ends, key=lambda f: f["at"])
                end, ended = float(last["at"]), cause or str(last.get("code"))
            elif job.finished_at is not None:
                end, ended = job.finished_at, (cause or "failed") if job.state is State.FAILED else job.state.value
            else:
                continue
            if end - job.started_at > (found[name].seconds if name in found else 0.0):
                found[name] = Attempt(end - job.started_at, ended, run.id)
    return found


def summary(rows: Mapping[str, Duration]) -> dict[str, Any]:
    by_source = {s: sum(1 for d in rows.values() if d.source == s) for s in (MEASURED, EARLIER, ESTIMATED)}
    est = [d.seconds for d in rows.values() if d.estimated]
    return {
        "builds": len(rows),
        "by_source": by_source,
        "estimated_work_s": round(sum(est), 1),
        "measured_work_s": round(sum(d.seconds for d in rows.values() if not d.estimated), 1),
        "median_measured_s": round(statistics.median(m), 1)
        if (m := [d.seconds for d in rows.values() if not d.estimated])
        else None,
    }

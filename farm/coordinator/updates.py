"""Recipes behind the archive, kept in the coordinator state until a build catches up with each.

``recipes update`` records what it found (:meth:`LagBoard.record`); the coordinator, which every fleet runs
exactly once and which Prometheus scrapes, marks an entry built when a build of that recipe at the archive's
version (or newer) finishes built or cached in any run (:meth:`LagBoard.mark_built`) and exports the gauges each
tick (:meth:`LagBoard.export`). So the metric is right whichever machine ran ``recipes update``, and survives a
restart of either.

State: the hash ``mangos:archive:behind``, recipe name -> JSON of a :class:`Lag`. An entry's ``first_seen`` is
the time of the first ``recipes update`` that saw the recipe behind and is kept while the recipe stays unbuilt
(a newer update arriving meanwhile does not reset it): ``mangos_security_update_waiting_seconds`` is the age of
the oldest security update not yet built.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from farm import metrics
from farm.coordinator.kv import KV
from farm.coordinator.runs import Job, State

if TYPE_CHECKING:
    from farm.archive.update import Outcome

KINDS = ("security", "update")


@dataclass
class Lag:
    """One recipe behind the archive: the version the farm last had, the archive's, since when."""

    name: str
    current: str
    target: str
    kind: str  # security | update
    status: str  # what the last recipes update did: updated (awaiting its build), unavailable, failed
    first_seen: float
    built_at: float | None = None

    @property
    def waiting(self) -> bool:
        return self.built_at is None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class LagBoard:
    KEY = "mangos:archive:behind"

    def __init__(self, kv: KV) -> None:
        self.kv = kv

    def entries(self) -> dict[str, Lag]:
        out = {}
        for name, raw in self.kv.hgetall(self.KEY).items():
            try:
                out[name] = Lag(**json.loads(raw))
            except (TypeError, ValueError):
                continue  # a malformed entry is dropped by the next record()
        return out

    def _save(self, lags: Iterable[Lag]) -> None:
        mapping = {lag.name: json.dumps(lag.to_json(), sort_keys=True).encode() for lag in lags}
        if mapping:
            self.kv.hset(self.KEY, mapping)

    def record(self, outcomes: Sequence[Outcome], now: float) -> list[Lag]:
        """Merge what one ``recipes update`` found; the entries now waiting for a build, by name.

        A recipe behind the archive gets (or keeps) an entry; one now up to date keeps its unbuilt entry (it
        waits for its build) and loses a built one. Recipes this update did not look at are left alone.
        """
        previous = self.entries()
        keep: list[Lag] = []
        drop: list[str] = []
        for o in outcomes:
            prev = previous.get(o.name)
            pending = prev if prev is not None and prev.waiting else None
            if o.behind and o.archive is not None:
                security = o.security or (pending is not None and pending.kind == "security")
                keep.append(
                    Lag(
                        name=o.name,
                        current=pending.current if pending else o.current,
                        target=_binary_version(o.archive, o.archive_binnmu),
                        kind="security" if security else "update",
                        status=o.status.value,
                        first_seen=pending.first_seen if pending else now,
                    )
                )
            elif pending is not None:
                pending.status = "updated"
                keep.append(pending)
            elif prev is not None:
                drop.append(o.name)
        if malformed := set(self.kv.hgetall(self.KEY)) - set(previous):
            drop.extend(sorted(malformed))
        self._save(keep)
        if drop:
            self.kv.hdel(self.KEY, *drop)
        return sorted((lag for lag in keep if lag.waiting), key=lambda lag: lag.name)

    def refresh(self, jobs: Iterable[Job], now: float) -> None:
        """What the coordinator does each tick: :meth:`mark_built` from the jobs it scanned, then :meth:`export`."""
        lags = self.entries()
        self.mark_built(jobs, now, lags)
        self.export(now, lags)

    def mark_built(self, jobs: Iterable[Job], now: float, lags: dict[str, Lag] | None = None) -> list[Lag]:
        """Mark built every waiting entry that a finished build (built or cached) of its recipe at its target
        version or newer catches up with (its binaries' version: a binNMU ``+bN`` counts); the entries marked."""
        waiting = {n: lag for n, lag in (self.entries() if lags is None else lags).items() if lag.waiting}
        if not waiting:
            return []
        from farm.archive.versions import compare  # Debian version ordering; only needed with entries waiting

        done = []
        for job in jobs:
            lag = waiting.get(job.name)
            if lag is None or job.state not in (State.BUILT, State.CACHED):
                continue
            if compare(_binary_version(job.version, job.binnmu), lag.target) >= 0:
                lag.built_at = now
                done.append(lag)
                del waiting[job.name]
        self._save(done)
        return done

    def export(self, now: float, lags: dict[str, Lag] | None = None) -> None:
        """``mangos_recipes_behind_archive{kind}`` and ``mangos_security_update_waiting_seconds`` (0: none)."""
        waiting = [lag for lag in (self.entries() if lags is None else lags).values() if lag.waiting]
        for kind in KINDS:
            metrics.recipes_behind.labels(kind).set(sum(1 for lag in waiting if lag.kind == kind))
        security = [now - lag.first_seen for lag in waiting if lag.kind == "security"]
        metrics.security_update_waiting.set(max([0.0, *security]))


def _binary_version(version: str, binnmu: int) -> str:
    from farm.archive.update import binary_version

    return binary_version(version, binnmu)

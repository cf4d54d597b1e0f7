"""Scheduling policy: priority lanes with aging, critical path first within a lane. Pure functions.

A build's effective level is its lane's level plus one whole level per ``aging`` seconds it has waited, so a full
rebuild that has waited long enough competes with interactive work and is never starved, while a fresh security
build still goes first.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


class Lane(enum.StrEnum):
    SECURITY = "security"
    INTERACTIVE = "interactive"
    REBUILD = "rebuild"

    @property
    def level(self) -> int:
        return {Lane.SECURITY: 3, Lane.INTERACTIVE: 2, Lane.REBUILD: 1}[self]


@dataclass(frozen=True)
class Candidate:
    run_id: str
    name: str
    lane: Lane
    arch: str
    ready_since: float
    critical_path: float


def effective_level(c: Candidate, now: float, aging: float) -> float:
    # Whole levels: within a level the critical path decides. (A continuous bonus made every build that became
    # ready earlier outrank a longer critical path, i.e. oldest-first; bench_sched measured 1.27 x the bound.)
    waited = max(0.0, now - c.ready_since)
    return float(c.lane.level + (waited // aging if aging > 0 else 0))


def order(candidates: Iterable[Candidate], now: float, aging: float) -> list[Candidate]:
    """Highest effective level first; then longest critical path; then oldest; then name (stable)."""
    return sorted(
        candidates,
        key=lambda c: (-effective_level(c, now, aging), -c.critical_path, c.ready_since, c.run_id, c.name),
    )


def pick(candidates: Sequence[Candidate], free_slots: dict[str, int], now: float, aging: float) -> list[Candidate]:
    """Which candidates to dispatch now: in priority order, while their arch has a free slot.

    Dispatching only into free slots (rather than flooding the broker) is what lets a security build that arrives
    during a full rebuild start at the next free slot.
    """
    slots = dict(free_slots)
    chosen = []
    for c in order(candidates, now, aging):
        if slots.get(c.arch, 0) > 0:
            slots[c.arch] -= 1
            chosen.append(c)
    return chosen

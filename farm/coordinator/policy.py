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
    """The lane's level plus one per whole ``aging`` seconds waited. Whole levels, so that within a level the
    critical path decides (a continuous bonus would rank every earlier-ready build first: oldest-first)."""
    waited = max(0.0, now - c.ready_since)
    return float(c.lane.level + (waited // aging if aging > 0 else 0))


# The order of ready builds, best first, written once here and used by every caller (order, pick):
#   1. highest effective level (lane plus aging);
#   2. longest critical path;
#   3. oldest (earliest ready);
#   4. run id, then name (a total order: the same inputs always give the same order).
def priority(c: Candidate, now: float, aging: float) -> tuple[float, float, float, str, str]:
    return (-effective_level(c, now, aging), -c.critical_path, c.ready_since, c.run_id, c.name)


def order(candidates: Iterable[Candidate], now: float, aging: float) -> list[Candidate]:
    """The candidates best first, by :func:`priority`."""
    return sorted(candidates, key=lambda c: priority(c, now, aging))


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

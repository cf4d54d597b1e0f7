"""Scheduling policy: which ready builds take the free slots. Pure functions of their arguments.

Three lanes, by level: security (3) above interactive (2) above rebuild (1). The invariants, each tested:

1. **Security always goes first.** Every security candidate precedes every other candidate, however long the
   others have waited.
2. **Aging is capped.** A rebuild candidate that has waited ``aging`` seconds rises one level, to the interactive
   level, and never higher; interactive and security candidates never rise. So a full rebuild that has waited
   for hours competes with interactive work on equal terms (it is never starved by it) and never overtakes a
   security build.
3. **Runs compete as wholes.** A run's level is the highest effective level among its candidates (its
   longest-waiting build ages the whole run); runs at a higher level go before runs at a lower level.
4. **Within a run the critical path decides**: longest critical path first, then the earliest ready, then the
   name. Aging never reorders a run (an aged leaf does not overtake a freshly released build on the critical
   path: a long run does not turn oldest-first).
5. **Fair share among runs at the same level**: the next slot goes to the run that was last dispatched to the
   longest ago (a run never dispatched to comes first), then to the higher native lane (fresh interactive work
   before an aged rebuild), then by run id. :func:`pick` records each of its own dispatches, so slots filled at
   once alternate between runs, and successive calls alternate through ``last_dispatch``: two runs that both
   have ready work get every other slot.
6. **A total order.** The result depends on the candidates as a set, never on the order they are given in.
7. **Free slots only.** :func:`pick` dispatches a candidate only into a free slot of its architecture, so a
   security build that arrives during a full rebuild takes the next slot that frees.
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["Candidate", "Lane", "effective_level", "order", "pick", "priority"]


class Lane(enum.StrEnum):
    SECURITY = "security"
    INTERACTIVE = "interactive"
    REBUILD = "rebuild"

    @property
    def level(self) -> int:
        return _LEVEL[self]


_LEVEL = {Lane.SECURITY: 3, Lane.INTERACTIVE: 2, Lane.REBUILD: 1}
AGED_CAP = _LEVEL[Lane.INTERACTIVE]  # the highest level waiting can reach


@dataclass(frozen=True)
class Candidate:
    """A ready build: ``cls`` is the capability class of the slots it needs (``"default"``: any slot)."""

    run_id: str
    name: str
    lane: Lane
    arch: str
    ready_since: float
    critical_path: float
    cls: str = "default"


def effective_level(c: Candidate, now: float, aging: float) -> int:
    """The lane's level; a rebuild candidate rises one level per whole ``aging`` seconds waited, up to the
    interactive level (invariant 2). ``aging`` <= 0 turns aging off."""
    base = c.lane.level
    if base >= AGED_CAP or aging <= 0:
        return base
    waited = max(0.0, now - c.ready_since)
    return int(min(AGED_CAP, base + waited // aging))


def priority(c: Candidate, now: float, aging: float) -> tuple[int, int, float, float, str, str, str]:
    """A candidate's standing on its own: effective level, native lane, critical path, earliest ready, then ids.

    The order of candidates of different runs with no dispatch history between them. :func:`order` and
    :func:`pick` rank whole runs by their best level (invariant 3) and a run's candidates by critical path alone
    (invariant 4), so this is the order only where each run offers one candidate.
    """
    return (-effective_level(c, now, aging), -c.lane.level, *_in_run(c), c.run_id, c.cls)


def _in_run(c: Candidate) -> tuple[float, float, str]:
    """Invariant 4: the order of one run's candidates. No level, no aging."""
    return (-c.critical_path, c.ready_since, c.name)


def _total(c: Candidate) -> tuple[float, float, str, str, str]:
    return (*_in_run(c), c.cls, c.arch)


def order(
    candidates: Iterable[Candidate], now: float, aging: float, last_dispatch: Mapping[str, float] | None = None
) -> list[Candidate]:
    """All candidates, best first: the sequence in which :func:`pick` would dispatch them given slots for all."""
    cands = list(candidates)
    unlimited = {c.arch: len(cands) for c in cands}
    return pick(cands, unlimited, now, aging, last_dispatch)


def pick(
    candidates: Iterable[Candidate],
    free_slots: Mapping[str, int],
    now: float,
    aging: float,
    last_dispatch: Mapping[str, float] | None = None,
) -> list[Candidate]:
    """The candidates to dispatch now, in dispatch order: one free slot (of the candidate's arch) at a time, to
    the best run by level and fair share, which gives it its best candidate by critical path.

    ``last_dispatch`` maps a run id to the time that run last got a slot (runs not in it: never); it is not
    changed, the caller records the dispatches it makes.
    """
    # A group: one run's candidates in one lane (a run has one lane; the candidates carry it).
    groups: dict[tuple[str, int], dict[str, list[Candidate]]] = {}  # group -> arch -> candidates, worst first
    level: dict[tuple[str, int], int] = {}
    for c in sorted(candidates, key=_total, reverse=True):
        group = (c.run_id, c.lane.level)
        groups.setdefault(group, {}).setdefault(c.arch, []).append(c)
        level[group] = max(level.get(group, 0), effective_level(c, now, aging))
    slots = {arch: n for arch, n in free_slots.items() if n > 0}
    seen = last_dispatch or {}
    # The heap holds each group once: (-level, (last dispatched, picks before it in this call), -native, run id).
    # A pick made here counts as later than every dispatch in ``last_dispatch``, whatever clock wrote those.
    never, latest = float("-inf"), max([now, *seen.values()])
    heap = [(-level[g], (seen.get(g[0], never), 0), -g[1], g[0]) for g in groups]
    heapq.heapify(heap)
    chosen: list[Candidate] = []
    while heap and slots:
        neg_level, _, neg_native, run_id = heapq.heappop(heap)
        by_arch = groups[(run_id, -neg_native)]
        heads = [(_total(lst[-1]), arch) for arch, lst in by_arch.items() if lst and slots.get(arch, 0) > 0]
        if not heads:
            continue  # nothing of this group fits a free slot now: it drops out of this call
        _, arch = min(heads)
        chosen.append(by_arch[arch].pop())
        slots[arch] -= 1
        if not slots[arch]:
            del slots[arch]
        if any(by_arch.values()):
            heapq.heappush(heap, (neg_level, (latest, len(chosen)), neg_native, run_id))
    return chosen

"""The scheduling policy on a fake clock: ``now`` is a number the test chooses (hours in the tests that need
hours), so nothing here sleeps."""

from __future__ import annotations

import heapq
import random
from collections import Counter

import pytest

from farm.coordinator.policy import Candidate, Lane, effective_level, order, pick, priority

pytestmark = pytest.mark.unit

AGING = 600.0
HOUR = 3600.0


def cand(
    name: str, lane: Lane, *, ready: float = 0.0, cp: float = 1.0, arch: str = "amd64", run: str = "r"
) -> Candidate:
    return Candidate(run, name, lane, arch, ready, cp)


def names(cands: list[Candidate]) -> list[str]:
    return [c.name for c in cands]


def test_lanes_order_security_first() -> None:
    got = order([cand("r", Lane.REBUILD), cand("s", Lane.SECURITY), cand("i", Lane.INTERACTIVE)], now=0, aging=AGING)
    assert names(got) == ["s", "i", "r"]


def test_a_rebuild_build_that_waited_72_hours_does_not_beat_a_fresh_security_build() -> None:
    now = 72 * HOUR
    old = cand("rebuild-72h", Lane.REBUILD, ready=0, cp=500, run="full-rebuild")
    fresh = cand("fix", Lane.SECURITY, ready=now, cp=1, run="security")
    assert effective_level(old, now, AGING) < effective_level(fresh, now, AGING)
    assert names(pick([old, fresh], {"amd64": 1}, now, AGING)) == ["fix"]
    assert names(order([old, fresh], now, AGING)) == ["fix", "rebuild-72h"]
    # Fair share does not cross levels: the security run was served a moment ago, the rebuild never.
    served = {"security": now - 1}
    assert names(pick([old, fresh], {"amd64": 1}, now, AGING, served)) == ["fix"]


def test_aging_lifts_a_rebuild_build_to_the_interactive_level_and_no_higher() -> None:
    rebuild = cand("r", Lane.REBUILD, ready=0)
    assert effective_level(rebuild, now=AGING - 1, aging=AGING) == Lane.REBUILD.level
    assert effective_level(rebuild, now=AGING, aging=AGING) == Lane.INTERACTIVE.level
    assert effective_level(rebuild, now=72 * HOUR, aging=AGING) == Lane.INTERACTIVE.level
    assert effective_level(cand("i", Lane.INTERACTIVE), now=72 * HOUR, aging=AGING) == Lane.INTERACTIVE.level
    assert effective_level(cand("s", Lane.SECURITY), now=72 * HOUR, aging=AGING) == Lane.SECURITY.level
    assert effective_level(rebuild, now=72 * HOUR, aging=0) == Lane.REBUILD.level  # aging off


def test_an_aged_rebuild_shares_with_fresh_interactive_work_but_does_not_overtake_it() -> None:
    now = 72 * HOUR
    old = [cand(f"old{i}", Lane.REBUILD, ready=0, cp=100, run="rebuild") for i in range(20)]
    fresh = [cand(f"new{i}", Lane.INTERACTIVE, ready=now, cp=1, run="interactive") for i in range(20)]
    # The same level: with no history the native lane goes first, however long the rebuild waited ...
    assert names(pick(old + fresh, {"amd64": 1}, now, AGING)) == ["new0"]
    # ... and then the two runs alternate: the aged rebuild is not starved, nor does it take every slot.
    got = [c.run_id for c in order(old + fresh, now, AGING)]
    assert got[:6] == ["interactive", "rebuild"] * 3
    # A fresh rebuild (not aged) waits for all the interactive work.
    young = [cand(f"young{i}", Lane.REBUILD, ready=now, cp=100, run="young") for i in range(3)]
    assert [c.run_id for c in order(young + fresh, now, AGING)][:20] == ["interactive"] * 20


def test_within_a_run_the_critical_path_beats_age() -> None:
    now = 10 * HOUR
    leaves = [cand(f"leaf{i}", Lane.REBUILD, ready=0, cp=1) for i in range(5)]  # aged for hours
    critical = cand("critical", Lane.REBUILD, ready=now, cp=40)  # just released, on the critical path
    middle = cand("middle", Lane.REBUILD, ready=now - 1, cp=7)
    got = order([*leaves, critical, middle], now, AGING)
    assert names(got)[:2] == ["critical", "middle"]
    assert names(pick([*leaves, critical, middle], {"amd64": 1}, now, AGING)) == ["critical"]
    # Among equal critical paths the earliest ready goes first, then the name.
    tied = [
        cand("b", Lane.REBUILD, ready=5, cp=2),
        cand("a", Lane.REBUILD, ready=5, cp=2),
        cand("c", Lane.REBUILD, cp=2),
    ]
    assert names(order(tied, now, AGING)) == ["c", "a", "b"]


def test_pick_fills_only_free_slots_per_arch() -> None:
    cands = [
        cand("a", Lane.REBUILD, cp=3),
        cand("b", Lane.REBUILD, cp=2),
        cand("c", Lane.SECURITY, run="s"),
        cand("arm", Lane.SECURITY, arch="arm64", run="s"),
    ]
    chosen = pick(cands, {"amd64": 2, "arm64": 0}, now=0, aging=AGING)
    assert names(chosen) == ["c", "a"]
    assert pick(cands, {}, now=0, aging=AGING) == []
    assert names(pick(cands, {"arm64": 1}, now=0, aging=AGING)) == ["arm"]


def share_of_dispatches(slots: int, per_call_top: int | None, seed: int) -> tuple[Counter[str], int]:
    """Two rebuild runs of 400 independent builds each on a fake clock, ``slots`` slots: whenever slots free,
    ``pick`` fills them from each run's ready builds (all of them, or the ``per_call_top`` best by critical path,
    as an engine reading indexes supplies them), with ``last_dispatch`` kept as the engine keeps it. Run "long"
    has the longer critical paths everywhere: ranked by critical path alone it would take every slot.
    Returns the dispatches per run while both still had ready work, and their total."""
    rng = random.Random(seed)
    ready = {
        "long": [cand(f"L{i}", Lane.REBUILD, cp=rng.uniform(50, 100), run="long") for i in range(400)],
        "short": [cand(f"S{i}", Lane.REBUILD, cp=rng.uniform(1, 10), run="short") for i in range(400)],
    }
    last: dict[str, float] = {}
    running: list[tuple[float, str]] = []
    counts: Counter[str] = Counter()
    now, free = 0.0, slots
    while all(ready.values()):
        offered = []
        for lst in ready.values():
            best = sorted(lst, key=lambda c: -c.critical_path)
            offered += best[:per_call_top] if per_call_top else best
        for c in pick(offered, {"amd64": free}, now, AGING, last):
            ready[c.run_id].remove(c)
            counts[c.run_id] += 1
            last[c.run_id] = now
            heapq.heappush(running, (now + rng.uniform(30, 900), c.name))
        now, _ = heapq.heappop(running)  # the next build to finish frees one slot
        free = 1
    return counts, sum(counts.values())


@pytest.mark.parametrize(("slots", "top"), [(1, None), (4, None), (4, 4), (7, 7)])
def test_two_runs_of_one_lane_each_get_at_least_40_percent_of_dispatches(slots: int, top: int | None) -> None:
    counts, total = share_of_dispatches(slots, top, seed=slots)
    assert total > 300
    assert min(counts["long"], counts["short"]) >= 0.4 * total, counts


def test_pick_alternates_between_runs_within_one_call_and_leaves_the_history_alone() -> None:
    a = [cand(f"a{i}", Lane.REBUILD, cp=10, run="A") for i in range(4)]
    b = [cand(f"b{i}", Lane.REBUILD, cp=1, run="B") for i in range(4)]
    last = {"A": 5.0, "B": 9.0}
    got = pick(a + b, {"amd64": 4}, now=10, aging=AGING, last_dispatch=last)
    assert [c.run_id for c in got] == ["A", "B", "A", "B"]  # A was served longer ago: it goes first
    assert last == {"A": 5.0, "B": 9.0}
    assert [c.run_id for c in pick(a + b, {"amd64": 1}, now=10, aging=AGING, last_dispatch={"A": 9.5})] == ["B"]
    # A history stamped by a clock ahead of ``now`` still alternates.
    got = pick(a + b, {"amd64": 4}, now=10, aging=AGING, last_dispatch={"A": 12.0, "B": 11.0})
    assert [c.run_id for c in got] == ["B", "A", "B", "A"]


def test_the_order_is_total_and_ignores_the_input_order() -> None:
    rng = random.Random(7)
    for _ in range(50):
        now = rng.uniform(0, 10 * HOUR)
        cands = [
            Candidate(
                run_id=rng.choice("ABCD"),
                name=f"n{i}",
                lane=rng.choice(list(Lane)),
                arch=rng.choice(["amd64", "arm64"]),
                ready_since=rng.choice([0.0, now - 700, now]),
                critical_path=float(rng.randint(1, 3)),  # many ties
            )
            for i in range(40)
        ]
        last = {r: rng.uniform(0, now) for r in "ABC"}
        slots = {"amd64": rng.randint(0, 6), "arm64": rng.randint(0, 6)}
        want_pick = pick(cands, slots, now, AGING, last)
        want_order = order(cands, now, AGING, last)
        assert len(want_order) == len(cands) and set(want_order) == set(cands)
        assert sorted(cands, key=lambda c: priority(c, now, AGING)) == sorted(
            reversed(cands), key=lambda c: priority(c, now, AGING)
        )
        for _ in range(3):
            shuffled = rng.sample(cands, len(cands))
            assert pick(shuffled, slots, now, AGING, last) == want_pick
            assert order(shuffled, now, AGING, last) == want_order
        # Security first, whatever the history (invariant 1).
        lanes = [c.lane for c in want_order]
        assert lanes == sorted(lanes, key=lambda lane: lane is not Lane.SECURITY)

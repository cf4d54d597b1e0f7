from __future__ import annotations

import pytest

from farm.coordinator.policy import Candidate, Lane, effective_level, order, pick

pytestmark = pytest.mark.unit


def cand(
    name: str, lane: Lane, *, ready: float = 0.0, cp: float = 1.0, arch: str = "amd64", run: str = "r"
) -> Candidate:
    return Candidate(run, name, lane, arch, ready, cp)


def test_lanes_order_security_first() -> None:
    got = order([cand("r", Lane.REBUILD), cand("s", Lane.SECURITY), cand("i", Lane.INTERACTIVE)], now=0, aging=600)
    assert [c.name for c in got] == ["s", "i", "r"]


def test_critical_path_first_within_a_lane() -> None:
    got = order([cand("short", Lane.REBUILD, cp=1), cand("long", Lane.REBUILD, cp=5)], now=0, aging=600)
    assert [c.name for c in got] == ["long", "short"]


def test_aging_lifts_a_starved_rebuild_above_fresh_interactive_work() -> None:
    old = cand("old-rebuild", Lane.REBUILD, ready=0)
    fresh = cand("fresh-interactive", Lane.INTERACTIVE, ready=1000)
    assert [c.name for c in order([old, fresh], now=1000, aging=600)] == ["old-rebuild", "fresh-interactive"]
    assert [c.name for c in order([old, fresh], now=1000, aging=6000)] == ["fresh-interactive", "old-rebuild"]
    assert effective_level(old, now=600, aging=600) == pytest.approx(2.0)


def test_pick_fills_only_free_slots_per_arch() -> None:
    cands = [
        cand("a", Lane.REBUILD, cp=3),
        cand("b", Lane.REBUILD, cp=2),
        cand("c", Lane.SECURITY),
        cand("arm", Lane.SECURITY, arch="arm64"),
    ]
    chosen = pick(cands, {"amd64": 2, "arm64": 0}, now=0, aging=600)
    assert [c.name for c in chosen] == ["c", "a"]
    assert pick(cands, {}, now=0, aging=600) == []

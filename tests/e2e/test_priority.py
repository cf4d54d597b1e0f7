"""Security priority on a real fleet after aging has run its course: with ``MANGOS_FARM_AGING=2`` the waiting
builds of a full rebuild have aged at least three periods (uncapped, that would lift them above the security
lane) when a security build is queued; it still takes the next free slot, ahead of every waiting rebuild build.

The fleet has one slot, held by a rebuild build at its gate (:func:`tests.lib.recipes.gate_step`) until the
coordinator has the security build ready: which build takes the slot when the gate opens is then the policy's
choice alone, whatever the machine's load.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MakeRepo, write_recipe
from tests.e2e.fleet import Fleet
from tests.lib.recipes import gate_step

pytestmark = pytest.mark.e2e

AGING = 2  # seconds per aging period (MANGOS_FARM_AGING)
PERIODS = 3  # how many periods the rebuild builds have waited, at least, when the security build is queued
REBUILD = 4  # rebuild builds, on one slot


def recipes(make_repo: MakeRepo, root: Path, prefix: str, count: int, *, gated: bool) -> Path:
    repo, commit = make_repo(f"{prefix}-src", {"data": f"{prefix}\n"})
    directory = root / f"{prefix}-recipes"
    for i in range(count):
        name = f"{prefix}{i}"
        steps = [gate_step()] if gated else []
        steps.append(f'echo {name} > "$OUT/{name}"')
        write_recipe(directory, name, git_url=str(repo), commit=commit, steps=steps, outputs=[name])
    return directory


def aged(fleet: Fleet, run: str) -> dict[str, Any] | None:
    """The run's status once each of its waiting builds has been ready for ``PERIODS`` aging periods."""
    status = fleet.status(run)
    now = time.time()
    waiting = [b for b in status["builds"] if b["state"] == "waiting"]
    ok = len(waiting) == REBUILD - 1 and all(
        b["ready_since"] and now - b["ready_since"] >= PERIODS * AGING for b in waiting
    )
    return status if ok else None


def test_security_build_takes_the_next_slot_after_rebuild_builds_aged_three_periods(
    fleet: Fleet, make_repo: MakeRepo, tmp_path: Path
) -> None:
    fleet.kill(fleet.coordinator)  # the fixture's coordinator, restarted with a 2 s aging period
    fleet.coordinator = fleet.spawn(
        "coordinator", ["coordinator"], coordinator=True, env={"MANGOS_FARM_AGING": str(AGING)}
    )
    rebuild = recipes(make_repo, tmp_path, "r", REBUILD, gated=True)
    security = recipes(make_repo, tmp_path, "s", 1, gated=False)
    fleet.start_worker("w1", concurrency=1)
    fleet.wait_workers(1)

    big = fleet.cli("rebuild", str(rebuild), "--lane", "rebuild").stdout.strip()
    (holder,) = fleet.wait_for("a rebuild build held", fleet.gates.held)  # the one slot is taken; the rest wait
    fleet.wait_for(f"{PERIODS} aging periods", lambda: aged(fleet, big), timeout=60, interval=0.2)

    urgent = fleet.cli("rebuild", str(security), "--lane", "security").stdout.strip()
    fleet.wait_for("the security build ready", lambda: fleet.status(urgent)["builds"][0]["ready_since"], timeout=30)
    assert holder.open()  # the slot frees now

    def next_dispatch() -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        others = [b for b in fleet.status(big)["builds"] if b["recipe"] != holder.recipe and b["dispatched_at"]]
        sec = fleet.status(urgent)["builds"][0]
        return (sec, others) if sec["dispatched_at"] or others else None

    sec, others = fleet.wait_for("the slot's next build", next_dispatch, timeout=60)
    assert sec["dispatched_at"] and all(b["dispatched_at"] > sec["dispatched_at"] for b in others), (sec, others)
    sec_status = fleet.wait_run(urgent, timeout=60)
    sec = sec_status["builds"][0]
    assert sec_status["ok"] and sec["state"] == "built", sec_status

    queued = sec_status["created"]
    builds = {b["recipe"]: b for b in fleet.status(big)["builds"]}
    first = builds[holder.recipe]
    waiting_then = [b for b in builds.values() if b["recipe"] != holder.recipe]
    assert first["dispatched_at"] < queued and all(
        b["dispatched_at"] is None or b["dispatched_at"] > queued for b in waiting_then
    )
    # From the jobs' ready timestamps: every rebuild build still waiting had aged at least PERIODS periods.
    assert all(queued - b["ready_since"] >= PERIODS * AGING for b in waiting_then), waiting_then
    # The security build took the slot the first rebuild build freed, before any waiting rebuild build.
    assert sec["dispatched_at"] >= first["finished_at"]
    assert all(b["dispatched_at"] is None or b["dispatched_at"] > sec["dispatched_at"] for b in waiting_then), (
        sec,
        waiting_then,
    )
    assert all(b["started_at"] is None or b["started_at"] > sec["started_at"] for b in waiting_then), (
        sec,
        waiting_then,
    )

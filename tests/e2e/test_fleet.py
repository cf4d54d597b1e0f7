"""The distributed farm with real processes: redis-server, a moto S3 server over HTTP, a coordinator process and
Celery workers as subprocesses. Workers are killed, Redis is restarted, S3 goes silent, the coordinator dies:
the runs still complete, nothing is built twice that was finished, nothing is lost or corrupted.

Nothing here waits for time to pass: builds are held at gates (:func:`~tests.lib.recipes.gate_step`) for as long
as a test needs them in flight, and every wait is for an event (a held build, a state in ``status``, a metric).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MakeRepo, write_recipe
from tests.e2e.fleet import E2E_ENV, Fleet
from tests.lib.cli import CLI
from tests.lib.recipes import gate_step
from tests.store.conftest import MotoServer

pytestmark = pytest.mark.e2e

LEASE_TIMEOUT = float(E2E_ENV["MANGOS_FARM_LEASE_TIMEOUT"])


def make_set(
    make_repo: MakeRepo,
    root: Path,
    n: int,
    *,
    sleep: float = 0,
    prefix: str = "p",
    layers: int = 4,
    gated: bool | Collection[str] = False,
) -> Path:
    """``n`` recipes in ``layers`` dependency layers (each depends on one of the layer above); the ``gated`` ones
    (all with True) hold their build at a gate until the test opens it."""
    repo, commit = make_repo(f"{prefix}-src", {"data": f"{prefix}\n"})
    recipes = root / f"{prefix}-recipes"
    per_layer = max(1, n // layers)
    for i in range(n):
        name = f"{prefix}{i:02d}"
        layer = i // per_layer
        deps = (f"{prefix}{(i - per_layer):02d}",) if layer > 0 and i - per_layer >= 0 else ()
        steps = [gate_step()] if gated is True or (gated and name in gated) else []
        steps += [f"sleep {sleep}"] if sleep else []
        write_recipe(
            recipes,
            name,
            git_url=str(repo),
            commit=commit,
            steps=[*steps, f'echo {name} > "$OUT/{name}" && cat data >> "$OUT/{name}"'],
            outputs=[name],
            depends=deps,
        )
    return recipes


def jobs(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {b["recipe"]: b for b in status["builds"]}


def test_twenty_recipes_over_three_workers_land_in_s3_and_verify(
    fleet: Fleet, make_repo: MakeRepo, tmp_path: Path
) -> None:
    recipes = make_set(make_repo, tmp_path, 24, sleep=0.3, gated={"p00", "p01", "p02"})
    for name in ("w1", "w2", "w3"):
        fleet.start_worker(name)
    fleet.wait_workers(3)
    run = fleet.cli("rebuild", str(recipes)).stdout.strip()
    held = fleet.wait_held(3)  # three builds in flight at once, and each worker has one slot: one on each
    assert {h.worker for h in held} == {"w1", "w2", "w3"}, held
    with fleet.gates.opened():
        status = fleet.wait_run(run)
    assert status["ok"], status
    assert status["summary"]["built"] == 24
    workers_used = {b["worker"] for b in status["builds"]}
    assert workers_used == {"w1@fleet", "w2@fleet", "w3@fleet"}, workers_used
    assert {jobs(status)[h.recipe]["worker"] for h in held} == workers_used
    commit = status["builds"][0]["artifacts"] and fleet.json("plan", str(recipes))["builds"][0]["commit"]
    out = tmp_path / "fetched"
    fleet.cli("fetch", "--commit", commit, "-o", str(out))
    report = fleet.json("verify", str(out))
    assert len(report["ok"]) == 24 and report["failed"] == []
    assert all(fleet.builds_executed(f"p{i:02d}") == 1 for i in range(24))


def test_killed_worker_build_completes_elsewhere(fleet: Fleet, make_repo: MakeRepo, tmp_path: Path) -> None:
    recipes = make_set(make_repo, tmp_path, 4, layers=1, gated=True)
    fleet.start_worker("w1")
    fleet.start_worker("w2")
    fleet.wait_workers(2)
    run = fleet.cli("rebuild", str(recipes)).stdout.strip()
    victim = fleet.wait_held(1)[0]  # certainly mid-build until its gate opens, which it never will
    survivor = "w2" if victim.worker == "w1" else "w1"
    victim_job = fleet.wait_for(
        "the coordinator to see the held build running",
        lambda: (b := jobs(fleet.status(run))[victim.recipe])["state"] == "running" and b,
    )
    assert victim_job["worker"] == f"{victim.worker}@fleet" and victim_job["attempts"] == 1
    fleet.kill_worker(victim.worker)  # kill -9 of the whole worker, mid-build
    with fleet.gates.opened(worker=survivor):
        status = fleet.wait_run(run, timeout=180)
    assert status["ok"], status
    rebuilt = jobs(status)[victim.recipe]
    assert rebuilt["state"] == "built"
    assert rebuilt["worker"] == f"{survivor}@fleet"
    assert rebuilt["attempts"] == 2
    out = tmp_path / "out"
    commit = fleet.json("plan", str(recipes))["builds"][0]["commit"]
    listed = fleet.json("fetch", "--commit", commit)
    assert sorted(r["recipe"] for r in listed) == [f"p{i:02d}" for i in range(4)], "one record per build, no duplicate"
    fleet.cli("fetch", "--commit", commit, "-o", str(out))
    assert len(fleet.json("verify", str(out))["ok"]) == 4


def published_by(fleet: Fleet, commit: str, recipe: str, out: Path) -> set[str]:
    """The builders that signed the provenance of ``recipe``'s artifacts in the store (fetched and verified)."""
    fleet.cli("fetch", "--commit", commit, "--recipe", recipe, "-o", str(out))
    report = fleet.json("verify", str(out))
    assert report["ok"] and report["failed"] == [], report
    return {v["builder"] for v in report["ok"]}


def test_frozen_worker_late_result_is_discarded(fleet: Fleet, make_repo: MakeRepo, tmp_path: Path) -> None:
    """A worker frozen mid-build loses its lease and another wins the build; thawed, the frozen worker finishes
    and reports while the run is still going on: its result is discarded and counted, and both the job and the
    store keep the winner's build."""
    stale = "mangos_stale_results_total"
    recipes = make_set(make_repo, tmp_path, 2, layers=2, gated=True)  # p01 needs p00, and keeps the run active
    commit = fleet.json("plan", str(recipes))["builds"][0]["commit"]
    fleet.start_worker("w1", builder_id="w1@fleet")
    fleet.wait_workers(1)
    run = fleet.cli("rebuild", str(recipes)).stdout.strip()
    (late,) = fleet.wait_held(1, "p00", "w1")
    fleet.wait_for("p00 running on w1", lambda: jobs(fleet.status(run))["p00"]["worker"] == "w1@fleet")
    fleet.kill(fleet.workers["w1"], signal.SIGSTOP)  # frozen mid-build: no heartbeats, but not dead
    fleet.start_worker("w2", builder_id="w2@fleet")
    (winner,) = fleet.wait_held(1, "p00", "w2")  # w1's lease expired and p00 went out again, to w2
    winner.open()
    fleet.wait_held(1, "p01", "w2")  # so p00 is built, by w2, and published
    assert published_by(fleet, commit, "p00", tmp_path / "winner") == {"w2@fleet"}
    assert fleet.metric(stale) == 0

    fleet.kill(fleet.workers["w1"], signal.SIGCONT)  # thaws: finishes its stale build, reports late
    assert late.open()
    fleet.wait_for("w1 to finish its stale build", lambda: not late.src.exists())
    fleet.wait_for("the late result to be discarded and counted", lambda: fleet.metric(stale) == 1, timeout=60)
    status = fleet.status(run)
    assert status["status"] == "active", "the late result arrived while the run was under way"
    p00 = jobs(status)["p00"]
    assert (p00["state"], p00["worker"], p00["attempts"]) == ("built", "w2@fleet", 2), p00
    assert published_by(fleet, commit, "p00", tmp_path / "after") == {"w2@fleet"}, "the store keeps the winner's"

    assert len(fleet.gates.release("p01", "w2")) == 1
    status = fleet.wait_run(run)
    assert status["ok"], status
    assert jobs(status)["p00"]["worker"] == "w2@fleet"
    assert fleet.metric(stale) == 1


def test_redis_restart_and_s3_outage_mid_run(
    fleet: Fleet, make_repo: MakeRepo, tmp_path: Path, moto_server: MotoServer
) -> None:
    recipes = make_set(make_repo, tmp_path, 8, layers=2, gated=True)
    fleet.start_worker("w1")
    fleet.start_worker("w2")
    fleet.wait_workers(2)
    run = fleet.cli("rebuild", str(recipes)).stdout.strip()
    fleet.wait_held(2)  # both workers mid-build
    fleet.redis.restart()
    with fleet.gates.opened("p0[0-3]"):  # the first layer goes on, the second waits at its gates
        fleet.wait_for("the first layer after the Redis restart", lambda: fleet.status(run)["summary"]["built"] == 4)
    second = fleet.wait_held(2, "p0[4-7]")  # both workers mid-build again
    moto_server.process.send_signal(signal.SIGSTOP)
    try:
        assert all(h.open() for h in second)  # they finish their steps and publish into a store that is silent
        time.sleep(10)  # the outage: longer than a lease
        assert all(h.src.exists() for h in second), "the builds were still under way when the store came back"
    finally:
        moto_server.process.send_signal(signal.SIGCONT)
    with fleet.gates.opened():
        status = fleet.wait_run(run, timeout=240)
    assert status["ok"], status
    assert status["summary"]["built"] == 8
    out = tmp_path / "out"
    commit = fleet.json("plan", str(recipes))["builds"][0]["commit"]
    fleet.cli("fetch", "--commit", commit, "-o", str(out))
    assert len(fleet.json("verify", str(out))["ok"]) == 8


def test_killed_coordinator_resumes_without_rebuilding(fleet: Fleet, make_repo: MakeRepo, tmp_path: Path) -> None:
    recipes = make_set(make_repo, tmp_path, 10, layers=5, gated={"p04", "p05"})
    fleet.start_worker("w1", concurrency=2)
    fleet.wait_workers(1)
    run = fleet.cli("rebuild", str(recipes)).stdout.strip()
    held = fleet.wait_held(2)  # p04 and p05 in flight: the two layers above them are built
    assert sorted(h.recipe for h in held) == ["p04", "p05"]
    assert fleet.status(run)["summary"]["built"] == 4
    fleet.kill(fleet.coordinator)
    assert all(h.open() for h in held)
    fleet.wait_for("both builds to finish while no coordinator runs", lambda: not any(h.src.exists() for h in held))
    time.sleep(LEASE_TIMEOUT + 1)  # and their leases lapse too: what they built must count all the same
    fleet.start_coordinator()
    status = fleet.wait_run(run)
    assert status["ok"], status
    assert [(b["recipe"], b["attempts"], b["failures"]) for b in status["builds"] if b["failures"]] == []
    executed = {f"p{i:02d}": fleet.builds_executed(f"p{i:02d}") for i in range(10)}
    assert set(executed.values()) == {1}, executed


def test_security_build_is_not_delayed_by_a_full_rebuild(fleet: Fleet, make_repo: MakeRepo, tmp_path: Path) -> None:
    rebuild = make_set(make_repo, tmp_path, 6, layers=1, prefix="r", gated=True)
    security = make_set(make_repo, tmp_path, 1, layers=1, prefix="s")
    fleet.start_worker("w1")
    fleet.wait_workers(1)
    big = fleet.cli("rebuild", str(rebuild), "--lane", "rebuild").stdout.strip()
    (holding,) = fleet.wait_held(1)  # a rebuild build holds the only slot
    urgent = fleet.cli("rebuild", str(security), "--lane", "security").stdout.strip()
    assert jobs(fleet.status(urgent))["s00"]["state"] == "waiting"
    assert holding.open()
    with fleet.gates.opened():
        sec = fleet.wait_run(urgent)["builds"][0]
        done = fleet.wait_run(big)
    assert done["ok"] and sec["state"] == "built"
    # the security build went first once the slot was free: every other rebuild build started after it
    others = [b for b in done["builds"] if b["recipe"] != holding.recipe]
    assert len(others) == 5 and all(b["started_at"] > sec["started_at"] for b in others), (sec, others)
    assert jobs(done)[holding.recipe]["started_at"] < sec["started_at"]


def test_status_explains_waiting_and_wait_follows_to_the_end(fleet: Fleet, make_repo: MakeRepo, tmp_path: Path) -> None:
    recipes = make_set(make_repo, tmp_path, 4, layers=2, gated=True)
    run = fleet.cli("rebuild", str(recipes)).stdout.strip()
    why = fleet.wait_for("reasons", lambda: (s := jobs(fleet.status(run))) and s["p00"]["why"] and s)
    assert why["p00"]["why"] == "no worker for arch amd64"
    assert why["p02"]["why"] == "waiting on p00"
    text = fleet.cli("status", run).stdout
    assert "no worker for arch amd64" in text and "oldest waiting" in text
    fleet.start_worker("w1")
    with fleet.gates.opened():
        assert fleet.wait_run(run)["ok"]
    # A second run, followed to its end: each build is held until the follower has reported it building.
    out, err = tmp_path / "wait.out", tmp_path / "wait.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [CLI, "rebuild", str(recipes), "--wait", "--force"],
            cwd=fleet.root, env=fleet.env(fleet.client_home), stdout=stdout, stderr=stderr,
        )  # fmt: skip
    try:

        def follow() -> bool:
            reported = err.read_text()
            for held in fleet.gates.held():
                if f"building {held.recipe} " in reported:
                    held.open()
            return proc.poll() is not None

        fleet.wait_for("rebuild --wait to return", follow, timeout=180, interval=0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, (out.read_text(), err.read_text())
    assert "4 built" in out.read_text()
    assert all(f"building p{i:02d} " in err.read_text() for i in range(4))
    workers = fleet.json("workers")
    assert [w["name"] for w in workers] == ["w1@fleet"] and workers[0]["arch"] == "amd64"


def test_failure_attribution_and_retry(fleet: Fleet, make_repo: MakeRepo, tmp_path: Path) -> None:
    repo, commit = make_repo("f", {"data": "x\n"})
    recipes = tmp_path / "attrib"
    for i in range(6):
        write_recipe(recipes, f"ok{i}", git_url=str(repo), commit=commit, steps=['cp data "$OUT/d"'], outputs=["d"])
    write_recipe(recipes, "flaky", git_url=str(repo), commit=commit, steps=["exit 1"], outputs=["d"])
    write_recipe(recipes, "after", git_url=str(repo), commit=commit, steps=['cp data "$OUT/d"'], outputs=["d"],
                 depends=("flaky",))  # fmt: skip
    # a worker with no builder key fails every build it takes: it must be taken out of rotation
    fleet.start_worker("w-good")
    fleet.wait_workers(1)
    broken = fleet.root / "w-bad"
    fleet.start_worker("w-bad")
    for f in ("builder.key", "builder.pub"):
        (broken / "keys" / f).unlink()
    fleet.wait_workers(2)
    run = fleet.cli("rebuild", str(recipes)).stdout.strip()
    status = fleet.wait_run(run, timeout=240)
    b = jobs(status)
    assert all(b[f"ok{i}"]["state"] == "built" for i in range(6)), [
        (x["recipe"], x["state"], x["why"], x["failures"]) for x in b.values()
    ]
    assert b["flaky"]["state"] == "failed" and b["after"]["state"] == "blocked"
    assert "step 1 failed" in b["flaky"]["why"]
    assert {f["worker"] for f in b["flaky"]["failures"] if f["code"] == "E-BUILD-FAILED"} >= {"w-good@fleet"}
    bad = [w for w in fleet.json("workers") if w["name"] == "w-bad@fleet"]
    assert bad and bad[0]["disabled"], [(x["recipe"], x["failures"]) for x in b.values()]
    assert "OUT OF ROTATION" in fleet.cli("workers").stdout
    # retry: the build runs again (and fails again, deterministically), its dependent is re-evaluated
    fleet.cli("retry", f"{run}/flaky")
    again = fleet.wait_run(run, timeout=120)
    assert jobs(again)["flaky"]["state"] == "failed" and jobs(again)["flaky"]["attempts"] >= 1


def test_cancel_stops_a_run(fleet: Fleet, make_repo: MakeRepo, tmp_path: Path) -> None:
    recipes = make_set(make_repo, tmp_path, 6, layers=3, gated=True)
    fleet.start_worker("w1")
    fleet.wait_workers(1)
    run = fleet.cli("rebuild", str(recipes)).stdout.strip()
    (held,) = fleet.wait_held(1)
    fleet.wait_for("the held build running", lambda: fleet.status(run)["summary"]["running"] == 1)
    assert "cancelled" in fleet.cli("cancel", run).stdout
    status = fleet.status(run)
    assert status["status"] == "cancelled"
    assert status["summary"]["cancelled"] == 6, status["summary"]  # nothing had finished: all, the running one too
    assert held.open()
    fleet.wait_for("the held build to end on its worker", lambda: not held.src.exists())
    # Then another run on the same single slot, to its end: the coordinator has had every chance to dispatch more.
    after = fleet.cli("rebuild", str(make_set(make_repo, tmp_path, 1, layers=1, prefix="s"))).stdout.strip()
    assert fleet.wait_run(after)["ok"]
    status = fleet.status(run)
    assert status["status"] == "cancelled"
    states = {b["recipe"]: b["state"] for b in status["builds"]}
    assert states.pop(held.recipe) in ("cancelled", "built") and set(states.values()) == {"cancelled"}, states
    assert fleet.gates.held() == []
    assert [fleet.builds_executed(f"p{i:02d}") for i in range(6)].count(1) == 1, "only the held build ran"

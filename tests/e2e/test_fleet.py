"""The distributed farm with real processes: redis-server, a moto S3 server over HTTP, a coordinator process and
Celery workers as subprocesses. Workers are killed, Redis is restarted, S3 goes silent, the coordinator dies:
the runs still complete, nothing is built twice that was finished, nothing is lost or corrupted."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MakeRepo, write_recipe
from tests.e2e.fleet import Fleet
from tests.store.conftest import MotoServer

pytestmark = pytest.mark.e2e


def make_set(make_repo: MakeRepo, root: Path, n: int, *, sleep: float, prefix: str = "p", layers: int = 4) -> Path:
    """``n`` recipes in ``layers`` dependency layers (each depends on one of the layer above)."""
    repo, commit = make_repo(f"{prefix}-src", {"data": f"{prefix}\n"})
    recipes = root / f"{prefix}-recipes"
    per_layer = max(1, n // layers)
    for i in range(n):
        name = f"{prefix}{i:02d}"
        layer = i // per_layer
        deps = (f"{prefix}{(i - per_layer):02d}",) if layer > 0 and i - per_layer >= 0 else ()
        write_recipe(
            recipes,
            name,
            git_url=str(repo),
            commit=commit,
            steps=[f"sleep {sleep}", f'echo {name} > "$OUT/{name}" && cat data >> "$OUT/{name}"'],
            outputs=[name],
            depends=deps,
        )
    return recipes


def jobs(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {b["recipe"]: b for b in status["builds"]}


def test_twenty_recipes_over_three_workers_land_in_s3_and_verify(
    fleet: Fleet, make_repo: MakeRepo, tmp_path: Path
) -> None:
    recipes = make_set(make_repo, tmp_path, 24, sleep=0.3)
    for name in ("w1", "w2", "w3"):
        fleet.start_worker(name)
    fleet.wait_workers(3)
    run = fleet.cli("rebuild", str(recipes)).stdout.strip()
    status = fleet.wait_run(run)
    assert status["ok"], status
    assert status["summary"]["built"] == 24
    workers_used = {b["worker"] for b in status["builds"]}
    assert len(workers_used) == 3, workers_used
    commit = status["builds"][0]["artifacts"] and fleet.json("plan", str(recipes))["builds"][0]["commit"]
    out = tmp_path / "fetched"
    fleet.cli("fetch", "--commit", commit, "-o", str(out))
    report = fleet.json("verify", str(out))
    assert len(report["ok"]) == 24 and report["failed"] == []
    assert all(fleet.builds_executed(f"p{i:02d}") == 1 for i in range(24))


def test_killed_worker_build_completes_elsewhere(fleet: Fleet, make_repo: MakeRepo, tmp_path: Path) -> None:
    recipes = make_set(make_repo, tmp_path, 4, sleep=6, layers=1)
    fleet.start_worker("w1")
    fleet.start_worker("w2")
    fleet.wait_workers(2)
    run = fleet.cli("rebuild", str(recipes)).stdout.strip()
    victim_job = fleet.wait_for(
        "a running build", lambda: next((b for b in fleet.status(run)["builds"] if b["state"] == "running"), None)
    )
    victim = victim_job["worker"].split("@")[0]
    fleet.kill_worker(victim)  # kill -9 of the whole worker, mid-build
    status = fleet.wait_run(run, timeout=180)
    assert status["ok"], status
    rebuilt = jobs(status)[victim_job["recipe"]]
    assert rebuilt["state"] == "built"
    assert rebuilt["worker"] != victim_job["worker"]
    assert rebuilt["attempts"] == 2
    out = tmp_path / "out"
    commit = fleet.json("plan", str(recipes))["builds"][0]["commit"]
    listed = fleet.json("fetch", "--commit", commit)
    assert sorted(r["recipe"] for r in listed) == [f"p{i:02d}" for i in range(4)], "one record per build, no duplicate"
    fleet.cli("fetch", "--commit", commit, "-o", str(out))
    assert len(fleet.json("verify", str(out))["ok"]) == 4


def test_frozen_worker_late_result_is_discarded(fleet: Fleet, make_repo: MakeRepo, tmp_path: Path) -> None:
    recipes = make_set(make_repo, tmp_path, 1, sleep=6, layers=1)
    fleet.start_worker("w1")
    fleet.wait_workers(1)
    run = fleet.cli("rebuild", str(recipes)).stdout.strip()
    fleet.wait_for("the build to start", lambda: fleet.status(run)["builds"][0]["state"] == "running")
    fleet.kill(fleet.workers["w1"], signal.SIGSTOP)  # frozen: no heartbeats, but not dead
    fleet.start_worker("w2")
    status = fleet.wait_run(run, timeout=180)
    fleet.kill(fleet.workers["w1"], signal.SIGCONT)  # thaws, finishes its stale build, reports late
    assert status["ok"]
    assert jobs(status)["p00"]["worker"] == "w2@fleet"
    time.sleep(8)
    after = fleet.status(run)
    assert jobs(after)["p00"]["worker"] == "w2@fleet", "the stale worker's late result was not discarded"


def test_redis_restart_and_s3_outage_mid_run(
    fleet: Fleet, make_repo: MakeRepo, tmp_path: Path, moto_server: MotoServer
) -> None:
    recipes = make_set(make_repo, tmp_path, 8, sleep=2, layers=2)
    fleet.start_worker("w1")
    fleet.start_worker("w2")
    fleet.wait_workers(2)
    run = fleet.cli("rebuild", str(recipes)).stdout.strip()
    fleet.wait_for("a build to start", lambda: fleet.status(run)["summary"]["running"] > 0)
    fleet.redis.restart()
    fleet.wait_for("progress after the Redis restart", lambda: fleet.status(run)["summary"]["built"] >= 2, 120)
    moto_server.process.send_signal(signal.SIGSTOP)
    time.sleep(10)
    moto_server.process.send_signal(signal.SIGCONT)
    status = fleet.wait_run(run, timeout=240)
    assert status["ok"], status
    assert status["summary"]["built"] == 8
    out = tmp_path / "out"
    commit = fleet.json("plan", str(recipes))["builds"][0]["commit"]
    fleet.cli("fetch", "--commit", commit, "-o", str(out))
    assert len(fleet.json("verify", str(out))["ok"]) == 8


def test_killed_coordinator_resumes_without_rebuilding(fleet: Fleet, make_repo: MakeRepo, tmp_path: Path) -> None:
    recipes = make_set(make_repo, tmp_path, 10, sleep=1, layers=5)
    fleet.start_worker("w1", concurrency=2)
    fleet.wait_workers(1)
    run = fleet.cli("rebuild", str(recipes)).stdout.strip()
    fleet.wait_for("some builds done", lambda: fleet.status(run)["summary"]["built"] >= 3)
    fleet.kill(fleet.coordinator)
    time.sleep(3)
    fleet.start_coordinator()
    status = fleet.wait_run(run)
    assert status["ok"], status
    executed = {f"p{i:02d}": fleet.builds_executed(f"p{i:02d}") for i in range(10)}
    assert set(executed.values()) == {1}, executed


def test_security_build_is_not_delayed_by_a_full_rebuild(fleet: Fleet, make_repo: MakeRepo, tmp_path: Path) -> None:
    rebuild = make_set(make_repo, tmp_path, 6, sleep=2, layers=1, prefix="r")
    security = make_set(make_repo, tmp_path, 1, sleep=0.1, layers=1, prefix="s")
    fleet.start_worker("w1")
    fleet.wait_workers(1)
    big = fleet.cli("rebuild", str(rebuild), "--lane", "rebuild").stdout.strip()
    fleet.wait_for("the rebuild to start", lambda: fleet.status(big)["summary"]["running"] == 1)
    submitted = time.time()
    urgent = fleet.cli("rebuild", str(security), "--lane", "security").stdout.strip()
    fleet.wait_run(urgent)
    done = fleet.wait_run(big)
    assert done["ok"]
    # the security build started after at most one more rebuild build (the one holding the slot) finished
    raw = fleet.json("status", big)
    started_after = [b for b in raw["builds"] if b.get("started_at", 0) and b["started_at"] > submitted]
    sec = fleet.json("status", urgent)["builds"][0]
    assert sec["state"] == "built"
    before_sec = [b for b in started_after if b["started_at"] < sec["started_at"]]
    assert len(before_sec) <= 1, (before_sec, sec)


def test_status_explains_waiting_and_wait_follows_to_the_end(fleet: Fleet, make_repo: MakeRepo, tmp_path: Path) -> None:
    recipes = make_set(make_repo, tmp_path, 4, sleep=1.0, layers=2)
    run = fleet.cli("rebuild", str(recipes)).stdout.strip()
    why = fleet.wait_for("reasons", lambda: (s := jobs(fleet.status(run))) and s["p00"]["why"] and s)
    assert why["p00"]["why"] == "no worker for arch amd64"
    assert why["p02"]["why"] == "waiting on p00"
    text = fleet.cli("status", run).stdout
    assert "no worker for arch amd64" in text and "oldest waiting" in text
    fleet.start_worker("w1")
    proc = fleet.cli("rebuild", str(recipes), "--wait", "--force")  # a second run, followed to its end
    assert "4 built" in proc.stdout and "building" in proc.stderr
    assert fleet.wait_run(run)["ok"]
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
    recipes = make_set(make_repo, tmp_path, 6, sleep=3, layers=3)
    fleet.start_worker("w1")
    fleet.wait_workers(1)
    run = fleet.cli("rebuild", str(recipes)).stdout.strip()
    fleet.wait_for("a build to start", lambda: fleet.status(run)["summary"]["running"] > 0)
    assert "cancelled" in fleet.cli("cancel", run).stdout
    status = fleet.status(run)
    assert status["status"] == "cancelled"
    assert status["summary"]["cancelled"] >= 4
    time.sleep(5)
    assert fleet.status(run)["summary"]["built"] <= 1

"""`recheck --all --vary` on a real fleet (redis-server, moto's S3, a coordinator and two Celery worker processes):
each recheck is a signed task run by a worker other than the one that built the published record; the results come
back to the CLI's own home. A forged (unsigned) recheck task is refused and audited by the worker."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from typing import Any

import pytest

from farm.crossval.dispatch import RECHECK_TASK, recheck_queue
from farm.crossval.results import load_results
from farm.errors import E
from farm.settings import Settings
from farm.trust import audit
from tests.conftest import require
from tests.e2e.conftest import REPO
from tests.e2e.fleet import Fleet

pytestmark = pytest.mark.e2e

WORKERS = ("w1@fleet", "w2@fleet")


def test_recheck_vary_runs_on_another_worker_and_refuses_forged_tasks(fleet: Fleet) -> None:
    for tool in ("bwrap", "git", "faketime", "disorderfs"):
        require(tool)
    root = fleet.root
    shutil.copytree(REPO / "recipes", root / "recipes", ignore=shutil.ignore_patterns("debian"))
    shutil.copytree(REPO / "demo" / "src", root / "demo" / "src")
    shutil.copy(REPO / "demo" / "make_sources.py", root / "demo" / "make_sources.py")
    subprocess.run([sys.executable, "demo/make_sources.py", "demo/git"], cwd=root, check=True, capture_output=True)
    fleet.start_worker("w1")
    fleet.start_worker("w2")
    fleet.wait_workers(2)
    run = fleet.cli("rebuild", "recipes").stdout.strip()
    status = fleet.wait_run(run)
    assert status["ok"], status
    built_by = {b["recipe"]: b["worker"] for b in status["builds"]}
    assert set(built_by) == {"libgreet", "greet", "welcome"} and set(built_by.values()) <= set(WORKERS)

    proc = fleet.cli("recheck", "--all", "--vary", "--dir", "recipes", "--json")
    out = json.loads(proc.stdout)
    results = {r["recipe"]: r for r in out["results"]}
    assert [r["recipe"] for r in out["results"]] == ["libgreet", "greet", "welcome"]
    for name, r in results.items():
        assert r["reproducible"] and not r["error"] and r["varied"] == r["outputs"], r
        assert r["original"] == built_by[name]
        assert r["worker"] in WORKERS and r["worker"] != built_by[name], (name, r["worker"], built_by[name])
        assert f"reproducible, on {r['worker']}" in proc.stderr  # the progress lines, while waiting
    assert out["reproducibility"]["all"] == {"checked": 3, "reproducible": 3, "failed": 0, "rate": 1.0}
    assert out["variation"]["clock_shift_days"] >= 366
    # Saved in the CLI's home (not the workers'): `status` and the metric read them.
    saved = {r.recipe: r for r in load_results(Settings(home=fleet.client_home))}
    assert {n: r.worker for n, r in saved.items()} == {n: r["worker"] for n, r in results.items()}
    for name in ("w1", "w2"):
        assert not (root / name / "crossval" / "recheck").exists() or not list(
            (root / name / "crossval" / "recheck").glob("*.json")
        )
    # The other worker dies (kill -9, its registration lingers for a lease timeout): the recheck it may have been
    # sent is sent again, and the original builder, now alone, does it and says so.
    original = built_by["greet"]
    fleet.kill_worker(next(w for w in ("w1", "w2") if f"{w}@fleet" != original))
    text = fleet.cli("recheck", "--vary", "--dir", "recipes", "greet").stdout
    assert f"rechecked on {original}, built by {original} (the same worker: no other was alive)" in text, text
    assert "1 of 1 reproducible" in text

    # A message put on a worker's recheck queue by anyone but the coordinator: refused before anything is built.
    from workers.app import make_app

    app = make_app(Settings(home=root / "forger", broker=fleet.redis.url))
    payload: dict[str, Any] = {"request": {"build_key": "f" * 64, "recipe": {"name": "greet"}}, "original": "x"}
    forged = app.send_task(RECHECK_TASK, args=[payload], queue=recheck_queue(original))
    answer = forged.get(timeout=60)
    assert answer["error"]["code"] == E.TASK_UNSIGNED and answer["worker"] == original
    events = [json.loads(line) for line in audit.audit_path(root / original.split("@")[0]).read_text().splitlines()]
    refused = [e for e in events if e["event"] == audit.FORGED_TASK and forged.id in e["what"]]
    assert refused and "recipe greet" in refused[0]["what"] and refused[0]["who"] == original

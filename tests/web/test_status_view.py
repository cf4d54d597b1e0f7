"""A run's status as ``mangos-farm status`` and ``/api/runs/<id>`` show it (:mod:`farm.coordinator.views`): the
header (counts, done of total, critical path remaining, ETA), the default order, the filters and pages, and the
errors for bad values. On a small run written into a real SQLite state through :class:`RunStore`, at a fixed time.

The run (plan order a, e, f, g, h, i, b, c, d)::

    a (built, 100 s) ← b (running 30 s) ← c ← d        e (built, 50 s)
    f (ready 500 s)    i (ready 100 s)    g (failed) ← h (blocked)

and an earlier run in which c took 400 s.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from farm.cli.main import main
from farm.coordinator.kv import SqliteKV
from farm.coordinator.leases import LeaseBoard, WorkerInfo
from farm.coordinator.policy import Lane
from farm.coordinator.runs import RunStore, State
from farm.coordinator.views import ORDER, StatusQuery, run_rows, run_status
from farm.errors import E, FarmError
from farm.store.local import LocalStore
from farm.web import WebApp
from tests.web.bigrun import finished, plan_of

NOW = float(int(time.time()))  # the run's times are set from it; the command and the API read the clock
DEPS = {"a": [], "e": [], "f": [], "g": [], "h": ["g"], "i": [], "b": ["a"], "c": ["b"], "d": ["c"]}


@dataclass
class Small:
    kv: SqliteKV
    runs: RunStore
    run_id: str
    home: Path

    def status(self, **query: Any) -> dict[str, Any]:
        options = {k: query.pop(k) for k in ("slots", "aging") if k in query}
        return run_status(self.runs, self.run_id, StatusQuery.parse(**query), now=NOW, **options)


@pytest.fixture
def small(tmp_path: Path) -> Small:
    home = tmp_path / "home"
    kv = SqliteKV(home / "state.sqlite")
    runs = RunStore(kv)
    earlier, old = runs.new(plan_of({"c": []}), lane=Lane.REBUILD, arch="amd64", force=False)
    earlier.created, earlier.status = NOW - 90_000, "done"
    finished(old["c"], NOW - 86_400, 400.0)
    runs.insert(earlier, old)

    run, jobs = runs.new(plan_of(DEPS), lane=Lane.REBUILD, arch="amd64", force=False)
    run.created = NOW - 3600
    finished(jobs["a"], NOW - 1000, 100.0)
    finished(jobs["e"], NOW - 900, 50.0)
    b = jobs["b"]
    b.key, b.state, b.worker, b.started_at, b.why = "1" * 64, State.RUNNING, "w1@x", NOW - 30, "building"
    for name, waited in (("f", 500), ("i", 100)):
        job = jobs[name]
        job.key, job.ready_since, job.store_checked = "2" * 64, NOW - waited, 0
    g = jobs["g"]
    g.key, g.state, g.why, g.finished_at = "3" * 64, State.FAILED, "build failed", NOW - 700
    g.error = {"code": E.BUILD_FAILED, "message": "exit 2", "hint": "see the log"}
    jobs["h"].state, jobs["h"].why = State.BLOCKED, "blocked by failed dependency g"
    runs.insert(run, jobs)
    return Small(kv, runs, run.id, home)


def names(status: dict[str, Any]) -> list[str]:
    return [b["recipe"] for b in status["builds"]]


def test_header_counts_done_critical_path_and_eta(small: Small) -> None:
    status = small.status(slots={"amd64": 2})
    assert {k: v for k, v in status["summary"].items() if v} == {
        "built": 2,
        "running": 1,
        "waiting": 4,
        "failed": 1,
        "blocked": 1,
    }
    assert (status["done"], status["total"]) == (4, 9)
    assert status["oldest_waiting_seconds"] == 500.0
    # b has 75 - 30 s left (the median of a and e), c took 400 s before, d 75 s: b → c → d
    assert status["critical_path"] == {"builds": 3, "seconds": 520.0, "first": "b"}
    eta = status["eta"]
    assert (eta["median_seconds"], eta["estimated_by_name"], eta["slots"]) == (75.0, 1, 2)
    assert eta["seconds"] == 520.0 and eta["at"] == NOW + 520  # the chain is longer than (45+400+75+75+75)/2
    assert small.status(slots={"amd64": 1})["eta"]["seconds"] == 670.0  # now the work is: one slot
    no_worker = small.status(slots={"arm64": 4})["eta"]
    assert no_worker["seconds"] is None and no_worker["why"] == "no worker for arch amd64"


def test_no_duration_known_no_eta_but_a_critical_path_in_builds(small: Small) -> None:
    jobs = small.runs.jobs(small.run_id)
    for job in jobs.values():
        job.started_at = None  # no finished build has a duration now, and c's earlier one is out of reach:
    small.runs.save_jobs(small.run_id, list(jobs.values()))
    for run in small.runs.all_runs():
        if run.id != small.run_id:
            run.created = NOW  # not earlier any more
            small.runs.save(run)
    status = small.status(slots={"amd64": 2})
    assert status["critical_path"] == {"builds": 3, "seconds": None, "first": "b"}
    assert status["eta"]["seconds"] is None and "no duration" in status["eta"]["why"]


def test_default_order_failures_then_oldest_waiting_then_plan_order(small: Small) -> None:
    status = small.status()
    assert names(status) == ["g", "f", "i", "a", "e", "h", "b", "c", "d"]
    assert status["order"] == ORDER and status["matched"] == 9 and status["pages"] == 1
    assert [b["lane"] for b in status["builds"]] == ["rebuild"] * 9


def test_filters(small: Small) -> None:
    assert names(small.status(state="waiting")) == ["f", "i", "c", "d"]
    assert names(small.status(state="failed,blocked")) == ["g", "h"]
    assert names(small.status(name="[fi]")) == ["f", "i"]
    assert names(small.status(name="?", state="built")) == ["a", "e"]
    assert names(small.status(name="nothing*")) == []
    # a build that has waited an aging period competes in the lane above: f (500 s), not i (100 s)
    aged = small.status(lane="interactive", aging=300)
    assert names(aged) == ["f"] and aged["builds"][0]["lane"] == "interactive"
    assert "f" not in names(small.status(lane="rebuild", aging=300))
    assert names(small.status(lane="security", aging=1)) == []  # aging never reaches security
    assert small.status(state="failed")["summary"]["waiting"] == 4  # the header always counts every build


def test_pages(small: Small) -> None:
    first, second, last = (small.status(limit="2", page=str(p)) for p in (1, 2, 5))
    assert names(first) == ["g", "f"] and names(second) == ["i", "a"] and names(last) == ["d"]
    assert (second["page"], second["pages"], second["matched"]) == (2, 5, 9)
    assert names(small.status(limit=2, page=6)) == []  # past the last page: empty, not an error
    assert len(small.status(limit="0")["builds"]) == 9
    assert small.status(limit="2")["query"] == {"state": None, "lane": None, "name": None, "limit": 2, "page": 1}


@pytest.mark.parametrize(
    ("field", "value"),
    [("state", "nope"), ("state", "failed,nope"), ("state", ","), ("lane", "fast"), ("page", "0"), ("page", "x"),
     ("limit", "-1"), ("limit", "ten")],
)  # fmt: skip
def test_bad_values_are_errors_with_an_id_and_hint(field: str, value: str) -> None:
    with pytest.raises(FarmError) as caught:
        kwargs: dict[str, Any] = {field: value}
        StatusQuery.parse(**kwargs)
    assert caught.value.code == E.STATUS_QUERY and caught.value.field == field and caught.value.hint


def test_runs_list_counts_without_listing(small: Small) -> None:
    latest, earlier = run_rows(small.runs)
    assert latest["run"] == small.run_id and (latest["total"], latest["done"]) == (9, 4)
    assert latest["summary"]["failed"] == 1 and latest["ok"] is False
    assert earlier["ok"] is True and earlier["summary"]["built"] == 1


# -- the command and the API -------------------------------------------------------------------------------------
@pytest.fixture
def farm_env(small: Small, monkeypatch: pytest.MonkeyPatch) -> Small:
    for key in [k for k in os.environ if k.startswith("MANGOS_FARM_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("MANGOS_FARM_HOME", str(small.home))
    # The command and the API read the clock: hold it at the run's NOW, so that how long a build has waited (and so
    # its aged lane) does not depend on how long after collection the test runs.
    monkeypatch.setattr(time, "time", lambda: NOW)
    LeaseBoard(small.kv, 30).announce(WorkerInfo("w1@x", "amd64", 2, "x", 1, NOW, seen=NOW), ttl=600)
    return small


def test_status_command_text_and_json(farm_env: Small, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", farm_env.run_id, "--state", "waiting", "--limit", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"run {farm_env.run_id} (active, lane rebuild, arch amd64): 4 waiting, 1 running")
    assert lines[1].startswith("done 4 of 9; critical path 3 builds") and "(from b)" in lines[1]
    assert "ETA ~" in lines[1] and "on 2 slots" in lines[1]
    assert lines[2].startswith("builds 1-3 of 4 (state waiting), page 1 of 2; failures first")
    assert [ln.split()[1] for ln in lines[3:6]] == ["f", "i", "c"]
    assert lines[6] == "more: --page 2 (or --limit 0 for all)"

    assert main(["status", farm_env.run_id, "--json"]) == 0  # --json: every build unless limited
    data = json.loads(capsys.readouterr().out)
    assert len(data["builds"]) == 9 and data["eta"]["slots"] == 2 and data["query"]["limit"] is None
    assert main(["status", "--name", "[fi]", "--json", "--limit", "1", "--page", "2"]) == 0  # the latest run
    assert [b["recipe"] for b in json.loads(capsys.readouterr().out)["builds"]] == ["i"]


@pytest.mark.parametrize("flags", [["--state", "done"], ["--lane", "x"], ["--page", "0"], ["--limit", "-3"]])
def test_status_command_refuses_bad_values(
    farm_env: Small, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    assert main(["status", farm_env.run_id, *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error[E-STATUS-QUERY]: field '") and "\n  hint: " in err


def test_api_takes_the_same_query(farm_env: Small) -> None:
    app = WebApp(farm_env.kv, LocalStore(farm_env.home / "store"), aging=300)
    reply = app.handle("GET", f"/api/runs/{farm_env.run_id}?state=waiting&name=%5Bfi%5D&limit=1&page=2")
    assert reply.status == 200
    data = json.loads(reply.body)
    assert [b["recipe"] for b in data["builds"]] == ["i"] and (data["matched"], data["pages"]) == (2, 2)
    assert data["eta"]["slots"] == 2 and data["critical_path"]["first"] == "b"
    aged = json.loads(app.handle("GET", f"/api/runs/{farm_env.run_id}?lane=interactive").body)
    assert [b["recipe"] for b in aged["builds"]] == ["f"]
    for bad in ("state=nope", "lane=fast", "page=0", "limit=x"):
        refused = app.handle("GET", f"/api/runs/{farm_env.run_id}?{bad}")
        error = json.loads(refused.body)["error"]
        assert (refused.status, error["code"]) == (400, E.STATUS_QUERY) and error["hint"], bad

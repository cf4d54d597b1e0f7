"""``recipes update``'s logic without an archive: which recipes moved and in what order they are re-imported, the
changelog entries between two versions, what a rebuild of the moves takes and why, the run reason in the
coordinator state (old state still reads), and the recipes-behind-the-archive record and gauges."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from farm.archive.update import (
    Outcome,
    Reimport,
    Status,
    Target,
    build_reasons,
    changelog_between,
    find_moves,
    read_recipes,
    rebuild_set,
    run_reason,
    update_recipes,
)
from farm.coordinator.kv import SqliteKV
from farm.coordinator.policy import Lane
from farm.coordinator.runs import Job, Run, RunStore, State
from farm.coordinator.updates import LagBoard
from farm.errors import E, FarmError
from farm.store.local import LocalStore
from farm.web import WebApp

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
CHANGELOG = """\
x (1.0-1+deb12u2) bookworm-security; urgency=high

  * Fix CVE-2099-2.

 -- Security Team <team@security.debian.org>  Mon, 03 Jun 2024 00:00:00 +0000

x (1.0-1+deb12u1) bookworm-security; urgency=medium

  * Fix CVE-2099-1.
  * Second change.

 -- Security Team <team@security.debian.org>  Sun, 02 Jun 2024 00:00:00 +0000

x (1.0-1) unstable; urgency=low

  * Initial release.

 -- Maintainer <m@example.org>  Sat, 01 Jun 2024 00:00:00 +0000
"""


def debian_recipe(directory: Path, name: str, version: str, depends: Sequence[str] = ()) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.toml"
    deps = ", ".join(json.dumps(d) for d in depends)
    path.write_text(
        f'name = "{name}"\nversion = "{version}"\nbuild-depends = [{deps}]\n\n[source]\ndsc = "{name}={version}"\n'
        f'commit = "{"0" * 40}"\n\n[build]\nkind = "debian"\nenvironment = "bookworm-amd64"\narchive = []\n'
    )
    return path


def git_recipe(directory: Path, name: str, depends: Sequence[str] = ()) -> Path:
    path = directory / f"{name}.toml"
    deps = ", ".join(json.dumps(d) for d in depends)
    path.write_text(
        f'name = "{name}"\nversion = "1.0"\nbuild-depends = [{deps}]\noutputs = ["{name}"]\n\n[source]\n'
        f'git = "/nowhere"\ncommit = "{"1" * 40}"\n\n[build]\nsteps = ["true"]\n'
    )
    return path


# -- comparison and order ----------------------------------------------------------------------------------------
def test_moves_are_the_recipes_older_than_the_archive_security_first(tmp_path: Path) -> None:
    debian_recipe(tmp_path, "zlib", "1:1.2.13.dfsg-1")
    debian_recipe(tmp_path, "aaa", "2.0-1")
    debian_recipe(tmp_path, "perl", "5.36.0-7+deb12u3")
    debian_recipe(tmp_path, "same", "1.0-1")
    debian_recipe(tmp_path, "binnmu", "1.0-1")
    debian_recipe(tmp_path, "ahead", "3.0-1")
    git_recipe(tmp_path, "tool")
    targets = {
        "zlib": Target("1:1.2.13.dfsg-1+deb12u1", "Debian bookworm-security", True),
        "aaa": Target("2.0-2", "Debian bookworm"),
        "perl": Target("5.36.0-7+deb12u4", "Debian bookworm-security", True),
        "same": Target("1.0-1", "Debian bookworm"),
        "binnmu": Target("1.0-1", "Debian bookworm"),  # a +b1 binary's source version is the recipe's
        "ahead": Target("2.9-1", "Debian bookworm"),
        "tool": Target("9", "Debian bookworm"),  # not a debian recipe: never a move
    }
    moves = find_moves(read_recipes(tmp_path), targets)
    assert [(m.name, m.kind) for m in moves] == [("perl", "security"), ("zlib", "security"), ("aaa", "update")]
    assert moves[1].reason == "security update zlib 1:1.2.13.dfsg-1 → 1:1.2.13.dfsg-1+deb12u1"
    assert moves[2].reason == "update aaa 2.0-1 → 2.0-2"


def test_changelog_between_two_versions() -> None:
    entries = changelog_between(CHANGELOG, "1.0-1", "1.0-1+deb12u2")
    assert [e["version"] for e in entries] == ["1.0-1+deb12u2", "1.0-1+deb12u1"]
    assert entries[1]["changes"] == ["  * Fix CVE-2099-1.", "  * Second change."]
    assert entries[0]["distributions"] == "bookworm-security" and entries[0]["urgency"] == "high"
    assert [e["version"] for e in changelog_between(CHANGELOG, "1.0-1", "1.0-1+deb12u1")] == ["1.0-1+deb12u1"]
    assert changelog_between(CHANGELOG, "1.0-1+deb12u2", "1.0-1+deb12u2") == []


def test_update_reimports_security_first_and_reports_each_recipe(tmp_path: Path) -> None:
    for name, version in [("x", "1.0-1"), ("y", "2.0-1"), ("z", "3.0-1"), ("w", "4.0-1"), ("ok", "1.0-1")]:
        debian_recipe(tmp_path, name, version)
    debian_recipe(tmp_path, "gone", "1.0-1")
    targets = {
        "x": Target("1.0-1+deb12u1", "Debian bookworm-security", True),
        "z": Target("3.0-1+deb12u1", "Debian bookworm-security", True),
        "y": Target("2.0-2", "Debian bookworm"),
        "w": Target("4.0-2", "Debian bookworm"),
        "ok": Target("1.0-1", "Debian bookworm"),
    }
    batches: list[list[str]] = []

    def importer(names: Sequence[str]) -> list[Reimport]:
        batches.append(list(names))
        if "y" in names:
            raise FarmError(E.STORE_UNREACHABLE, "store down")  # the whole second batch fails
        unavailable = FarmError(E.SOURCE_UNAVAILABLE, "404 from the security pool")
        return [Reimport("x", "1.0-1+deb12u1", changelog=CHANGELOG), Reimport("z", "3.0-1+deb12u1", unavailable, True)]

    outcomes = {o.name: o for o in update_recipes(tmp_path, importer, targets=targets)}
    assert batches == [["x", "z"], ["w", "y"]]
    assert list(outcomes) == ["x", "z", "w", "y", "gone", "ok"]
    assert outcomes["x"].status is Status.UPDATED and outcomes["x"].kind == "security"
    assert [e["version"] for e in outcomes["x"].changelog] == ["1.0-1+deb12u1"]
    assert outcomes["z"].status is Status.UNAVAILABLE and outcomes["z"].archive == "3.0-1+deb12u1"
    assert outcomes["y"].status is Status.FAILED and outcomes["y"].error is not None
    assert outcomes["y"].error["code"] == E.STORE_UNREACHABLE
    assert outcomes["ok"].status is Status.UP_TO_DATE and not outcomes["ok"].behind
    assert outcomes["gone"].status is Status.FAILED  # the archive no longer has the source
    data = outcomes["x"].to_json()
    assert (data["status"], data["from"], data["to"], data["kind"]) == ("updated", "1.0-1", "1.0-1+deb12u1", "security")
    assert data["reason"] == "security update x 1.0-1 → 1.0-1+deb12u1"


def test_rebuild_set_is_the_reverse_closure_with_reasons(tmp_path: Path) -> None:
    debian_recipe(tmp_path, "x", "1.0-1")
    debian_recipe(tmp_path, "u", "1.0-1")
    git_recipe(tmp_path, "y", ["x"])
    git_recipe(tmp_path, "z", ["y", "u"])
    git_recipe(tmp_path, "other", [])
    recipes = read_recipes(tmp_path)
    assert rebuild_set(recipes, ["x"]) == {"x": ["x"], "y": ["x"], "z": ["x"]}
    outcomes = [
        Outcome("u", tmp_path / "u.toml", Status.UPDATED, "1.0-1", "1.0-2", "Debian bookworm"),
        Outcome("x", tmp_path / "x.toml", Status.UPDATED, "1.0-1", "1.0-1+deb12u1", "Debian bookworm-security", True),
    ]
    reasons = build_reasons(outcomes, recipes)
    assert reasons == {
        "u": "update u 1.0-1 → 1.0-2",
        "x": "security update x 1.0-1 → 1.0-1+deb12u1",
        "y": "depends on x: security update x 1.0-1 → 1.0-1+deb12u1",
        "z": "depends on u: update u 1.0-1 → 1.0-2; depends on x: security update x 1.0-1 → 1.0-1+deb12u1",
    }
    assert run_reason(outcomes) == "security update x 1.0-1 → 1.0-1+deb12u1; update u 1.0-1 → 1.0-2"


# -- the run reason in the coordinator state ------------------------------------------------------------------------
def _run(reason: str = "") -> Run:
    return Run("r1", Lane.SECURITY, "amd64", "e" * 64, False, 1.0, ["x"], reason=reason)


def _job(reason: str = "") -> Job:
    return Job("x", "1.0-1", {}, "x.toml", "/x", "0" * 40, "t" * 40, [], 1.0, reason=reason)


def test_an_empty_reason_is_not_persisted_and_a_reason_round_trips() -> None:
    assert b"reason" not in _run().to_bytes() and b"reason" not in _job().to_bytes()
    run, job = _run("security update x 1 → 2"), _job("depends on x")
    assert Run.from_bytes(run.to_bytes()) == run and Job.from_bytes(job.to_bytes()) == job


def test_previous_version_state_reads_without_a_reason(tmp_path: Path) -> None:
    shutil.copy(REPO / "tests" / "fixtures" / "v1" / "state.sqlite", tmp_path / "state.sqlite")
    kv = SqliteKV(tmp_path / "state.sqlite")
    try:
        runs = RunStore(kv)
        [run] = runs.all_runs()
        assert run.reason == ""
        raw = kv.get(f"mangos:run:{run.id}")
        assert raw is not None and Run.from_bytes(raw).to_bytes() == raw
        app = WebApp(kv, LocalStore(tmp_path / "store"))
        status = json.loads(app.handle("GET", f"/api/runs/{run.id}").body)
        assert status["reason"] == "" and all(b["reason"] == "" for b in status["builds"])
    finally:
        kv.close()


def test_status_and_the_web_api_say_why_a_run_and_a_build_were_queued(tmp_path: Path) -> None:
    kv = SqliteKV(tmp_path / "state.sqlite")
    try:
        kv.set("mangos:run:r1", _run("security update x 1.0-1 → 1.0-1+deb12u1").to_bytes())
        kv.hset("mangos:run:r1:jobs", {"x": _job("security update x 1.0-1 → 1.0-1+deb12u1").to_bytes()})
        app = WebApp(kv, LocalStore(tmp_path / "store"))
        [row] = json.loads(app.handle("GET", "/api/runs").body)
        assert row["reason"] == "security update x 1.0-1 → 1.0-1+deb12u1"
        status = json.loads(app.handle("GET", "/api/runs/r1").body)
        assert status["builds"][0]["reason"] == "security update x 1.0-1 → 1.0-1+deb12u1"
        assert b"queued because" in app.handle("GET", "/static/app.js").body
    finally:
        kv.close()


# -- recipes behind the archive ---------------------------------------------------------------------------------
def gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def outcome(name: str, current: str, archive: str, status: Status, security: bool = True) -> Outcome:
    return Outcome(name, Path(f"{name}.toml"), status, current, archive, "Debian bookworm-security", security)


def test_lag_board_keeps_the_first_sighting_until_a_build_catches_up(tmp_path: Path) -> None:
    kv = SqliteKV(tmp_path / "state.sqlite")
    try:
        board = LagBoard(kv)
        board.export(100.0)
        assert gauge("mangos_recipes_behind_archive", kind="security") == 0
        assert gauge("mangos_security_update_waiting_seconds") == 0
        waiting = board.record(
            [
                outcome("x", "1.0-1", "1.0-1+deb12u1", Status.UPDATED),
                outcome("z", "3.0-1", "3.0-1+deb12u1", Status.UNAVAILABLE),
                outcome("y", "2.0-1", "2.0-2", Status.UPDATED, security=False),
                outcome("ok", "1.0-1", "1.0-1", Status.UP_TO_DATE),
            ],
            now=1000.0,
        )
        assert [(lag.name, lag.kind, lag.status) for lag in waiting] == [
            ("x", "security", "updated"),
            ("y", "update", "updated"),
            ("z", "security", "unavailable"),
        ]
        # A day later: x is up to date on disk (imported, not built yet), z moved on again: both keep their age.
        waiting = board.record(
            [
                outcome("x", "1.0-1+deb12u1", "1.0-1+deb12u1", Status.UP_TO_DATE),
                outcome("z", "3.0-1", "3.0-1+deb12u2", Status.UNAVAILABLE),
            ],
            now=90000.0,
        )
        lags = board.entries()
        assert lags["x"].first_seen == 1000.0 and lags["x"].current == "1.0-1"
        assert (lags["z"].first_seen, lags["z"].target) == (1000.0, "3.0-1+deb12u2")
        board.export(91000.0)
        assert gauge("mangos_recipes_behind_archive", kind="security") == 2
        assert gauge("mangos_recipes_behind_archive", kind="update") == 1
        assert gauge("mangos_security_update_waiting_seconds") == 90000.0

        built = _job()
        built.version, built.state = "1.0-1+deb12u1", State.BUILT
        old = Job("z", "3.0-1", {}, "z.toml", "/z", "0" * 40, "t" * 40, [], 1.0, state=State.CACHED)
        board.refresh([built, old], 92000.0)
        lags = board.entries()
        assert lags["x"].built_at == 92000.0 and lags["z"].built_at is None  # an old build does not count
        assert gauge("mangos_recipes_behind_archive", kind="security") == 1
        # The next update drops the built entry of a recipe that is up to date.
        board.record([outcome("x", "1.0-1+deb12u1", "1.0-1+deb12u1", Status.UP_TO_DATE)], now=93000.0)
        assert "x" not in board.entries()
    finally:
        kv.close()


def test_a_binnmu_lag_is_caught_up_only_by_a_build_of_that_binnmu(tmp_path: Path) -> None:
    """The archive's bash binaries are 5.2.15-2+b13: a build of 5.2.15-2 without the binNMU is still behind, and the
    coordinator, which reads jobs without their recipe, knows the binNMU from the job's own static part."""
    kv = SqliteKV(tmp_path / "state.sqlite")
    try:
        board = LagBoard(kv)
        behind = Outcome(
            "bash", Path("bash.toml"), Status.UPDATED, "5.2.15-2", "5.2.15-2", "Debian bookworm", False,
            archive_binnmu=13,
        )  # fmt: skip
        assert behind.behind
        [lag] = board.record([behind], now=1000.0)
        assert lag.target == "5.2.15-2+b13"
        plain = Job("bash", "5.2.15-2", {}, "bash.toml", "/b", "0" * 40, "t" * 40, [], 1.0, state=State.BUILT)
        board.refresh([plain], 2000.0)
        assert board.entries()["bash"].built_at is None, "5.2.15-2 is older than 5.2.15-2+b13"
        rebuilt = Job("bash", "5.2.15-2", {}, "bash.toml", "/b", "0" * 40, "t" * 40, [], 1.0, binnmu=13)
        assert b"binnmu" not in plain.static_bytes() and b'"binnmu": 13' in rebuilt.static_bytes()
        read = Job.from_parts(json.loads(rebuilt.static_bytes()), b'{"name": "bash", "state": "cached"}')
        assert (read.binnmu, Job.from_parts(json.loads(plain.static_bytes()), None).binnmu) == (13, 0)
        board.refresh([read], 3000.0)
        assert board.entries()["bash"].built_at == 3000.0
    finally:
        kv.close()

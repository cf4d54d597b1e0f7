"""``recipes update --queue`` on a real fleet: a security update of a Debian recipe overtakes a running full rebuild.

The fleet is real (redis-server, a ``mangos-farm coordinator`` process, one ``mangos-farm worker`` with one slot;
its store is the pinned environment's, a local directory). The archive is a local two-suite Debian archive served
to the real apt (:mod:`tests.lib.debarchive`): ``xx 1.0-1`` in bookworm, ``xx 1.0-1+deb12u1`` in
bookworm-security (the issue's ``x``: a recipe's source name has two characters at least). The recipes: ``xx``
imported at 1.0-1 (a real Debian build in the pinned environment) and ``y``, a git recipe that build-depends on
it. While a rebuild-lane run of git builds holds the slot (its build held at a gate until the security run is
queued), ``recipes update --queue`` re-imports xx at the security version and queues xx and y on the security
lane; both start before every rebuild-lane build that had not yet been dispatched when the security run was queued.
"""

from __future__ import annotations

import os
import shutil
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from farm.sources.dsc import import_dsc
from tests.conftest import MakeRepo, require, write_recipe
from tests.e2e.fleet import E2E_ENV
from tests.integration.conftest import Made, made_env  # noqa: F401 - the session's pinned environment
from tests.lib.debarchive import LocalArchive
from tests.lib.fleet import Fleet
from tests.lib.recipes import gate_step
from tests.lib.redis_server import RedisServer

pytestmark = pytest.mark.e2e

SECURITY = "1.0-1+deb12u1"
REASON = f"security update xx 1.0-1 → {SECURITY}"


@pytest.fixture
def local_fleet(tmp_path: Path, redis_server: RedisServer, made_env: Made) -> Iterator[Fleet]:  # noqa: F811
    """A fleet on a clean Redis whose store holds the pinned environment; the client home has its record.

    The store is this test's own: the session's environment blobs linked in, none of the records other builds of
    the session published (a record of xx signed by another fleet's key would be refused here)."""
    redis_server.fresh()
    store = tmp_path / "store"
    shutil.copytree(Path(made_env.store.url) / "blobs", store / "blobs", copy_function=os.link)
    fleet = Fleet(tmp_path / "fleet", redis_server, str(store), E2E_ENV)
    (fleet.client_home / "envs").mkdir(parents=True, exist_ok=True)
    shutil.copy(made_env.records_dir / "bookworm-amd64.json", fleet.client_home / "envs")
    fleet.start_coordinator()
    fleet.start_worker("w1", concurrency=1)
    yield fleet
    fleet.close()


def builds(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {b["recipe"]: b for b in status["builds"]}


def gauges(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith(("mangos_recipes_behind_archive", "mangos_security_update_waiting_seconds")):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


def test_security_update_is_reimported_and_overtakes_a_running_rebuild(
    local_fleet: Fleet, make_repo: MakeRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for tool in ("apt-get", "dpkg-source", "dpkg-scansources", "dpkg-scanpackages", "bwrap", "git"):
        require(tool)
    fleet = local_fleet
    archive = LocalArchive(tmp_path / "archive")
    archive.add(name="xx", version="1.0-1", suite="bookworm", binaries=("xx",))
    archive.add(name="xx", version=SECURITY, suite="bookworm-security", binaries=("xx",), changes="Fix CVE-2099-1.")
    archive.publish()
    fleet.base_env["APT_CONFIG"] = str(archive.config)  # the CLI's apt (import, update) sees this archive only
    # The worker imports a dsc source from the archive into its own cache, reading the host's apt lists (not
    # APT_CONFIG's); the import is deterministic, so it is made here for it, from this archive, before any build.
    archive.use(monkeypatch)
    for version in ("1.0-1", SECURITY):
        import_dsc("xx", version, fleet.root / "w1" / "cache", lists_dir=archive.lists_dir)

    recipes = tmp_path / "recipes"
    fleet.cli("recipes", "import", "xx=1.0-1", "--dir", str(recipes))  # pinned below the archive on purpose
    repo, commit = make_repo("y-src", {"data": "y\n"})
    write_recipe(recipes, "y", git_url=str(repo), commit=commit, steps=['echo y > "$OUT/y"'], depends=["xx"])
    slow = tmp_path / "slow"
    slow_repo, slow_commit = make_repo("slow-src", {"data": "r\n"})
    for i in range(5):
        write_recipe(
            slow, f"r{i}", git_url=str(slow_repo), commit=slow_commit, steps=[gate_step(), f'echo {i} > "$OUT/r{i}"']
        )

    fleet.wait_workers(1)
    big = fleet.cli("rebuild", str(slow), "--lane", "rebuild").stdout.strip()
    (holding,) = fleet.wait_held(1)  # the rebuild-lane run holds the slot until the security run is queued

    report = fleet.json("recipes", "update", "--dir", str(recipes), "--queue")
    by_name = {r["recipe"]: r for r in report["recipes"]}
    assert by_name["xx"]["status"] == "updated" and by_name["xx"]["to"] == SECURITY, report
    assert by_name["xx"]["kind"] == "security" and by_name["xx"]["reason"] == REASON
    assert [e["version"] for e in by_name["xx"]["changelog"]] == [SECURITY]
    assert "Fix CVE-2099-1." in "\n".join(by_name["xx"]["changelog"][0]["changes"])
    assert tomllib.loads((recipes / "xx.toml").read_text())["version"] == SECURITY
    queued = report["queued"]
    assert queued["lane"] == "security" and queued["builds"] == ["xx", "y"] and queued["reason"] == REASON
    assert [lag["name"] for lag in report["waiting"]] == ["xx"]

    security = fleet.status(queued["run"])
    assert security["lane"] == "security" and security["reason"] == REASON
    assert builds(security)["y"]["reason"] == f"depends on xx: {REASON}"
    text = fleet.cli("status", queued["run"]).stdout
    assert f"queued because: {REASON}" in text
    port = fleet.metrics_ports["coordinator"]
    assert fleet.wait_for(
        "the security update counted", lambda: gauges(port).get('mangos_recipes_behind_archive{kind="security"}')
    )

    assert builds(fleet.status(big))[holding.recipe]["state"] == "running"
    assert holding.open()
    with fleet.gates.opened():
        done = fleet.wait_run(queued["run"], timeout=900)
        rebuild = fleet.wait_run(big, timeout=900)
    failed = {b["recipe"]: (b.get("error"), b.get("log_tail")) for b in done["builds"] if b["state"] != "built"}
    assert done["ok"], (failed, fleet.logs())
    assert {n: (b["state"], b["version"]) for n, b in builds(done).items()} == {
        "xx": ("built", SECURITY),
        "y": ("built", "1.0"),
    }
    assert rebuild["ok"], rebuild
    # Every rebuild-lane build not yet dispatched when the security run was queued started after both security builds.
    waiting_then = [b for b in rebuild["builds"] if b["dispatched_at"] > security["created"]]
    assert len(waiting_then) == 4, rebuild  # all but the one holding the slot
    last_security = max(b["started_at"] for b in done["builds"])
    assert all(b["started_at"] > last_security for b in waiting_then), (done["builds"], waiting_then)
    held = [b for b in rebuild["builds"] if b["dispatched_at"] <= security["created"]]
    assert len([b for b in held if b["finished_at"] > security["created"]]) <= 1  # only the one holding the slot

    # The coordinator saw xx built at the security version: nothing is behind the archive any more.
    assert fleet.wait_for(
        "the gauges to clear",
        lambda: (
            (g := gauges(port)).get('mangos_recipes_behind_archive{kind="security"}') == 0
            and g.get("mangos_security_update_waiting_seconds") == 0
        ),
    )

"""Capability routing on a real fleet: a build needing a capability no live worker has waits, and says so; a worker
with it starts and the build runs there. A worker may only narrow what its start-up probes found."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from farm.build.probes import KVM_TIMEOUT, probe_kvm
from farm.errors import E
from tests.conftest import MakeRepo, write_recipe
from tests.e2e.fleet import Fleet
from tests.lib.cli import run_cli

pytestmark = pytest.mark.e2e


def start_worker(fleet: Fleet, name: str, capability: str) -> None:
    argv = ["worker", "--concurrency", "1", "--name", f"{name}@fleet", "--capability", capability]
    fleet.workers[name] = fleet.spawn(name, argv)


def builds(fleet: Fleet, run: str) -> dict[str, dict[str, Any]]:
    return {b["recipe"]: b for b in fleet.status(run)["builds"]}


def test_a_build_waits_for_a_worker_with_its_capability(fleet: Fleet, make_repo: MakeRepo, tmp_path: Path) -> None:
    repo, commit = make_repo("src", {"data": "x\n"})
    recipes = tmp_path / "recipes"
    for name in ("plain", "needy"):
        write_recipe(recipes, name, git_url=str(repo), commit=commit, steps=[f'echo {name} > "$OUT/{name}"'])
    needy = recipes / "needy.toml"
    needy.write_text('needs = ["debian"]\n' + needy.read_text())

    start_worker(fleet, "plain", "none")
    (plain,) = fleet.wait_workers(1)
    assert plain["capabilities"] == [], plain
    run = fleet.cli("rebuild", str(recipes), "--lane", "rebuild").stdout.strip()

    def waiting() -> dict[str, dict[str, Any]] | None:
        found = builds(fleet, run)
        return found if found["plain"]["state"] == "built" and found["needy"]["why"] else None

    found = fleet.wait_for("the plain build done, the needy one waiting", waiting, timeout=120)
    assert found["needy"]["state"] == "waiting" and found["needy"]["why"] == "no worker with capability debian"
    assert "no worker with capability debian" in fleet.cli("status", run).stdout

    start_worker(fleet, "deb", "debian")
    status = fleet.wait_run(run, timeout=120)
    assert status["ok"], status
    done = {b["recipe"]: b for b in status["builds"]}
    assert done["needy"]["state"] == "built" and done["needy"]["worker"] == "deb@fleet", done
    assert done["plain"]["worker"] == "plain@fleet", done
    caps = {w["name"]: w["capabilities"] for w in fleet.json("workers")}
    assert caps == {"plain@fleet": [], "deb@fleet": ["debian"]}, caps


def test_a_worker_cannot_claim_a_capability_its_probe_refused(tmp_path: Path) -> None:
    """Here /dev/kvm may exist and still not run the farm's machine: the probe says so quickly, and claiming
    ``kvm`` then exits 2 with the error id and QEMU's reason."""
    started = time.monotonic()
    found = probe_kvm()
    assert time.monotonic() - started < KVM_TIMEOUT
    if found.ok:
        pytest.skip("KVM runs the farm's machine here: nothing to refuse")
    env = {"MANGOS_FARM_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}
    done = run_cli(["worker", "--capability", "kvm"], cwd=tmp_path, env=env, check=False, timeout=60)
    assert done.returncode == 2, done
    assert f"error[{E.WORKER_CAPABILITY}]" in done.stderr and found.reason in done.stderr, done.stderr

"""A real Prometheus server (Debian's package) scrapes the coordinator and two workers during a run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MakeRepo, write_recipe
from tests.e2e.fleet import Fleet
from tests.lib.prometheus import Prometheus
from tests.lib.recipes import gate_step

pytestmark = pytest.mark.e2e


@pytest.fixture
def prometheus(fleet: Fleet, tmp_path: Path) -> Iterator[Prometheus]:
    fleet.start_worker("w1")
    fleet.start_worker("w2")
    prom = Prometheus(tmp_path / "prom", dict(fleet.metrics_ports, coordinator=fleet.metrics_ports["coordinator"]))
    yield prom
    prom.close()


def test_prometheus_sees_builds_queue_draining_and_workers(
    fleet: Fleet, prometheus: Prometheus, make_repo: MakeRepo, tmp_path: Path
) -> None:
    fleet.wait_workers(2)
    repo, commit = make_repo("m", {"data": "x\n"})
    recipes = tmp_path / "recipes"
    for i in range(8):
        name = f"m{i}"
        write_recipe(recipes, name, git_url=str(repo), commit=commit, steps=[gate_step(), f'echo {i} > "$OUT/{name}"'],
                     outputs=[name])  # fmt: skip
    fleet.wait_for("every target up", lambda: prometheus.value("sum(up)") == 3, timeout=60)
    run = fleet.cli("rebuild", str(recipes)).stdout.strip()
    held = fleet.wait_held(2)  # two builds in flight, one on each worker (one slot each); six waiting
    assert {h.worker for h in held} == {"w1", "w2"}
    fleet.wait_for("the queue seen deep", lambda: prometheus.value("sum(mangos_queue_depth)") == 6, 60)
    with fleet.gates.opened():
        assert fleet.wait_run(run)["ok"]

    def scraped(expr: str, value: float) -> bool:
        return prometheus.value(expr) == value

    # scrapes after the last build: every build counted, the queue empty, each worker's builds there
    fleet.wait_for("all builds counted", lambda: scraped('sum(mangos_builds_finished_total{result="built"})', 8), 30)
    fleet.wait_for("the queue drained", lambda: scraped("sum(mangos_queue_depth)", 0), 30)
    # worker endpoints aggregate their prefork children (multiprocess mode): every build's phases are there
    phase = 'sum(mangos_build_phase_seconds_count{phase="build",job!="coordinator"})'
    fleet.wait_for("the workers' phases scraped", lambda: scraped(phase, 8), 30)
    assert prometheus.value('sum(mangos_builds_started_total{lane="rebuild",arch="amd64"})') == 8
    # the queue drained: it was deep during the run and is empty now
    assert (prometheus.value("max_over_time(sum(mangos_queue_depth)[5m:1s])") or 0) >= 6
    assert prometheus.value('mangos_workers_alive{arch="amd64"}') == 2
    assert prometheus.value("count(mangos_worker_heartbeat_age_seconds < 10)") == 2
    assert prometheus.value('sum(mangos_build_phase_seconds_count{phase="queue_wait",job="coordinator"})') == 8
    assert (prometheus.value('sum(mangos_store_bytes_total{direction="up"})') or 0) > 0
    per_worker = prometheus.query('sum by (job) (mangos_build_phase_seconds_count{phase="build"})')
    assert {r["metric"]["job"] for r in per_worker} == {"w1", "w2"}

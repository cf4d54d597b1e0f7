"""The shipped alert rules on a real fleet: Debian's Prometheus scrapes a coordinator and workers (each
``mangos-farm`` processes on Redis) every second and evaluates deploy/prometheus/alerts.yml, rendered with
``for: 5s``. The workers are killed; NoWorkerForArch and WorkerHeartbeatStale fire, asked through Prometheus's
HTTP API. On the way, every counter the alerts and the dashboard lean on is seen emitted, scraped from the real
endpoints: builds over a ``--concurrency 2`` worker's two pool children summed, lease expiries, re-dispatches,
retries, signature failures (a worker signing with a key nobody trusts), cache hits (its records, found again).
Last, every series the rules and their promtool unit tests read is one the exporters really emit, with the same
label names.

Nothing waits for time to pass: builds are held at gates, and each step waits for what Prometheus or the fleet
says.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from farm.metrics import METRICS
from tests.conftest import MakeRepo, write_recipe
from tests.deploy.common import PROMETHEUS, load_yaml
from tests.deploy.promql import metric_names
from tests.lib.fleet import Fleet, local_fleet
from tests.lib.prometheus import Prometheus, render_rules
from tests.lib.recipes import gate_step
from tests.lib.redis_server import RedisServer
from tests.lib.tools import free_port, require

pytestmark = pytest.mark.e2e

LEASE_TIMEOUT = 4  # seconds: a killed worker's registration and leases lapse this long after its last beat
# A live worker's heartbeat age reaches the coordinator's look interval (up to 10 s when idle) plus the announce
# interval; the shipped 120 s cannot pass within the test, so the test's rule says 20 s.
STALE = ("> 120", "> 20")
ALERT_DEADLINE = 60.0  # seconds from the kill until both alerts fire
# Counters with labels that only an event the test does not cause brings into being (a store failing).
NOT_CAUSED = {"mangos_store_errors_total"}

log = logging.getLogger(__name__)


@pytest.fixture
def fleet(tmp_path: Path, redis_server: RedisServer) -> Iterator[Fleet]:
    require("bwrap")
    env = {"MANGOS_FARM_LEASE_TIMEOUT": str(LEASE_TIMEOUT), "MANGOS_FARM_REQUEUE_AFTER": "60"}
    with local_fleet(tmp_path, redis_server, env) as fleet:
        yield fleet


@pytest.fixture
def prometheus(fleet: Fleet, tmp_path: Path) -> Iterator[Prometheus]:
    for name in ("coordinator", "w1", "rogue"):
        fleet.metrics_ports[name] = free_port()
    rules = render_rules(PROMETHEUS / "alerts.yml", hold="5s", thresholds={"WorkerHeartbeatStale": STALE})
    prom = Prometheus(tmp_path / "prometheus", dict(fleet.metrics_ports), rules)
    yield prom
    prom.close()


def gated_recipes(make_repo: MakeRepo, root: Path, names: list[str]) -> Path:
    repo, commit = make_repo("alerts-src", {"data": "x\n"})
    for name in names:
        write_recipe(root, name, git_url=str(repo), commit=commit, steps=[gate_step(), f'echo {name} > "$OUT/{name}"'])
    return root


def test_alerts_fire_when_the_workers_die_and_every_counter_is_emitted(
    fleet: Fleet, prometheus: Prometheus, make_repo: MakeRepo, tmp_path: Path
) -> None:
    started = time.monotonic()
    recipes = gated_recipes(make_repo, tmp_path / "recipes", [f"g{i}" for i in range(6)])
    fleet.start_coordinator()
    fleet.start_worker("w1", concurrency=2)
    (worker,) = fleet.wait_workers(1)
    arch = worker["arch"]
    fleet.wait_for("Prometheus scraping", lambda: prometheus.value('sum(up{job=~"coordinator|w1"})') == 2, 60)

    # Two builds held at once on w1: one in each of its two pool children. Both go on; the worker's endpoint
    # sums the children's samples.
    run = fleet.cli("rebuild", str(recipes)).stdout.strip()
    first = fleet.wait_held(2, worker="w1")
    for held in first:
        held.open()
    fleet.wait_held(2, worker="w1")  # the next two, held; two more ready and waiting for a slot
    built = 'sum(mangos_build_phase_seconds_count{job="w1", phase="build"})'
    fleet.wait_for("both children's builds scraped from w1", lambda: prometheus.value(built) == 2, 30)
    children = {p.name for p in (fleet.root / "w1" / "metrics" / "w1_fleet").glob("histogram_*.db")}
    assert len(children) >= 2, f"the two builds ran in two pool children: {children}"
    waiting = f'sum(mangos_builds_ready_waiting{{arch="{arch}", class="default"}})'
    fleet.wait_for("2 builds ready and waiting", lambda: prometheus.value(waiting) == 2, 30)
    assert prometheus.firing("NoWorkerForArch") == [] and prometheus.firing("WorkerHeartbeatStale") == []

    # The whole fleet dies. Its two running builds lose their leases; every build left waits for a worker.
    fleet.kill_worker("w1")
    killed = time.monotonic()
    no_worker = fleet.wait_for(
        "NoWorkerForArch firing", lambda: prometheus.firing("NoWorkerForArch"), ALERT_DEADLINE, interval=0.5
    )
    stale = fleet.wait_for(
        "WorkerHeartbeatStale firing",
        lambda: prometheus.firing("WorkerHeartbeatStale"),
        max(1.0, ALERT_DEADLINE - (time.monotonic() - killed)),
        interval=0.5,
    )
    fired_after = time.monotonic() - killed
    assert [a["arch"] for a in no_worker] == [arch]
    assert [(a["worker"], a["arch"]) for a in stale] == [("w1@fleet", arch)]
    assert prometheus.value(f'mangos_workers_alive{{arch="{arch}"}}') == 0
    assert (prometheus.value('mangos_worker_heartbeat_age_seconds{worker="w1@fleet"}') or 0) > 20
    assert prometheus.value(f'sum(mangos_lease_expiries_total{{arch="{arch}"}})') == 2
    # The lost builds are ready again, or dispatched again at once to the dead worker whose registration had
    # not expired yet (they wait there until the requeue timeout): four builds, none running.
    left = f'sum(mangos_builds_ready_waiting{{arch="{arch}"}}) + sum(mangos_builds_in_flight{{arch="{arch}"}})'
    fleet.wait_for("the two lost builds back", lambda: prometheus.value(left) == 4, 30)
    assert prometheus.value(f'sum(mangos_workers_busy{{arch="{arch}"}})') == 0

    # A worker whose builder key nobody trusts: its results are refused (signature failures) and retried; the
    # retry finds the refused record in the store (a cache hit, refused again), and the two lost builds are
    # dispatched again.
    other = tmp_path / "other"
    fleet.cli("keys", "generate", home=other)
    fleet.spawn("rogue", ["worker", "--concurrency", "1", "--name", "rogue@fleet"])
    shutil.copy(other / "keys" / "builder.key", fleet.root / "rogue" / "keys" / "builder.key")  # before any build
    emitted = {
        "signature failures": "sum(mangos_signature_verifications_failed_total)",
        "retries": 'sum(mangos_retries_total{cause="E-RESULT-REFUSED"})',
        "re-dispatches": 'sum(mangos_redispatches_total{reason="E-LEASE-EXPIRED"})',
        "cache hits": 'sum(mangos_cache_lookups_total{result="hit"})',
    }
    with fleet.gates.opened(worker="rogue"):
        for what, expr in emitted.items():
            fleet.wait_for(f"{what} scraped", lambda e=expr: (prometheus.value(e) or 0) >= 1, 60)  # type: ignore[misc]
    fleet.kill(fleet.procs["rogue"])
    fleet.cli("cancel", run)
    fleet.wait_for("a cancelled run leaves no queue", lambda: prometheus.value(waiting) == 0, 30)
    assert prometheus.value(f'sum(mangos_queue_depth{{arch="{arch}"}})') == 0

    assert_rules_read_real_series(prometheus)
    log.warning(f"alerts fired {fired_after:.1f}s after the kill; test took {time.monotonic() - started:.1f}s")
    assert fired_after <= ALERT_DEADLINE


def _series_labels(prometheus: Prometheus) -> dict[str, set[frozenset[str]]]:
    """Every mangos_* series Prometheus stored: metric name -> the label-name sets seen (target labels aside)."""
    data: Any = prometheus._get("/api/v1/series", **{"match[]": '{__name__=~"mangos_.+"}'})
    found: dict[str, set[frozenset[str]]] = {}
    for series in data["data"]:
        labels = frozenset(series) - {"__name__", "instance", "job"}
        found.setdefault(series["__name__"], set()).add(labels)
    return found


def _rule_test_series() -> dict[str, set[frozenset[str]]]:
    """The series the promtool unit tests feed the rules: metric name -> label-name sets (target labels aside)."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, set[frozenset[str]]] = {}
    for case in load_yaml(PROMETHEUS / "alerts_test.yml")["tests"]:
        for item in case.get("input_series", []):
            for family in text_string_to_metric_families(f"{item['series']} 0\n"):
                for sample in family.samples:
                    labels = frozenset(sample.labels) - {"instance", "job"}
                    found.setdefault(sample.name, set()).add(labels)
    return found


def assert_rules_read_real_series(prometheus: Prometheus) -> None:
    """Every metric alerts.yml reads and every series alerts_test.yml feeds it was scraped from a real exporter,
    with the label names the unit tests give it (``NOT_CAUSED``: defined with those labels, not caused here)."""
    real = _series_labels(prometheus)
    used = _rule_test_series()
    for group in load_yaml(PROMETHEUS / "alerts.yml")["groups"]:
        for rule in group["rules"]:
            for name in metric_names(str(rule["expr"])):
                used.setdefault(name, set())
    for name, label_sets in used.items():
        if name in NOT_CAUSED:
            metric = METRICS[name]
            assert all(labels == frozenset(metric.labelnames) for labels in label_sets), (name, label_sets)
            continue
        assert name in real, f"the rules read {name}, which no exporter emitted: {sorted(real)}"
        for labels in label_sets:
            assert labels in real[name], f"alerts_test.yml feeds {name}{{{sorted(labels)}}}; emitted: {real[name]}"


def test_rule_test_series_are_parsed() -> None:
    used = _rule_test_series()
    assert used["mangos_queue_depth"] == {frozenset({"lane", "arch"})}
    assert used["mangos_security_update_waiting_seconds"] == {frozenset()}
    assert used["mangos_store_errors_total"] == {frozenset({"operation"})}


class _Stored(Prometheus):
    """A Prometheus that has stored ``series`` (no server)."""

    def __init__(self, series: list[dict[str, str]]) -> None:
        self.series = series

    def _get(self, path: str, **params: str) -> Any:
        return {"status": "success", "data": self.series}


def test_a_rule_series_no_exporter_emitted_is_reported() -> None:
    everything = [
        {"__name__": name, **dict.fromkeys(labels, "x")}
        for name, label_sets in _rule_test_series().items()
        for labels in label_sets
        if name not in NOT_CAUSED
    ]
    assert_rules_read_real_series(_Stored(everything))
    without = [s for s in everything if s["__name__"] != "mangos_worker_heartbeat_age_seconds"]
    with pytest.raises(AssertionError, match="mangos_worker_heartbeat_age_seconds, which no exporter emitted"):
        assert_rules_read_real_series(_Stored(without))
    relabelled = [{**s, "host": "x"} if s["__name__"] == "mangos_queue_depth" else s for s in everything]
    with pytest.raises(AssertionError, match=r"alerts_test\.yml feeds mangos_queue_depth"):
        assert_rules_read_real_series(_Stored(relabelled))

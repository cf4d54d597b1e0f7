"""Autoscaling: the KEDA ScaledObject's Prometheus trigger, asked of a real Prometheus scraping a real fleet.

KEDA's Prometheus scaler feeds the query's value to the HorizontalPodAutoscaler as an AverageValue metric with the
trigger's threshold as target: the HPA wants ``ceil(value / threshold)`` replicas, clamped to the object's
``minReplicaCount`` and ``maxReplicaCount``, and KEDA holds the minimum while the value is at or below
``activationThreshold``. A run of 20 builds on one worker must ask for more workers while it runs, and for the
minimum again once it is done. The address the trigger asks is the Prometheus the manifests deploy, whose
configuration is the shipped one with the cluster's service names.
"""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import MakeRepo, write_recipe
from tests.deploy.common import KUBERNETES, PROMETHEUS, load_yaml, load_yaml_all
from tests.lib.fleet import Fleet, local_fleet
from tests.lib.prometheus import Prometheus
from tests.lib.recipes import gate_step
from tests.lib.redis_server import RedisServer
from tests.lib.tools import free_port, require

NAMESPACE = "mangos-farm"
BUILDS = 20
AFTER = 60.0  # seconds after the run within which the fleet must be back at its minimum


def docs(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in load_yaml_all(path)}


DEFAULT, DEBIAN = "mangos-worker-amd64", "mangos-worker-debian-amd64"  # the ScaledObjects, by worker class


def scaled_object(name: str = DEFAULT) -> dict[str, Any]:
    return docs(KUBERNETES / "keda-scaledobject.yaml")[("ScaledObject", name)]


def trigger(name: str = DEFAULT) -> dict[str, str]:
    (only,) = scaled_object(name)["spec"]["triggers"]
    assert only["type"] == "prometheus"
    metadata: dict[str, str] = only["metadata"]
    return metadata


def keda_replicas(value: float | None, name: str = DEFAULT) -> int:
    """The replicas KEDA and the HPA ask for when the trigger's query returns ``value`` (None: no data, which
    the scaler takes as 0 by default)."""
    spec, meta = scaled_object(name)["spec"], trigger(name)
    lo, hi = int(spec["minReplicaCount"]), int(spec["maxReplicaCount"])
    value = value or 0.0
    if value <= float(meta.get("activationThreshold", "0")):
        return lo
    return min(hi, max(lo, math.ceil(value / float(meta["threshold"]))))


@pytest.mark.unit
def test_keda_arithmetic() -> None:
    assert keda_replicas(None) == keda_replicas(0) == 1
    assert keda_replicas(0.5) == 1
    assert keda_replicas(3) == 2
    assert keda_replicas(20) == 10
    assert keda_replicas(1000) == 16
    assert keda_replicas(None, DEBIAN) == 1
    assert keda_replicas(1000, DEBIAN) == 8


# -- the manifests ------------------------------------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.parametrize("name", [DEFAULT, DEBIAN])
def test_the_trigger_asks_the_prometheus_the_manifests_deploy(name: str) -> None:
    address = trigger(name)["serverAddress"]
    assert address == f"http://prometheus.{NAMESPACE}.svc:9090"
    objects = docs(KUBERNETES / "prometheus.yaml")
    service = objects[("Service", "prometheus")]
    assert service["metadata"]["namespace"] == NAMESPACE
    assert [p["port"] for p in service["spec"]["ports"]] == [9090]
    assert "prometheus.yaml" in load_yaml(KUBERNETES / "kustomization.yaml")["resources"]
    (container,) = objects[("Deployment", "prometheus")]["spec"]["template"]["spec"]["containers"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in container["args"]
    assert "--web.listen-address=:9090" in container["args"]


@pytest.mark.integration
def test_the_cluster_prometheus_is_the_shipped_one_with_service_names(tmp_path: Path) -> None:
    data = docs(KUBERNETES / "prometheus.yaml")[("ConfigMap", "prometheus")]["data"]
    assert data["alerts.yml"] == (PROMETHEUS / "alerts.yml").read_text(), "alerts.yml is copied verbatim"
    cluster, shipped = yaml.safe_load(data["prometheus.yml"]), load_yaml(PROMETHEUS / "prometheus.yml")
    renamed = {"coordinator:9500": f"mangos-coordinator.{NAMESPACE}.svc:9500"}
    jobs = {j["job_name"]: j for j in cluster["scrape_configs"]}
    for job in shipped["scrape_configs"]:
        mine = jobs[job["job_name"]]
        for static in job.get("static_configs", []):
            assert mine["static_configs"] == [{"targets": [renamed.get(t, t) for t in static["targets"]]}]
        for sd in job.get("dns_sd_configs", []):
            (their,) = mine["dns_sd_configs"]
            assert sd["names"] == ["worker"] and their["names"] == [f"mangos-worker-metrics.{NAMESPACE}.svc"]
            assert {k: v for k, v in their.items() if k != "names"} == {k: v for k, v in sd.items() if k != "names"}
    services = {
        d["metadata"]["name"]: [p["port"] for p in d["spec"]["ports"]]
        for path in ("coordinator.yaml", "worker.yaml")
        for d in load_yaml_all(KUBERNETES / path)
        if d["kind"] == "Service"
    }
    assert services["mangos-coordinator"] == [9500] and services["mangos-worker-metrics"] == [9501]
    assert cluster["rule_files"] == ["alerts.yml"]
    (tmp_path / "prometheus.yml").write_text(data["prometheus.yml"])
    (tmp_path / "alerts.yml").write_text(data["alerts.yml"])
    result = subprocess.run(
        [require("promtool"), "check", "config", "prometheus.yml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


# Series of both classes and two arches, as the coordinator exports them (farm.metrics; tests/deploy/test_exporter.py
# checks it emits these label sets): 5 default and 3 debian builds waiting on amd64, 11 needing debian+kvm (which a
# debian worker cannot run), 7 debian ones on arm64; in flight on amd64: 2 default and 1 debian, 4 debian on arm64.
CLASS_SERIES = [
    ('mangos_builds_ready_waiting{arch="amd64",class="default"}', "5x3"),
    ('mangos_builds_ready_waiting{arch="amd64",class="debian"}', "3x3"),
    ('mangos_builds_ready_waiting{arch="amd64",class="debian+kvm"}', "11x3"),
    ('mangos_builds_ready_waiting{arch="arm64",class="debian"}', "7x3"),
    ('mangos_builds_in_flight{arch="amd64",class="default"}', "2x3"),
    ('mangos_builds_in_flight{arch="amd64",class="debian"}', "1x3"),
    ('mangos_builds_in_flight{arch="arm64",class="debian"}', "4x3"),
]


@pytest.mark.integration
def test_each_class_query_counts_the_builds_of_its_class(tmp_path: Path) -> None:
    """Both triggers' queries, evaluated by Prometheus's own engine (promtool's unit tests) on series of both
    classes: each counts its class's waiting amd64 builds plus those in flight, and nothing of another class or
    arch; with no series of its class at all it is still a number (KEDA would otherwise see no data)."""
    expected = {DEFAULT: 5 + 2, DEBIAN: 3 + 1}
    # at 1m, the series above; at 10m they stopped long ago (stale), and the query still answers 0
    tests = [
        {"expr": trigger(name)["query"], "eval_time": at, "exp_samples": [{"labels": "{}", "value": value}]}
        for name in expected
        for at, value in (("1m", expected[name]), ("10m", 0))
    ]
    spec = {
        "rule_files": ["empty.yml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in CLASS_SERIES],
            "promql_expr_test": tests,
        }],
    }  # fmt: skip
    (tmp_path / "empty.yml").write_text("groups: []\n")
    (tmp_path / "classes_test.yml").write_text(yaml.safe_dump(spec))
    result = subprocess.run(
        [require("promtool"), "test", "rules", "classes_test.yml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert keda_replicas(expected[DEFAULT], DEFAULT) == 4 and keda_replicas(expected[DEBIAN], DEBIAN) == 2


# -- a run, scaled ------------------------------------------------------------------------------------------------
@pytest.fixture
def fleet(tmp_path: Path, redis_server: RedisServer) -> Iterator[Fleet]:
    require("bwrap")
    with local_fleet(tmp_path, redis_server, {"MANGOS_FARM_LEASE_TIMEOUT": "10"}) as fleet:
        yield fleet


@pytest.mark.e2e
def test_twenty_builds_on_one_worker_scale_the_fleet_up_and_back(
    fleet: Fleet, make_repo: MakeRepo, tmp_path: Path
) -> None:
    fleet.metrics_ports["coordinator"] = free_port()
    prometheus = Prometheus(tmp_path / "prometheus", {"coordinator": fleet.metrics_ports["coordinator"]})
    try:
        fleet.start_coordinator()
        fleet.start_worker("w1", concurrency=1)
        (worker,) = fleet.wait_workers(1)
        query = trigger()["query"].replace('arch="amd64"', f'arch="{worker["arch"]}"')
        fleet.wait_for("Prometheus scraping", lambda: prometheus.value('up{job="coordinator"}') == 1, 60)
        assert keda_replicas(prometheus.value(query)) == 1, "idle: the minimum"

        repo, commit = make_repo("scale-src", {"data": "x\n"})
        recipes = tmp_path / "recipes"
        for i in range(BUILDS):
            name = f"s{i:02d}"
            write_recipe(recipes, name, git_url=str(repo), commit=commit, steps=[gate_step(), f'echo > "$OUT/{name}"'])
        run = fleet.cli("rebuild", str(recipes)).stdout.strip()
        fleet.wait_held(1)  # one build running on the one slot, nineteen ready and waiting
        fleet.wait_for(f"{BUILDS} builds wanting a slot", lambda: prometheus.value(query) == BUILDS, 60)
        assert keda_replicas(prometheus.value(query)) == 10, "ceil(20 / 2): ten workers of two slots each"
        with fleet.gates.opened():
            assert fleet.wait_run(run, timeout=120)["ok"]
        done = time.monotonic()
        fleet.wait_for("the minimum again", lambda: keda_replicas(prometheus.value(query)) == 1, AFTER)
        assert time.monotonic() - done <= AFTER
    finally:
        prometheus.close()

"""Prometheus configuration and alert rules: promtool accepts them, and the unit tests cover every alert."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from tests.conftest import require
from tests.deploy.common import (
    COMPOSE,
    KUBERNETES,
    OPERATIONS,
    PROMETHEUS,
    ROOT,
    load_yaml,
    load_yaml_all,
    markdown_anchors,
)

pytestmark = pytest.mark.integration

CONFIG = PROMETHEUS / "prometheus.yml"
RULES = PROMETHEUS / "alerts.yml"
RULE_TESTS = PROMETHEUS / "alerts_test.yml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = require("promtool")
    return subprocess.run([binary, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def test_promtool_check_config() -> None:
    # rule_files are relative to the config file, so they resolve both here (deploy/prometheus/alerts.yml) and in
    # the container, where deploy/prometheus is mounted at /etc/prometheus.
    result = promtool("check", "config", str(CONFIG.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(RULES.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 9 rules found" in result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    result = promtool("test", "rules", str(RULE_TESTS.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in load_yaml(RULES)["groups"] for rule in group["rules"] if "alert" in rule}


def test_the_alerts_the_farm_needs() -> None:
    assert set(alerts()) == {
        "NoWorkerForArch",
        "OldestWaitingBuildTooOld",
        "WorkerHeartbeatStale",
        "BuildFailureRateSpike",
        "StoreErrors",
        "LeaseExpiriesHigh",
        "SignatureVerificationFailures",
        "TaskForgedOrReplayed",
        "SecurityUpdateNotBuilt",
    }
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"], name


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in load_yaml(RULE_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
            for expected in check.get("exp_alerts") or []:  # promtool compares annotations only if given
                assert expected.get("exp_annotations"), f"{case['name']}: expected alert without annotations"
    assert fired == set(alerts()), f"never tested firing: {sorted(set(alerts()) - fired)}"
    assert quiet == set(alerts()), f"never tested quiet: {sorted(set(alerts()) - quiet)}"


def test_every_alert_has_a_runbook_section() -> None:
    anchors = markdown_anchors(OPERATIONS.read_text())
    for name, rule in alerts().items():
        path, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert (ROOT / path) == OPERATIONS, name
        assert anchor in anchors, f"{name}: no section '#{anchor}' in {OPERATIONS.name}"


def test_scrape_targets_match_the_deployments() -> None:
    config = load_yaml(CONFIG)
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["mangos-coordinator"]["static_configs"] == [{"targets": ["coordinator:9500"]}]
    (worker_sd,) = jobs["mangos-worker"]["dns_sd_configs"]
    assert worker_sd == worker_sd | {"names": ["worker"], "type": "A", "port": 9501}

    services = load_yaml(COMPOSE)["services"]
    assert "9500" in services["coordinator"]["expose"]
    assert "9501" in services["worker"]["expose"]
    prometheus = services["prometheus"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]

    ports = {
        (doc["metadata"]["name"], port["port"])
        for path in ("coordinator.yaml", "worker.yaml")
        for doc in load_yaml_all(KUBERNETES / path)
        if doc["kind"] == "Service"
        for port in doc["spec"]["ports"]
    }
    assert ports == {("mangos-coordinator", 9500), ("mangos-worker-metrics", 9501)}

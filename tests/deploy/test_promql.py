"""Every PromQL expression the deployment ships reads only metrics that farm/metrics.py exports.

Sources: the alert rules, the Grafana dashboard's panel targets and variable queries, and the KEDA ScaledObject's
Prometheus trigger. A panel or alert on a renamed or misspelt metric would otherwise show "no data" or never
fire, silently.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from farm.metrics import METRICS, exported_names
from tests.conftest import require
from tests.deploy.common import DASHBOARD, KUBERNETES, PROMETHEUS, load_yaml, load_yaml_all
from tests.deploy.promql import grafana_variable_expr, metric_names

pytestmark = pytest.mark.integration


# -- the extractor itself --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("mangos_queue_depth", {"mangos_queue_depth"}),
        (
            "sum by (arch) (mangos_queue_depth) > 0 unless on (arch) (sum by (arch) (mangos_workers_alive) > 0)",
            {"mangos_queue_depth", "mangos_workers_alive"},
        ),
        (  # strings and label matchers are not metrics, even when they look like one
            'mangos_builds_finished_total{result="failed", recipe=~"mangos_fake.*", x!=\'mangos_y\'}',
            {"mangos_builds_finished_total"},
        ),
        (  # `le` in the grouping list, Grafana's interval variable, the quantile as a number
            'histogram_quantile(0.95, sum by (le, phase) (rate(mangos_build_phase_seconds_bucket{arch=~"$arch"}'
            "[$__rate_interval])))",
            {"mangos_build_phase_seconds_bucket"},
        ),
        (
            "sum without (instance, pid) (increase(mangos_store_errors_total[10m])) > 0"
            " or (mangos_store_errors_total unless mangos_store_errors_total offset 10m)",
            {"mangos_store_errors_total"},
        ),
        ("rate(mangos_retries_total[1h:5m] @ start()) offset -5m", {"mangos_retries_total"}),
        ("a / on (x) group_left (y) b", {"a", "b"}),
        ("a * ignoring(z) group_right b", {"a", "b"}),
        ("1e3 * 0x1F - .5 / 2E-3 > bool 1 and NaN < Inf", set()),
        ('{__name__="mangos_runs_active"}', {"mangos_runs_active"}),
        (
            'count_values("value", mangos_workers_alive) and topk(3, mangos_queue_depth)',
            {
                "mangos_workers_alive",
                "mangos_queue_depth",
            },
        ),
        ("sum(mangos_runs_active) BY (x)", {"mangos_runs_active"}),
    ],
)
def test_metric_names_extracts_only_metrics(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


@pytest.mark.parametrize(
    ("expr", "unknown"),
    [
        ("rate(mangos_bulids_started_total[5m])", "mangos_bulids_started_total"),  # misspelt metric
        ("sum(up)", "up"),  # not one of the farm's metrics
        ("frobnicate(mangos_queue_depth)", "frobnicate"),  # not a PromQL function
    ],
)
def test_unknown_identifiers_are_reported(expr: str, unknown: str) -> None:
    assert unknown in metric_names(expr) - exported_names()


def test_grafana_variable_queries() -> None:
    assert grafana_variable_expr("label_values(mangos_workers_alive, arch)") == "mangos_workers_alive"
    assert grafana_variable_expr('label_values(mangos_queue_depth{arch="amd64"}, lane)') == (
        'mangos_queue_depth{arch="amd64"}'
    )
    assert grafana_variable_expr("label_values(arch)") is None
    assert grafana_variable_expr("query_result(sum(mangos_runs_active))") == "sum(mangos_runs_active)"
    with pytest.raises(ValueError, match="not a Grafana"):
        grafana_variable_expr("metrics(mangos_.*)")


# -- the shipped expressions ------------------------------------------------------------------------------------
def _walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _walk_panels(panel.get("panels") or [])


def alert_exprs() -> list[tuple[str, str]]:
    rules = load_yaml(PROMETHEUS / "alerts.yml")
    return [
        (f"alert {rule.get('alert') or rule.get('record')}", str(rule["expr"]))
        for group in rules["groups"]
        for rule in group["rules"]
    ]


def dashboard_exprs() -> list[tuple[str, str]]:
    import json

    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for panel in _walk_panels(dashboard["panels"]):
        for target in panel.get("targets") or []:
            found.append((f"panel {panel['id']} '{panel['title']}' target {target['refId']}", str(target["expr"])))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        expr = grafana_variable_expr(query)
        if expr is not None:
            found.append((f"variable ${variable['name']}", expr))
    return found


def keda_exprs() -> list[tuple[str, str]]:
    found = []
    for doc in load_yaml_all(KUBERNETES / "keda-scaledobject.yaml"):
        for trigger in doc["spec"]["triggers"]:
            if trigger["type"] == "prometheus":
                found.append((f"ScaledObject {doc['metadata']['name']} trigger", trigger["metadata"]["query"]))
    return found


ALL_EXPRS = alert_exprs() + dashboard_exprs() + keda_exprs()


def test_expressions_were_found() -> None:
    assert len(alert_exprs()) == 9
    assert len(dashboard_exprs()) >= 30
    assert keda_exprs()


@pytest.mark.parametrize(("where", "expr"), ALL_EXPRS, ids=[where for where, _ in ALL_EXPRS])
def test_expression_reads_only_exported_metrics(where: str, expr: str) -> None:
    names = metric_names(expr)
    assert names, f"{where}: reads no metric at all: {expr}"
    unknown = names - exported_names()
    assert not unknown, f"{where}: {sorted(unknown)} not exported by farm/metrics.py (exported_names()): {expr}"
    assert all(n.startswith("mangos_") for n in names)


def _family(name: str) -> str:
    """The metric a series belongs to: a histogram's _bucket, _sum and _count are the histogram."""
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name.removesuffix(suffix) in METRICS:
            return name.removesuffix(suffix)
    return name


def test_every_metric_is_on_the_dashboard() -> None:
    shown = {_family(name) for _, expr in dashboard_exprs() for name in metric_names(expr)}
    missing = set(METRICS) - shown
    assert not missing, f"exported by farm/metrics.py but on no dashboard panel: {sorted(missing)}"


GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "$arch": ".*", "$lane": ".*"}


def test_every_expression_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each one (as a recording rule), with Grafana's variables replaced by what Grafana sends."""
    rules = []
    for i, (where, original) in enumerate(dashboard_exprs() + keda_exprs()):
        expr = original
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"{where}: unknown Grafana variable in {original}"
        rules.append({"record": f"check:expr_{i}", "expr": expr})
    path = tmp_path / "exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard-and-keda", "rules": rules}]}))
    result = subprocess.run(
        [require("promtool"), "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout

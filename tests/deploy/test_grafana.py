"""The Grafana dashboard and its provisioning: loadable, consistent, and wired to what compose mounts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.deploy.common import COMPOSE, DASHBOARD, GRAFANA, ROOT, load_yaml

pytestmark = pytest.mark.integration

ROWS = ["Fleet", "Queue", "Throughput", "Failures", "Reproducibility"]


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels() -> Iterator[dict[str, Any]]:
    def walk(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from walk(panel.get("panels") or [])

    return walk(dashboard()["panels"])


def test_dashboard_loads_with_a_current_schema() -> None:
    d = dashboard()
    assert d["uid"] == "mangos-farm"
    assert d["title"]
    assert 36 <= d["schemaVersion"] <= 41  # Grafana 9.4 .. 11: the panel JSON below is that generation's
    assert "id" not in d or d["id"] is None  # provisioned dashboards must not pin a database id


def test_panel_ids_are_unique() -> None:
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


def test_rows_in_order_and_panel_types() -> None:
    all_panels = list(panels())
    assert [p["title"] for p in all_panels if p["type"] == "row"] == ROWS
    types = {p["type"] for p in all_panels}
    assert types == {"row", "timeseries", "stat", "table"}
    for p in all_panels:
        if p["type"] != "row":
            assert p["targets"], f"panel {p['id']} '{p['title']}' has no query"
            assert p.get("description"), f"panel {p['id']} '{p['title']}' says nothing about what it shows"


def test_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], int] = {}
    for p in panels():
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, f"panel {p['id']} is wider than the grid"
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panels {cells[(x, y)]} and {p['id']} overlap at {(x, y)}"
                cells[(x, y)] = p["id"]


def test_queries_use_the_provisioned_datasource() -> None:
    d = dashboard()
    variables = {v["name"]: v for v in d["templating"]["list"]}
    provisioned = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    (source,) = provisioned
    assert source["type"] == "prometheus"
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["datasource"]["current"]["value"] == source["uid"]
    for p in panels():
        if p["type"] == "row":
            continue
        for target in [p, *p["targets"]]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
    for name in ("arch", "lane"):
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_datasource_points_at_the_compose_prometheus() -> None:
    (source,) = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    services = load_yaml(COMPOSE)["services"]
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in services
    assert any(str(p).endswith(":9090") for p in services["prometheus"]["ports"])


def test_dashboard_provider_reads_the_mounted_dashboards_directory() -> None:
    (provider,) = load_yaml(GRAFANA / "provisioning" / "dashboards" / "mangos.yml")["providers"]
    assert provider["type"] == "file"
    mounts = {}
    for volume in load_yaml(COMPOSE)["services"]["grafana"]["volumes"]:
        source, target, *_ = str(volume).split(":")
        mounts[target] = source
    # the provider's path is where compose mounts deploy/grafana/dashboards, which holds the dashboard
    assert (ROOT / mounts[provider["options"]["path"]]).resolve() == DASHBOARD.parent
    assert (ROOT / mounts["/etc/grafana/provisioning"]).resolve() == GRAFANA / "provisioning"
    assert list(DASHBOARD.parent.glob("*.json")) == [DASHBOARD]

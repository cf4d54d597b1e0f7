"""The series the alert rules read come from the real exporter: a ``mangos-farm coordinator`` process on Redis, its
/metrics scraped over HTTP and parsed. The promtool unit tests feed the alerts hand-written series; this checks
those series' names and labels are what the coordinator really emits."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from farm.archive.update import Outcome, Status
from farm.coordinator.kv import RedisKV
from farm.coordinator.updates import LagBoard
from tests.deploy.common import PROMETHEUS, load_yaml
from tests.deploy.promql import metric_names
from tests.lib.fleet import Fleet
from tests.lib.redis_server import RedisServer
from tests.lib.tools import require

pytestmark = pytest.mark.integration

ALERT = "SecurityUpdateNotBuilt"


@pytest.fixture
def coordinator(tmp_path: Path, redis_server: RedisServer) -> Iterator[tuple[Fleet, RedisKV]]:
    require("redis-server")
    redis_server.restart()
    client = redis_server.client()
    client.flushall()
    client.close()
    fleet = Fleet(tmp_path / "fleet", redis_server, str(tmp_path / "store"))
    kv = RedisKV(redis_server.url)
    yield fleet, kv
    fleet.close()
    kv.close()


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    series: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return series


def test_the_security_update_alert_reads_series_the_coordinator_exports(
    coordinator: tuple[Fleet, RedisKV],
) -> None:
    fleet, kv = coordinator
    # What `recipes update` records when it finds a security update it could not get built (yet): 2 hours ago.
    found = Outcome("x", Path("x.toml"), Status.UNAVAILABLE, "1.0-1", "1.0-1+deb12u1", "Debian bookworm-security", True)
    LagBoard(kv).record([found], now=time.time() - 7200)
    fleet.start_coordinator()
    port = fleet.metrics_ports["coordinator"]

    def scraped() -> dict[str, dict[tuple[tuple[str, str], ...], float]] | None:
        try:
            series = scrape(port)
        except OSError:
            return None
        return series if series.get("mangos_security_update_waiting_seconds", {}).get(()) else None

    series = fleet.wait_for("the coordinator's gauges", scraped, timeout=60)
    (rule,) = (r for g in load_yaml(PROMETHEUS / "alerts.yml")["groups"] for r in g["rules"] if r.get("alert") == ALERT)
    for name in metric_names(str(rule["expr"])):
        assert name in series, f"{ALERT} reads {name}, which the coordinator does not export: {sorted(series)}"
    assert 7200 <= series["mangos_security_update_waiting_seconds"][()] < 7200 + 120
    behind = series["mangos_recipes_behind_archive"]
    assert behind == {(("kind", "security"),): 1.0, (("kind", "update"),): 0.0}

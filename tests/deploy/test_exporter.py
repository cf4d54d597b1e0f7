"""The series the alert rules read come from the real exporter: a ``mangos-farm coordinator`` process on Redis, its
/metrics scraped over HTTP and parsed. The promtool unit tests feed the alerts hand-written series; this checks
those series' names and labels are what the coordinator really emits.

The fleet gauges' life cycle is checked on the coordinator's fake clock (:mod:`tests.coordinator.harness`): a
vanished worker reads not alive and its heartbeat age grows until an hour after its registration expired, a
withdrawn one goes at once, a finished or cancelled run leaves no queue behind."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from farm import metrics
from farm.archive.update import Outcome, Status
from farm.coordinator.engine import Coordinator
from farm.coordinator.kv import KV, RedisKV, SqliteKV
from farm.coordinator.layout import WORKER, WORKERS
from farm.coordinator.leases import LeaseBoard, WorkerInfo
from farm.coordinator.runs import RunStore
from farm.coordinator.updates import LagBoard
from tests.coordinator import harness
from tests.coordinator.harness import T0, FakeDispatcher, build, submit
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
    redis_server.fresh()
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


# -- the fleet gauges' life cycle, on the coordinator's fake clock ------------------------------------------------
def register(kv: KV, name: str, arch: str, seen: float) -> None:
    """``name`` announced itself at ``seen`` (the registry entry a worker writes; it outlives the fake clock)."""
    info = WorkerInfo(name, arch, 1, "host", 1, T0, seen=seen)
    with kv.batch() as b:
        b.set(WORKER + name, json.dumps(asdict(info)).encode(), ttl=3600)
        b.sadd(WORKERS, name)


def gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Coordinator, KV, FakeDispatcher]]:
    """A coordinator on a SQLite state with a fake dispatcher (its unit tests' harness), fresh fleet gauges."""
    monkeypatch.setattr(metrics, "fleet", metrics.FleetGauges())
    kv = SqliteKV(tmp_path / "state.sqlite")
    disp = FakeDispatcher()
    yield harness.coordinator(kv, disp), kv, disp
    kv.close()


@pytest.mark.unit
def test_a_vanished_worker_reads_dead_and_ageing_until_an_hour_after_expiry(
    fake: tuple[Coordinator, KV, FakeDispatcher],
) -> None:
    coord, kv, _ = fake
    age, alive = "mangos_worker_heartbeat_age_seconds", "mangos_workers_alive"
    register(kv, "w1", "riscv64", T0)
    register(kv, "w2", "riscv64", T0)
    run = submit(coord, {n: [] for n in "abc"}, arch="riscv64")
    coord.tick(T0)
    assert gauge(alive, arch="riscv64") == 2
    kv.delete(WORKER + "w1")  # w1 killed: its entry expired (lease timeout 4 s), its name still listed
    register(kv, "w2", "riscv64", T0 + 30)
    coord.tick(T0 + 30)
    assert gauge(alive, arch="riscv64") == 1
    assert gauge(age, worker="w1", arch="riscv64") == 30
    assert gauge(age, worker="w2", arch="riscv64") == 0
    LeaseBoard(kv, 4.0).withdraw("w2")  # stopped cleanly, before its entry could expire: gone at once
    coord.tick(T0 + 33)  # the coordinator's next look at the registry, 3 s after w2 last announced itself
    assert gauge(age, worker="w2", arch="riscv64") is None
    assert gauge(alive, arch="riscv64") == 0, "no worker alive, builds ready: 0, not the last value"
    coord.tick(T0 + 1800)
    assert gauge(age, worker="w1", arch="riscv64") == 1800, "it keeps ageing"
    coord.tick(T0 + 4 + 3600)
    assert gauge(age, worker="w1", arch="riscv64") == 3604
    coord.tick(T0 + 4 + 3601)
    assert gauge(age, worker="w1", arch="riscv64") is None, "removed an hour after its registration expired"
    assert gauge(alive, arch="riscv64") == 0, "the arch still has builds waiting"
    assert gauge("mangos_builds_ready_waiting", **{"arch": "riscv64", "class": "default"}) == 1  # 2 sent
    RunStore(kv).cancel(run.id, T0 + 3700)
    coord.tick(T0 + 3700)
    assert gauge("mangos_builds_ready_waiting", **{"arch": "riscv64", "class": "default"}) == 0
    assert gauge("mangos_queue_depth", lane="rebuild", arch="riscv64") == 0
    assert gauge(alive, arch="riscv64") is None, "no worker, nothing to build: no series"


@pytest.mark.unit
def test_a_finished_run_clears_its_ready_builds(fake: tuple[Coordinator, KV, FakeDispatcher]) -> None:
    coord, kv, disp = fake
    waiting = {"arch": "mips64el", "class": "default"}
    register(kv, "m1", "mips64el", T0)
    submit(coord, {"a": [], "b": []}, arch="mips64el")
    coord.tick(T0)
    assert gauge("mangos_builds_ready_waiting", **waiting) == 1, "one slot: one dispatched, one waiting"
    assert gauge("mangos_workers_busy", arch="mips64el") == 0, "dispatched, not yet started"
    assert gauge("mangos_builds_in_flight", **waiting) == 1, "dispatched: in flight, in its class"
    build(kv, disp, disp.names()[0], worker="m1")
    coord.tick(T0 + 1)
    assert gauge("mangos_builds_ready_waiting", **waiting) == 0
    build(kv, disp, disp.names()[1], worker="m1")
    coord.tick(T0 + 2)
    assert gauge("mangos_builds_ready_waiting", **waiting) == 0
    assert gauge("mangos_builds_in_flight", **waiting) == 0
    assert gauge("mangos_workers_alive", arch="mips64el") == 1

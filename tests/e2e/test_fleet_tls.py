"""A whole fleet over TLS: redis-server serving only TLS (our own CA) with a password, one coordinator process and
one worker process configured as an operator would (MANGOS_FARM_BROKER=rediss://..., MANGOS_FARM_BROKER_TLS_CA),
so Celery's broker, its result backend and the coordinator state all go over TLS. One rebuild of a demo-like chain
(a library, a program linking it, a package shipping the program) runs end to end; the artifacts are fetched and
verified; a client speaking plain Redis is turned away by the server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MakeRepo, write_recipe
from tests.e2e.fleet import Fleet
from tests.lib.moto import MotoServer, s3_env
from tests.lib.tls import TlsRedisServer

pytestmark = pytest.mark.e2e


@pytest.fixture
def tls_fleet(tmp_path: Path, moto_server: MotoServer) -> Iterator[Fleet]:
    server = TlsRedisServer(tmp_path / "redis")
    server.start()
    bucket = f"farm-{uuid.uuid4().hex[:12]}"
    moto_server.client.create_bucket(Bucket=bucket)
    env = s3_env(moto_server.url) | {"MANGOS_FARM_BROKER_TLS_CA": str(server.ca)}
    fleet = Fleet(tmp_path / "fleet", server, f"s3://{bucket}/farm", env)
    try:
        fleet.start_coordinator()
        yield fleet
    finally:
        fleet.close()
        server.stop()


def demo_like(make_repo: MakeRepo, root: Path) -> tuple[Path, str]:
    """libgreet -> greet -> welcome, each built from its dependency's output, like the repository's demo."""
    repo, commit = make_repo("greet-src", {"greeting": "hello over tls\n"})
    recipes = root / "recipes"
    write_recipe(recipes, "libgreet", git_url=str(repo), commit=commit, steps=['cp greeting "$OUT/libgreet"'])
    write_recipe(
        recipes, "greet", git_url=str(repo), commit=commit, depends=["libgreet"],
        steps=['{ echo "#!/bin/sh"; echo "cat <<EOF"; cat "$DEPS/libgreet/libgreet"; echo EOF; } > "$OUT/greet"'],
    )  # fmt: skip
    write_recipe(
        recipes, "welcome", git_url=str(repo), commit=commit, depends=["greet"],
        steps=['sh "$DEPS/greet/greet" > "$OUT/welcome"'],
    )  # fmt: skip
    return recipes, commit


def test_a_fleet_over_rediss_rebuilds_end_to_end(tls_fleet: Fleet, make_repo: MakeRepo, tmp_path: Path) -> None:
    import redis

    fleet = tls_fleet
    server = fleet.redis
    assert isinstance(server, TlsRedisServer)
    assert fleet.base_env["MANGOS_FARM_BROKER"].startswith("rediss://")
    assert "MANGOS_FARM_STATE" not in fleet.base_env  # the state store derives from the broker, TLS included
    with pytest.raises(redis.ConnectionError):  # the only port speaks TLS: plain Redis gets no answer
        redis.Redis(host="127.0.0.1", port=server.port, password=server.password, socket_timeout=3).ping()
    fleet.start_worker("w1")
    fleet.wait_workers(1, timeout=60)
    recipes, commit = demo_like(make_repo, tmp_path)
    run = fleet.cli("rebuild", str(recipes)).stdout.strip()
    status = fleet.wait_run(run, timeout=60)
    assert status["ok"], status
    assert {b["recipe"]: b["state"] for b in status["builds"]} == dict.fromkeys(
        ("libgreet", "greet", "welcome"), "built"
    )
    assert {b["worker"] for b in status["builds"]} == {"w1@fleet"}
    out = tmp_path / "fetched"
    fleet.cli("fetch", "--commit", commit, "-o", str(out))
    assert (out / "welcome").read_text() == "hello over tls\n"
    report = fleet.json("verify", str(out))
    assert len(report["ok"]) == 3 and report["failed"] == [], report
    # Everything the fleet keeps went through this server: the coordinator state, Celery's results.
    client = server.client()
    assert client.keys("mangos:run:*") and client.keys("celery-task-meta-*")
    client.close()

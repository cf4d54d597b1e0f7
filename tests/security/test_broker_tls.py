"""The fleet's broker over TLS with a password: a real redis-server serving only TLS, certificates from our own CA.

Celery (broker and result backend) and the coordinator's state store connect with the settings an operator sets
(MANGOS_FARM_BROKER=rediss://..., MANGOS_FARM_BROKER_TLS_CA); without our CA, or without TLS, they cannot.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.coordinator.kv import open_kv
from farm.settings import Settings
from tests.lib.tls import TlsRedisServer

pytestmark = pytest.mark.integration

PASSWORD = TlsRedisServer.password


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    server = TlsRedisServer(tmp_path_factory.mktemp("tls-redis"))
    server.start()
    yield server.port, server.ca
    server.stop()


def settings_for(port: int, ca: Path | None) -> Settings:
    return Settings(broker=f"rediss://:{PASSWORD}@127.0.0.1:{port}/0", broker_tls_ca=str(ca) if ca else "")


def test_celery_and_the_state_store_speak_tls_with_our_ca(tls_redis: tuple[int, Path]) -> None:
    from workers.app import make_app

    port, ca = tls_redis
    settings = settings_for(port, ca)
    kv = open_kv(settings.state_url)
    kv.set("mangos:tls-check", b"ok")
    assert kv.get("mangos:tls-check") == b"ok"
    app = make_app(settings)
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1)
        queue = conn.SimpleQueue("mangos.tls-check")
        queue.put({"hello": "over tls"})
        assert queue.get(timeout=5).payload == {"hello": "over tls"}
        queue.close()
    app.backend.set("mangos-tls-result", b"stored")
    assert app.backend.get("mangos-tls-result") == b"stored"


def test_without_our_ca_or_without_tls_nothing_connects(tls_redis: tuple[int, Path]) -> None:
    import redis
    from kombu.exceptions import OperationalError

    from workers.app import make_app

    port, _ca = tls_redis
    untrusting = settings_for(port, None)  # system CAs only: our server certificate is not trusted
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        redis.Redis.from_url(untrusting.state_url).ping()
    app = make_app(untrusting)
    with app.connection_for_write() as conn, pytest.raises(OperationalError):
        conn.ensure_connection(max_retries=1, timeout=3)
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(f"redis://:{PASSWORD}@127.0.0.1:{port}/0", socket_timeout=2).ping()

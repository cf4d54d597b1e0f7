"""The fleet's broker over TLS with a password: a real redis-server serving only TLS, certificates from our own CA.

Celery (broker and result backend) and the coordinator's state store connect with the settings an operator sets
(MANGOS_FARM_BROKER=rediss://..., MANGOS_FARM_BROKER_TLS_CA); without our CA, or without TLS, they cannot.
"""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from farm.coordinator.kv import open_kv
from farm.settings import Settings
from tests.conftest import free_port, require

pytestmark = pytest.mark.integration

PASSWORD = "tls-br0ker-pw"


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None, signer: ec.EllipticCurvePrivateKey,
          ca: bool) -> x509.Certificate:  # fmt: skip
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
    return builder.sign(signer, hashes.SHA256())


def _pem(path: Path, obj: x509.Certificate | ec.EllipticCurvePrivateKey) -> Path:
    if isinstance(obj, x509.Certificate):
        path.write_bytes(obj.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(
            obj.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return path


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    binary = require("redis-server")
    d = tmp_path_factory.mktemp("tls-redis")
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("mangos test CA", ca_key, None, ca_key, ca=True)
    server = _cert("127.0.0.1", server_key, ca.subject, ca_key, ca=False)
    port = free_port()
    argv = [
        binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--dir", str(d), "--save", "",
        "--tls-cert-file", str(_pem(d / "server.pem", server)),
        "--tls-key-file", str(_pem(d / "server.key", server_key)),
        "--tls-ca-cert-file", str(_pem(d / "ca.pem", ca)), "--tls-auth-clients", "no", "--requirepass", PASSWORD,
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=(d / "log").open("wb"), stderr=subprocess.STDOUT)
    import socket

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield port, d / "ca.pem"
    proc.terminate()
    proc.wait(10)


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

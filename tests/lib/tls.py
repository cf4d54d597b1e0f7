"""TLS for test servers: a CA of our own, a server certificate for 127.0.0.1, and redis-server serving TLS only.

:class:`TlsRedisServer` is a :class:`~tests.lib.redis_server.RedisServer` whose only port speaks TLS (``--port 0``)
with a password: its :attr:`~TlsRedisServer.url` is ``rediss://:PASSWORD@127.0.0.1:PORT/0`` and its clients verify
the server against :attr:`~TlsRedisServer.ca` (``MANGOS_FARM_BROKER_TLS_CA``), as an operator's fleet would.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.lib.redis_server import RedisServer


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
        path.chmod(0o600)
    return path


@dataclass(frozen=True)
class ServerTls:
    """PEM files in one directory: our CA's certificate, and a certificate it issued for 127.0.0.1 with its key."""

    ca: Path
    cert: Path
    key: Path


def server_tls(directory: Path) -> ServerTls:
    """A fresh CA (valid one day) and a server certificate from it for 127.0.0.1, written under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("mangos test CA", ca_key, None, ca_key, ca=True)
    server = _cert("127.0.0.1", server_key, ca.subject, ca_key, ca=False)
    return ServerTls(
        ca=_pem(directory / "ca.pem", ca),
        cert=_pem(directory / "server.pem", server),
        key=_pem(directory / "server.key", server_key),
    )


class TlsRedisServer(RedisServer):
    """redis-server with TLS on its only port and a password (``requirepass``); no AOF (a fleet's broker)."""

    password = "tls-br0ker-pw"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, appendfsync="off")
        self.tls = server_tls(workdir / "tls")

    @property
    def url(self) -> str:
        return f"rediss://:{self.password}@127.0.0.1:{self.port}/0"

    @property
    def ca(self) -> Path:
        return self.tls.ca

    def argv(self) -> list[str]:
        argv = super().argv()
        at = argv.index("--port")
        argv[at : at + 2] = ["--port", "0", "--tls-port", str(self.port)]
        return [
            *argv,
            "--tls-cert-file", str(self.tls.cert),
            "--tls-key-file", str(self.tls.key),
            "--tls-ca-cert-file", str(self.tls.ca),
            "--tls-auth-clients", "no",
            "--requirepass", self.password,
        ]  # fmt: skip

    def _serving(self) -> bool:
        import redis

        try:
            return bool(self.client().ping())
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url, ssl_ca_certs=str(self.ca), socket_timeout=5, socket_connect_timeout=2)

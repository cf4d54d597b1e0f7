"""Throwaway Secure Boot db key pairs for the boot-chain tests (RSA 2048, self-signed, code signing)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.conftest import IN_CI


def make_db_key(directory: Path, common_name: str) -> tuple[Path, Path]:
    """Write ``db.key``/``db.crt`` into ``directory``; returns (key, cert)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=365 * 30))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / "db.key", directory / "db.crt"
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def require_ovmf() -> None:
    """OVMF's Secure Boot firmware (Debian's ovmf): skipped on a developer's machine without it, a failure in CI."""
    from farm.image import firmware

    if not (firmware.OVMF_VARS.exists() and firmware.OVMF_CODE.exists()):
        message = f"ovmf is not installed ({firmware.OVMF_VARS}): run 'make setup'"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)

"""Release keys: what signs the MANGOS image, kept apart from the builder keys that sign provenance.

Two key pairs, each an RSA-2048 private key with a self-signed X.509 certificate, PEM on disk:

- ``verity.key``/``verity.crt`` sign the dm-verity root hash (the DPS signature partition, sysext images);
- ``db.key``/``db.crt`` are the Secure Boot ``db`` entry that signs the UKI and systemd-boot.

RSA because UEFI firmware (OVMF) and the kernel's PKCS#7 verifier both accept it everywhere; Ed25519 is not an
option there. They live in ``$MANGOS_FARM_HOME/release`` by default, never under ``keys/`` (which workers hold):
a compromised worker must not be able to sign a bootable image.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from farm.errors import E, TrustError
from farm.fsutil import atomic_write

VERITY = "verity"
DB = "db"
NAMES = (VERITY, DB)
COMMON_NAMES = {VERITY: "MANGOS image verity signing", DB: "MANGOS Secure Boot db"}
VALIDITY_DAYS = 3650


@dataclass(frozen=True)
class ReleaseKeys:
    """Paths of the release key pairs in one directory."""

    dir: Path

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    def cert(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    @property
    def verity_key(self) -> Path:
        return self.key(VERITY)

    @property
    def verity_cert(self) -> Path:
        return self.cert(VERITY)

    @property
    def db_key(self) -> Path:
        return self.key(DB)

    @property
    def db_cert(self) -> Path:
        return self.cert(DB)

    def exists(self) -> bool:
        """Any of the key files is there (a partial set is for :meth:`check` to explain, not to overwrite)."""
        return any(p.exists() for n in NAMES for p in (self.key(n), self.cert(n)))

    def check(self) -> ReleaseKeys:
        missing = [p.name for n in NAMES for p in (self.key(n), self.cert(n)) if not p.is_file()]
        if missing:
            raise TrustError(
                E.RELEASE_KEY,
                f"release keys missing in {self.dir}: {', '.join(missing)}",
                hint="run 'mangos-farm keys generate --release [DIR]' (or pass --release-keys DIR)",
            )
        return self


def default_dir(home: Path) -> Path:
    return home / "release"


def self_signed(key: rsa.RSAPrivateKey, common_name: str, *, code_signing: bool) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if code_signing:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CODE_SIGNING]), critical=False
        )
    return builder.sign(key, hashes.SHA256())


def generate(directory: Path, *, force: bool = False) -> ReleaseKeys:
    keys = ReleaseKeys(directory)
    existing = [p for n in NAMES for p in (keys.key(n),) if p.exists()]
    if existing and not force:
        raise TrustError(
            E.KEY_EXISTS,
            f"release keys already exist in {directory}",
            hint="keep them (enrolled firmware and issued images trust them), or pass --force to replace them",
        )
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    for name in NAMES:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = self_signed(key, COMMON_NAMES[name], code_signing=name == DB)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        atomic_write(keys.key(name), pem, mode=0o600)
        keys.cert(name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return keys


def load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise TrustError(
            E.RELEASE_KEY, f"cannot read certificate: {exc.strerror}", file=path, hint="check the path"
        ) from None
    except ValueError as exc:
        raise TrustError(
            E.RELEASE_KEY, f"not a PEM X.509 certificate: {exc}", file=path, hint="pass the release .crt file"
        ) from None


def load_key(path: Path) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise TrustError(E.RELEASE_KEY, f"cannot read key: {exc.strerror}", file=path, hint="check the path") from None
    except (ValueError, TypeError) as exc:
        raise TrustError(E.RELEASE_KEY, f"not a PEM private key: {exc}", file=path, hint="regenerate it") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TrustError(E.RELEASE_KEY, "not an RSA key", file=path, hint="release keys are RSA-2048")
    return key


def fingerprint(cert: x509.Certificate) -> str:
    """sha256 of the certificate's DER, hex: the DPS signature partition's ``certificateFingerprint``."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()

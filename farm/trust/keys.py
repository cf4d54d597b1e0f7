"""Builder keys: Ed25519, PEM on disk, identified by the sha256 of the public key's DER SubjectPublicKeyInfo.

Builder keys sign provenance on workers. Release keys (image, Secure Boot, verity) are a different type in a
different place and are never loaded by this module's callers on workers.

The keys a verifier trusts (:func:`trusted_keys`) are the organization's own builder key, the PEM files in
``$MANGOS_FARM_HOME/keys/trusted/`` and explicit extras, minus every key in ``$MANGOS_FARM_HOME/keys/revoked.json``
(``{keyid: {"time", "reason", "by"}}``, written by :func:`farm.trust.keyring.revoke`). A revoked key stays revoked
(its PEM may stay in trusted/ for the record), so from the revocation on every verification refuses what it
signed, old artifacts included.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from farm.errors import E, TrustError
from farm.fsutil import atomic_write
from farm.trust import pem as pemfmt

if TYPE_CHECKING:  # imported where a key signs or verifies: the library takes tens of ms to import
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PRIVATE_NAME = "builder.key"
PUBLIC_NAME = "builder.pub"
# The coordinator's own key signs task messages (farm.trust.tasksig); workers hold only its public half, so a process
# that can reach the broker but has no coordinator key cannot get a build run. It is not a builder key.
COORDINATOR_PRIVATE = "coordinator.key"
COORDINATOR_PUBLIC = "coordinator.pub"
REVOKED_NAME = "revoked.json"
KEYID = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Revocation:
    keyid: str
    time: str
    reason: str
    by: str = ""

    def to_json(self) -> dict[str, str]:
        return {"time": self.time, "reason": self.reason, "by": self.by}


def revoked_path(keys_dir: Path) -> Path:
    return keys_dir / REVOKED_NAME


def revocations(keys_dir: Path) -> dict[str, Revocation]:
    """The revoked keys. A damaged file is an error, never "nothing revoked" (that would re-trust them all)."""
    path = revoked_path(keys_dir)
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise TrustError(
            E.KEY_INVALID,
            f"cannot read the revocation list: {exc}",
            file=path,
            hint="restore it from a backup; until then no key is trusted",
        ) from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) and KEYID.match(str(k)) for k, v in data.items()):
        raise TrustError(
            E.KEY_INVALID,
            "the revocation list is not {keyid: {time, reason}}",
            file=path,
            hint="restore it from a backup",
        )
    return {
        k: Revocation(k, str(v.get("time", "")), str(v.get("reason", "")), str(v.get("by", "")))
        for k, v in data.items()
    }


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key by its DER SubjectPublicKeyInfo; the crypto library's object is made on first use."""

    der: bytes
    source: str = ""

    @classmethod
    def of(cls, key: Ed25519PublicKey, source: str = "") -> PublicKey:
        from cryptography.hazmat.primitives import serialization

        return cls(
            key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo), source
        )

    @cached_property
    def key(self) -> Ed25519PublicKey:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        from cryptography.hazmat.primitives.serialization import load_der_public_key

        key = load_der_public_key(self.der)
        assert isinstance(key, Ed25519PublicKey), "PublicKey holds Ed25519 keys only"
        return key

    @property
    def keyid(self) -> str:
        return hashlib.sha256(self.der).hexdigest()

    def pem(self) -> bytes:
        return pemfmt.public_pem(self.der)

    def verify(self, signature: bytes, data: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature

        try:
            self.key.verify(signature, data)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class BuilderKey:
    key: Ed25519PrivateKey

    @property
    def public(self) -> PublicKey:
        return PublicKey.of(self.key.public_key(), "builder key")

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)


def _generate() -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


def _write_private(private: Path, key: Ed25519PrivateKey) -> None:
    from cryptography.hazmat.primitives import serialization

    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    atomic_write(private, pem, mode=0o600)  # mkstemp: a fresh 0600 file, never a stale one with a looser mode


def generate(keys_dir: Path, force: bool = False, coordinator_dir: Path | None = None) -> BuilderKey:
    """The builder key pair; the coordinator's task-signing key pair is made too when there is none yet
    (see :func:`ensure_coordinator_key`)."""
    private = keys_dir / PRIVATE_NAME
    if private.exists() and not force:
        raise TrustError(
            E.KEY_EXISTS,
            f"a builder key already exists at {private}",
            hint="keep it (peers trust it), or pass --force to replace it and redistribute the public key",
        )
    keys_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(keys_dir, 0o700)
    key = _generate()
    _write_private(private, key)
    builder = BuilderKey(key)
    (keys_dir / PUBLIC_NAME).write_bytes(builder.public.pem())
    ensure_coordinator_key(coordinator_dir or keys_dir, keys_dir)
    return builder


def ensure_coordinator_key(coordinator_dir: Path, keys_dir: Path) -> BuilderKey:
    """The coordinator's key in ``coordinator_dir`` (made if missing), its public half also in ``keys_dir``, where
    workers look for it. Deployments keep the two apart: only the coordinator mounts ``coordinator_dir``."""
    key = coordinator_key(coordinator_dir)
    public = keys_dir / COORDINATOR_PUBLIC
    if not public.is_file() or public.read_bytes() != key.public.pem():
        keys_dir.mkdir(parents=True, exist_ok=True)
        public.write_bytes(key.public.pem())
    return key


def coordinator_key(keys_dir: Path) -> BuilderKey:
    """The coordinator's task-signing key, created on first use (the embedded farm's coordinator and workers share
    a home, so its public half is where the workers look). Fleets copy ``coordinator.pub`` to every worker."""
    private = keys_dir / COORDINATOR_PRIVATE
    if private.exists():
        return _load_private(private, "coordinator key")
    keys_dir.mkdir(parents=True, exist_ok=True)
    key = _generate()
    _write_private(private, key)
    signer = BuilderKey(key)
    (keys_dir / COORDINATOR_PUBLIC).write_bytes(signer.public.pem())
    return signer


def coordinator_public(keys_dir: Path) -> PublicKey:
    path = keys_dir / COORDINATOR_PUBLIC
    if not path.is_file():
        raise TrustError(
            E.KEY_MISSING,
            f"no coordinator public key at {path}: this worker cannot authenticate task messages",
            hint="copy the coordinator's keys/coordinator.pub into this worker's MANGOS_FARM_HOME/keys/",
        )
    return load_public(path)


def load_builder(keys_dir: Path) -> BuilderKey:
    return _load_private(keys_dir / PRIVATE_NAME, "builder key")


def check_builder(keys_dir: Path) -> None:
    """Raise what :func:`load_builder` would, without loading the crypto library when the file is the PKCS#8
    Ed25519 key ``keys generate`` writes: for a command that only needs to know the key is there (``rebuild``,
    whose workers sign)."""
    private = keys_dir / PRIVATE_NAME
    if not pemfmt.is_private(_read_private(private, "builder key")):
        _load_private(private, "builder key")  # anything else: the library decides, and says what is wrong


def _read_private(private: Path, what: str) -> bytes:
    try:
        return private.read_bytes()
    except FileNotFoundError:
        raise TrustError(
            E.KEY_MISSING,
            f"no {what} at {private}",
            hint="run 'mangos-farm keys generate' (or set MANGOS_FARM_HOME to where your key lives)",
        ) from None
    except OSError as exc:
        raise TrustError(
            E.KEY_MISSING,
            f"cannot read the {what}: {exc.strerror}",
            file=private,
            hint="check the path and permissions",
        ) from None


def _load_private(private: Path, what: str) -> BuilderKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = _read_private(private, what)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise TrustError(E.KEY_INVALID, f"cannot read the {what}: {exc}", file=private, hint="regenerate it") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise TrustError(E.KEY_INVALID, "not an Ed25519 key", file=private, hint="builder keys are Ed25519")
    return BuilderKey(key)


def load_public(path: Path) -> PublicKey:
    """The Ed25519 public key in the PEM file ``path`` (read without the crypto library when it is in the form
    OpenSSL and ``keys`` write)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TrustError(
            E.KEY_MISSING, f"cannot read public key: {exc.strerror}", file=path, hint="check the path"
        ) from None
    der = pemfmt.public_der(data)
    return PublicKey(der, str(path)) if der is not None else _parse_public(data, path)


def _parse_public(data: bytes, path: Path) -> PublicKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise TrustError(
            E.KEY_INVALID,
            f"not a PEM public key: {exc}",
            file=path,
            hint="export one with 'mangos-farm keys export-public'",
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise TrustError(E.KEY_INVALID, "not an Ed25519 public key", file=path, hint="builder keys are Ed25519")
    return PublicKey.of(key, str(path))


class TrustedKeys(list[PublicKey]):
    """Trusted builder keys, carrying the revocations they were filtered by so that verification can say
    "revoked" rather than "unknown" for a signature by a revoked key."""

    def __init__(self, keys: list[PublicKey], revoked: Mapping[str, Revocation] | None = None) -> None:
        super().__init__(keys)
        self.revoked: dict[str, Revocation] = dict(revoked or {})


def revoked_among(trusted: Sequence[PublicKey]) -> dict[str, Revocation]:
    """The revocations ``trusted`` was filtered by: none for a plain list of keys."""
    return trusted.revoked if isinstance(trusted, TrustedKeys) else {}


def trusted_keys(keys_dir: Path, trusted_dir: Path, extra: list[Path] | None = None) -> TrustedKeys:
    """This organization's own builder key, every PEM in the trusted directory, and explicit extras, minus every
    key revoked in ``keys_dir/revoked.json``: every verifier goes through here, so a revocation reaches fetch, verify,
    dependency staging, result acceptance and image assembly alike."""
    found: list[PublicKey] = []
    own = keys_dir / PUBLIC_NAME
    if own.is_file():
        found.append(load_public(own))
    if trusted_dir.is_dir():
        found.extend(load_public(p) for p in sorted(trusted_dir.glob("*.pem")))
    found.extend(load_public(p) for p in extra or [])
    revoked = revocations(keys_dir)
    unique: dict[str, PublicKey] = {}
    for key in found:
        if key.keyid not in revoked:
            unique.setdefault(key.keyid, key)
    return TrustedKeys(list(unique.values()), revoked)

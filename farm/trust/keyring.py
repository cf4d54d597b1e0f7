"""The organization's builder keyring: trusting a key, revoking one, listing them, and checking a store record.

The keyring's files (``keys/trusted/*.pem``, ``keys/revoked.json``) and the set a verifier trusts are described
and read in :mod:`farm.trust.keys`; this module changes them. A revoked key cannot be trusted again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from farm.errors import E, FarmError, TrustError
from farm.fsutil import atomic_write
from farm.store import BuildRecord, Store
from farm.trust import keys as keymod
from farm.trust.keys import KEYID, Revocation, revocations, revoked_path
from farm.trust.provenance import verify_envelope


def revoke(keys_dir: Path, keyid: str, reason: str, by: str = "") -> Revocation:
    if not KEYID.match(keyid):
        raise TrustError(
            E.KEY_INVALID,
            f"'{keyid}' is not a key id (64 lowercase hex digits)",
            field="KEYID",
            hint="see 'mangos-farm keys list' for the ids",
        )
    if not reason.strip():
        raise TrustError(E.KEY_INVALID, "a revocation needs a reason", field="--reason", hint="say why, for the audit")
    current = revocations(keys_dir)
    if keyid in current:
        return current[keyid]
    rev = Revocation(keyid, datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), reason.strip(), by)
    data = {k: r.to_json() for k, r in current.items()} | {keyid: rev.to_json()}
    keys_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(revoked_path(keys_dir), json.dumps(data, indent=1, sort_keys=True).encode() + b"\n")
    return rev


def trust(keys_dir: Path, trusted_dir: Path, pem: Path) -> keymod.PublicKey:
    """Add a builder public key to the keyring (``trusted/KEYID16.pem``). A revoked key cannot be trusted again."""
    key = keymod.load_public(pem)
    rev = revocations(keys_dir).get(key.keyid)
    if rev is not None:
        raise TrustError(
            E.KEY_REVOKED,
            f"key {key.keyid[:16]}... was revoked at {rev.time} ({rev.reason}); it cannot be trusted again",
            file=pem,
            hint="the builder must generate a new key and send its public half",
        )
    trusted_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(trusted_dir / f"{key.keyid[:16]}.pem", key.pem())
    return key


def listing(keys_dir: Path, trusted_dir: Path) -> list[dict[str, Any]]:
    """Every key the keyring knows, trusted or revoked, for ``keys list``."""
    rows: dict[str, dict[str, Any]] = {}
    own = keys_dir / keymod.PUBLIC_NAME
    paths = ([own] if own.is_file() else []) + (sorted(trusted_dir.glob("*.pem")) if trusted_dir.is_dir() else [])
    for path in paths:
        key = keymod.load_public(path)
        rows.setdefault(key.keyid, {"keyid": key.keyid, "source": str(path), "own": path == own})
    for keyid, rev in revocations(keys_dir).items():
        rows.setdefault(keyid, {"keyid": keyid, "source": "", "own": False})
        rows[keyid]["revoked"] = rev.to_json()
    return sorted(rows.values(), key=lambda r: (not r["own"], r["keyid"]))


def check_published(
    store: Store, build_key: str, trusted: Sequence[keymod.PublicKey], expected: Mapping[str, str] | None = None
) -> BuildRecord:
    """The store's record of ``build_key``, checked against its signed provenance and the keyring.

    The record (the store's index) is not trusted by itself: its provenance envelope must be signed by a trusted,
    unrevoked builder key, be about this build key, and name exactly the artifacts the record lists, each with the
    same sha256; and when ``expected`` (name -> sha256, e.g. what the coordinator passed) is given, those too. So a
    swapped index entry or blob is refused before anything uses it. Raises E-ARTIFACT-REFUSED / E-KEY-REVOKED.
    """

    def refuse(why: str) -> FarmError:
        return TrustError(
            E.ARTIFACT_REFUSED,
            f"build {build_key[:16]}... in the store is refused: {why}",
            hint="the store or its index was tampered with, or the builder is not trusted; investigate before use",
        )

    record = store.get_record(build_key)
    if record is None:
        raise refuse("it has no record")
    if not record.provenance:
        raise refuse("it has no signed provenance")
    try:
        envelope = json.loads(store.get_bytes(record.provenance))
        verified = verify_envelope(envelope, trusted)
    except FarmError as exc:
        if exc.code == E.KEY_REVOKED:
            raise
        raise refuse(f"its provenance does not verify ({exc.code}: {exc.message})") from None
    except ValueError as exc:
        raise refuse(f"its provenance is not JSON ({exc})") from None
    params = verified.statement.get("predicate", {}).get("buildDefinition", {}).get("internalParameters", {})
    if not isinstance(params, dict) or params.get("buildKey") != build_key:
        raise refuse("its provenance is about another build")
    subjects = verified.subjects()
    if subjects != record.outputs():
        raise refuse("the record's artifacts are not the ones its provenance signs")
    for name, digest in (expected or {}).items():
        if subjects.get(name) != digest:
            raise refuse(f"'{name}' is {digest[:16]}..., but the signed provenance says {subjects.get(name)}")
    return record

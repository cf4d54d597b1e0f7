"""The organization's builder keyring: trusting a key, revoking one, listing them, and checking a store record.

The keyring's files (``keys/trusted/*.pem``, ``keys/revoked.json``) and the set a verifier trusts are described
and read in :mod:`farm.trust.keys`; this module changes them. A revoked key cannot be trusted again.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from farm.errors import E, FarmError, TrustError
from farm.fsutil import atomic_write
from farm.settings import Settings
from farm.store import BuildRecord, Store
from farm.trust import keys as keymod
from farm.trust.keys import KEYID, Revocation, revocations, revoked_path
from farm.trust.memo import MemoKeys, ProvenanceMemo, keyring_digest, memo_path, record_digest
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
    store: Store,
    build_key: str,
    trusted: Sequence[keymod.PublicKey],
    expected: Mapping[str, str] | None = None,
    *,
    record: BuildRecord | None = None,
    memo: ProvenanceMemo | None = None,
) -> BuildRecord:
    """The store's record of ``build_key``, checked against its signed provenance and the keyring.

    The record (the store's index) is not trusted by itself: its provenance envelope must be signed by a trusted,
    unrevoked builder key, be about this build key, and name exactly the artifacts the record lists, each with the
    same sha256; and when ``expected`` (name -> sha256, e.g. what the coordinator passed) is given, those too. So a
    swapped index entry or blob is refused before anything uses it. Raises E-ARTIFACT-REFUSED / E-KEY-REVOKED.

    ``record``: the record the caller has just read from ``store`` for this key (checked instead of reading it
    again, so that what is checked is what the caller uses). ``memo`` (by default the one ``trusted`` carries, see
    :class:`~farm.trust.memo.MemoKeys`): a check that passed before for the same record bytes, envelope and keyring
    is not repeated; one that passes now is remembered.
    """

    def refuse(why: str) -> FarmError:
        return TrustError(
            E.ARTIFACT_REFUSED,
            f"build {build_key[:16]}... in the store is refused: {why}",
            hint="the store or its index was tampered with, or the builder is not trusted; investigate before use",
        )

    if record is None:
        record = store.get_record(build_key)
    if record is None:
        raise refuse("it has no record")
    if record.build_key != build_key:
        raise refuse(f"its record is about build {record.build_key[:16]}...")
    if not record.provenance:
        raise refuse("it has no signed provenance")
    if memo is None and isinstance(trusted, MemoKeys):
        memo = trusted.memo
    if memo is None:
        _verify_provenance(store, build_key, record, trusted, refuse)
    else:
        ring = trusted.digest if isinstance(trusted, MemoKeys) else keyring_digest(trusted)
        row = (build_key, record_digest(record), record.provenance, ring)
        if not memo.seen(*row):
            _verify_provenance(store, build_key, record, trusted, refuse)
            memo.remember(*row)
    subjects = record.outputs()  # equal to the signed subjects: checked now, or when the memo's row was written
    for name, digest in (expected or {}).items():
        if subjects.get(name) != digest:
            raise refuse(f"'{name}' is {digest[:16]}..., but the signed provenance says {subjects.get(name)}")
    return record


def _verify_provenance(
    store: Store,
    build_key: str,
    record: BuildRecord,
    trusted: Sequence[keymod.PublicKey],
    refuse: Callable[[str], FarmError],
) -> None:
    """Check ``record``'s envelope: signed by a trusted, unrevoked key, about ``build_key``, naming exactly the
    record's artifacts."""
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
    if verified.subjects() != record.outputs():
        raise refuse("the record's artifacts are not the ones its provenance signs")


class LiveKeyring:
    """The farm's keyring as its files are now, with the farm's provenance memo: calling it returns the trusted keys
    (:class:`~farm.trust.memo.MemoKeys`), read again whenever one of the key files changed (a revocation included),
    so a check never uses a keyring older than the files. Checking the files costs a few ``stat`` calls."""

    def __init__(self, keys_dir: Path, trusted_dir: Path, memo: ProvenanceMemo) -> None:
        self.keys_dir, self.trusted_dir, self.memo = keys_dir, trusted_dir, memo
        self._files: tuple[tuple[object, ...], ...] | None = None
        self._keys: MemoKeys | None = None
        self._lock = threading.Lock()

    def _signature(self) -> tuple[tuple[object, ...], ...]:
        """What identifies the keyring files' contents: each file's inode, size, mtime and ctime (ns)."""
        entries: list[tuple[object, ...]] = []
        for path in (self.keys_dir / keymod.PUBLIC_NAME, revoked_path(self.keys_dir)):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                entries.append((path.name,))
                continue
            entries.append((path.name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        try:
            with os.scandir(self.trusted_dir) as found:
                for entry in found:
                    if entry.name.endswith(".pem"):
                        st = entry.stat()
                        entries.append((f"trusted/{entry.name}", st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        except FileNotFoundError:
            pass
        return tuple(sorted(entries, key=str))

    def __call__(self) -> MemoKeys:
        files = self._signature()
        with self._lock:
            if self._keys is None or files != self._files:
                keys = keymod.trusted_keys(self.keys_dir, self.trusted_dir)
                self._keys, self._files = MemoKeys(keys, self.memo), files
            return self._keys


def farm_keyring(settings: Settings) -> LiveKeyring:
    """This farm's keyring (``keys/``, ``keys/trusted/``, ``keys/revoked.json``) with its memo under the cache."""
    return LiveKeyring(settings.keys_dir, settings.trusted_keys_dir, ProvenanceMemo(memo_path(settings)))

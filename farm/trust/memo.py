"""A local memo of provenance checks that passed, so that a mostly cached plan does not verify every signed
provenance document again on each run.

A row says: the record of ``build_key`` whose content hashes to ``record_sha`` (:func:`record_digest`), naming
the DSSE envelope ``envelope_sha`` (a content-addressed blob, so its sha256 is its name in the record), was checked
against the keyring whose digest is ``keyring``, and passed. Invariants:

- only passed checks are remembered; a refusal is never stored, so it is decided again every time;
- a hit needs all four to match: a rewritten record (or one naming another envelope) is verified again, and any
  change of the keyring (a key trusted, removed or revoked) changes its digest, so nothing verified under the old
  keyring is a hit under the new one;
- the memo can only say "verify it" or "it passed before": a missing, damaged or locked memo file means verifying,
  never accepting. It is a cache in the farm's home (mode 0600), as trustworthy as the keyring files beside it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from farm.settings import Settings
from farm.store import BuildRecord
from farm.trust.keys import PublicKey, TrustedKeys, revoked_among

log = logging.getLogger(__name__)

MEMO_NAME = "provenance-memo.sqlite"
SCHEMA_VERSION = 1
STALE_SECONDS = 24 * 3600  # rows of another keyring are dropped once this old (another process may still use them)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS verified (
    build_key TEXT NOT NULL,
    keyring TEXT NOT NULL,
    record_sha TEXT NOT NULL,
    envelope_sha TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (build_key, keyring)
) WITHOUT ROWID
"""


def memo_path(settings: Settings) -> Path:
    """Where this farm keeps its memo: a cache, safe to delete at any time."""
    return settings.cache_dir / MEMO_NAME


def keyring_digest(trusted: Sequence[PublicKey]) -> str:
    """The digest of a keyring: its trusted key ids and the key ids it revoked, sorted. Equal digests mean the same
    verification outcome for any envelope."""
    lines = [f"trusted {k.keyid}" for k in trusted] + [f"revoked {k}" for k in revoked_among(trusted)]
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()


def record_digest(record: BuildRecord) -> str:
    """The sha256 of what the record says: of the stored bytes it was read from, where a store read it
    (:attr:`~farm.store.BuildRecord.stored_sha256`: no serialising again), else of the canonical JSON of all its
    fields. Either way any change to the record changes it; the two forms differ for one record, which only costs
    a check done again."""
    if record.stored_sha256 is not None:
        return "raw:" + record.stored_sha256
    body = json.dumps(vars(record), sort_keys=True, separators=(",", ":"), default=vars)
    return hashlib.sha256(body.encode()).hexdigest()


class ProvenanceMemo:
    """The memo in one SQLite file; thread-safe, shared by processes (WAL). ``hits`` and ``misses`` count lookups
    in this process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._broken = False
        self._pruned: set[str] = set()
        self._rows: dict[str, dict[str, tuple[str, str]]] = {}  # keyring -> build key -> (record, envelope)

    def __repr__(self) -> str:
        return f"ProvenanceMemo({str(self.path)!r})"

    def _connect(self) -> sqlite3.Connection | None:
        """The open memo; a file that is not a usable memo is replaced by an empty one (it is only a cache)."""
        if self._db is not None or self._broken:
            return self._db
        for attempt in (1, 2):
            try:
                self._db = self._open()
                return self._db
            except (OSError, sqlite3.Error) as exc:
                if attempt == 2 or isinstance(exc, OSError):
                    self._give_up(exc)
                    return None
                log.warning("provenance memo %s unreadable (%s): starting a new one", self.path, exc)
                for name in (self.path.name, self.path.name + "-wal", self.path.name + "-shm"):
                    (self.path.parent / name).unlink(missing_ok=True)
        return None

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                db.execute("DROP TABLE IF EXISTS verified")
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute(_SCHEMA)
        except sqlite3.Error:
            db.close()
            raise
        return db

    def _give_up(self, exc: Exception) -> None:
        """A memo that cannot be used is ignored for the rest of this process: everything is verified."""
        log.warning("provenance memo %s unusable (%s): verifying every record", self.path, exc)
        self._broken = True
        if self._db is not None:
            self._db.close()
            self._db = None

    def _known(self, keyring: str) -> dict[str, tuple[str, str]]:
        """Every row of ``keyring``, read from the file once per process (a row states a fact that stays true, so a
        copy in memory cannot be stale, only incomplete: a row another process adds later is just a miss here)."""
        rows = self._rows.get(keyring)
        if rows is None:
            rows = self._rows[keyring] = {}
            db = self._connect()
            if db is not None:
                try:
                    found = db.execute(
                        "SELECT build_key, record_sha, envelope_sha FROM verified WHERE keyring = ?", (keyring,)
                    )
                    rows.update((key, (record, envelope)) for key, record, envelope in found)
                except sqlite3.Error as exc:
                    self._give_up(exc)
        return rows

    def seen(self, build_key: str, record_sha: str, envelope_sha: str, keyring: str) -> bool:
        """Whether exactly this record and envelope passed the check under exactly this keyring."""
        with self._lock:
            hit = self._known(keyring).get(build_key) == (record_sha, envelope_sha)
            if hit:
                self.hits += 1
            else:
                self.misses += 1
            return hit

    def remember(self, build_key: str, record_sha: str, envelope_sha: str, keyring: str) -> None:
        """Note a check that passed (callers never note a refusal). Rows of other keyrings are dropped once stale."""
        with self._lock:
            self._known(keyring)[build_key] = (record_sha, envelope_sha)
            db = self._connect()
            if db is None:
                return
            now = time.time()
            try:
                db.execute(
                    "INSERT OR REPLACE INTO verified VALUES (?, ?, ?, ?, ?)",
                    (build_key, keyring, record_sha, envelope_sha, now),
                )
                if keyring not in self._pruned:
                    self._pruned.add(keyring)
                    db.execute("DELETE FROM verified WHERE keyring != ? AND at < ?", (keyring, now - STALE_SECONDS))
            except sqlite3.Error as exc:
                self._give_up(exc)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class MemoKeys(TrustedKeys):
    """Trusted keys (with the revocations they were filtered by) plus the memo of checks that passed under them,
    and their :func:`keyring_digest`, so that :func:`farm.trust.keyring.check_published` can skip what passed."""

    def __init__(self, keys: TrustedKeys, memo: ProvenanceMemo) -> None:
        super().__init__(list(keys), keys.revoked)
        self.memo = memo
        self.digest = keyring_digest(self)

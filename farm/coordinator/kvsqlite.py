"""The embedded state store: SQLite, safe for several processes on one machine (WAL, busy timeout).

One table per kind of key (plain keys with an expiry checked on read, hashes, sets, sorted sets, lists). A write
of several statements, and every :class:`~farm.coordinator.kvbase.Batch`, is one ``BEGIN IMMEDIATE`` transaction.
A blocking pop polls (the list is a local file): from 1 ms between looks, growing to 20 ms while nothing comes.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from farm.coordinator.kvbase import KV, Batch

_TABLES = (
    "CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v BLOB NOT NULL, exp REAL)",
    "CREATE INDEX IF NOT EXISTS kv_by_exp ON kv (exp) WHERE exp IS NOT NULL",  # expired keys found without a scan
    "CREATE TABLE IF NOT EXISTS h (k TEXT, f TEXT, v BLOB NOT NULL, PRIMARY KEY (k, f))",
    "CREATE TABLE IF NOT EXISTS s (k TEXT, m TEXT, PRIMARY KEY (k, m))",
    "CREATE TABLE IF NOT EXISTS z (k TEXT, m TEXT, s REAL NOT NULL, PRIMARY KEY (k, m))",
    "CREATE INDEX IF NOT EXISTS z_by_score ON z (k, s, m)",
    "CREATE TABLE IF NOT EXISTS l (id INTEGER PRIMARY KEY AUTOINCREMENT, k TEXT NOT NULL, v BLOB NOT NULL)",
    "CREATE INDEX IF NOT EXISTS l_by_key ON l (k, id)",
)
_KINDS = ("h", "s", "z", "l")
PURGE_EVERY = 60.0  # seconds between deletions of expired keys (leases, beats, nonces), per process


class SqliteKV(KV):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.url = f"sqlite:///{path}"
        self._local = threading.local()
        self._purged = 0.0
        db = self._db()
        for statement in _TABLES:
            db.execute(statement)

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # -- plain keys --------------------------------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        return self.mget([key])[0]

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        found: dict[str, bytes] = {}
        now = time.time()
        db = self._db()
        for i in range(0, len(keys), 500):
            chunk = list(keys[i : i + 500])
            marks = ",".join("?" * len(chunk))
            for k, v, exp in db.execute(f"SELECT k, v, exp FROM kv WHERE k IN ({marks})", chunk):  # noqa: S608
                if exp is None or exp > now:
                    found[k] = bytes(v)
        return [found.get(k) for k in keys]

    def set(self, key: str, value: bytes, *, ttl: float | None = None, only_if_absent: bool = False) -> bool:
        if ttl is not None:
            self.purge_expired()
        if not only_if_absent:
            self._set(self._db(), key, value, ttl)
            return True
        with self._tx() as db:
            if self.get(key) is not None:
                return False
            self._set(db, key, value, ttl)
        return True

    def purge_expired(self, *, now: float | None = None, every: float = PURGE_EVERY) -> int:
        """Delete the keys whose expiry has passed (every read ignores them already), at most once per ``every``
        seconds in this process: a key written with a TTL (a lease, a beat, a spent nonce) does not stay in the
        file forever. How many were deleted."""
        now = time.time() if now is None else now
        if now - self._purged < every:
            return 0
        self._purged = now
        cur = self._db().execute("DELETE FROM kv WHERE exp IS NOT NULL AND exp <= ?", (now,))
        return cur.rowcount

    def swap(self, key: str, expected: bytes | None, value: bytes | None, *, ttl: float | None = None) -> bool:
        with self._tx() as db:
            row = db.execute("SELECT v, exp FROM kv WHERE k = ?", (key,)).fetchone()
            current = bytes(row[0]) if row and (row[1] is None or row[1] > time.time()) else None
            if current != expected:
                return False
            if value is None:
                db.execute("DELETE FROM kv WHERE k = ?", (key,))
            else:
                self._set(db, key, value, ttl)
        return True

    @staticmethod
    def _set(db: sqlite3.Connection, key: str, value: bytes, ttl: float | None) -> None:
        exp = time.time() + ttl if ttl is not None else None
        db.execute("INSERT OR REPLACE INTO kv (k, v, exp) VALUES (?, ?, ?)", (key, value, exp))

    def delete(self, *keys: str) -> None:
        with self._tx() as db:
            self._delete(db, *keys)

    @staticmethod
    def _delete(db: sqlite3.Connection, *keys: str) -> None:
        for table in ("kv", *_KINDS):
            db.executemany(f"DELETE FROM {table} WHERE k = ?", [(k,) for k in keys])  # noqa: S608

    def keys(self, prefix: str) -> list[str]:
        like = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        db = self._db()
        found = {
            r[0]
            for r in db.execute(
                "SELECT k FROM kv WHERE k LIKE ? ESCAPE '\\' AND (exp IS NULL OR exp > ?)", (like, time.time())
            )
        }
        for table in _KINDS:
            found |= {r[0] for r in db.execute(f"SELECT DISTINCT k FROM {table} WHERE k LIKE ? ESCAPE '\\'", (like,))}  # noqa: S608
        return sorted(found)

    # -- hashes and counters -----------------------------------------------------------------------------------
    def hset(self, key: str, mapping: Mapping[str, bytes]) -> None:
        with self._tx() as db:
            self._hset(db, key, mapping)

    @staticmethod
    def _hset(db: sqlite3.Connection, key: str, mapping: Mapping[str, bytes]) -> None:
        db.executemany("INSERT OR REPLACE INTO h (k, f, v) VALUES (?, ?, ?)", [(key, f, v) for f, v in mapping.items()])

    def hget(self, key: str, field: str) -> bytes | None:
        return self.hmget(key, [field])[0]

    def hmget(self, key: str, fields: Sequence[str]) -> list[bytes | None]:
        found: dict[str, bytes] = {}
        db = self._db()
        for i in range(0, len(fields), 500):
            chunk = list(fields[i : i + 500])
            marks = ",".join("?" * len(chunk))
            rows = db.execute(f"SELECT f, v FROM h WHERE k = ? AND f IN ({marks})", [key, *chunk])  # noqa: S608
            found.update((f, bytes(v)) for f, v in rows)
        return [found.get(f) for f in fields]

    def hgetall(self, key: str) -> dict[str, bytes]:
        return {r[0]: bytes(r[1]) for r in self._db().execute("SELECT f, v FROM h WHERE k = ?", (key,))}

    def hvalues_json(self, key: str) -> list[Any]:
        values = [bytes(r[0]) for r in self._db().execute("SELECT v FROM h WHERE k = ?", (key,))]
        decoded: list[Any] = json.loads(b"[" + b",".join(values) + b"]")
        return decoded

    def hdel(self, key: str, *fields: str) -> None:
        with self._tx() as db:
            self._hdel(db, key, *fields)

    @staticmethod
    def _hdel(db: sqlite3.Connection, key: str, *fields: str) -> None:
        db.executemany("DELETE FROM h WHERE k = ? AND f = ?", [(key, f) for f in fields])

    def hincrby(self, key: str, field: str, amount: int = 1) -> int:
        with self._tx() as db:
            return self._hincrby(db, key, field, amount)

    @staticmethod
    def _hincrby(db: sqlite3.Connection, key: str, field: str, amount: int = 1) -> int:
        row = db.execute("SELECT v FROM h WHERE k = ? AND f = ?", (key, field)).fetchone()
        value = int(bytes(row[0])) + amount if row else amount
        db.execute("INSERT OR REPLACE INTO h (k, f, v) VALUES (?, ?, ?)", (key, field, str(value).encode()))
        return value

    # -- sets --------------------------------------------------------------------------------------------------
    def sadd(self, key: str, *members: str) -> None:
        with self._tx() as db:
            self._sadd(db, key, *members)

    @staticmethod
    def _sadd(db: sqlite3.Connection, key: str, *members: str) -> None:
        db.executemany("INSERT OR IGNORE INTO s (k, m) VALUES (?, ?)", [(key, m) for m in members])

    def srem(self, key: str, *members: str) -> None:
        with self._tx() as db:
            self._srem(db, key, *members)

    @staticmethod
    def _srem(db: sqlite3.Connection, key: str, *members: str) -> None:
        db.executemany("DELETE FROM s WHERE k = ? AND m = ?", [(key, m) for m in members])

    def smembers(self, key: str) -> builtins.set[str]:
        return {r[0] for r in self._db().execute("SELECT m FROM s WHERE k = ?", (key,))}

    # -- sorted sets -------------------------------------------------------------------------------------------
    def zadd(self, key: str, mapping: Mapping[str, float]) -> None:
        with self._tx() as db:
            self._zadd(db, key, mapping)

    @staticmethod
    def _zadd(db: sqlite3.Connection, key: str, mapping: Mapping[str, float]) -> None:
        rows = [(key, m, float(s)) for m, s in mapping.items()]
        db.executemany("INSERT OR REPLACE INTO z (k, m, s) VALUES (?, ?, ?)", rows)

    def zrem(self, key: str, *members: str) -> None:
        with self._tx() as db:
            self._zrem(db, key, *members)

    @staticmethod
    def _zrem(db: sqlite3.Connection, key: str, *members: str) -> None:
        db.executemany("DELETE FROM z WHERE k = ? AND m = ?", [(key, m) for m in members])

    def zrange(self, key: str, start: int = 0, stop: int = -1) -> list[tuple[str, float]]:
        if start < 0 or stop < 0:
            size = self.zcard(key)
            start, stop = (start + size if start < 0 else start), (stop + size if stop < 0 else stop)
        start = max(0, start)
        if stop < start:
            return []
        rows = self._db().execute(
            "SELECT m, s FROM z WHERE k = ? ORDER BY s, m LIMIT ? OFFSET ?", (key, stop - start + 1, start)
        )
        return [(m, float(s)) for m, s in rows]

    def zrangebyscore(
        self, key: str, low: float, high: float, *, offset: int = 0, count: int | None = None
    ) -> list[tuple[str, float]]:
        rows = self._db().execute(
            "SELECT m, s FROM z WHERE k = ? AND s >= ? AND s <= ? ORDER BY s, m LIMIT ? OFFSET ?",
            (key, low, high, -1 if count is None else count, offset),
        )
        return [(m, float(s)) for m, s in rows]

    def zrank(self, key: str, member: str) -> int | None:
        db = self._db()
        row = db.execute("SELECT s FROM z WHERE k = ? AND m = ?", (key, member)).fetchone()
        if row is None:
            return None
        below = db.execute(
            "SELECT COUNT(*) FROM z WHERE k = ? AND (s < ? OR (s = ? AND m < ?))", (key, row[0], row[0], member)
        ).fetchone()
        return int(below[0])

    def zcard(self, key: str) -> int:
        return int(self._db().execute("SELECT COUNT(*) FROM z WHERE k = ?", (key,)).fetchone()[0])

    # -- lists as queues ---------------------------------------------------------------------------------------
    def rpush(self, key: str, *values: bytes) -> int:
        with self._tx() as db:
            self._rpush(db, key, *values)
            return self._llen(db, key)

    @staticmethod
    def _rpush(db: sqlite3.Connection, key: str, *values: bytes) -> None:
        db.executemany("INSERT INTO l (k, v) VALUES (?, ?)", [(key, v) for v in values])

    def pop(self, key: str, count: int = 1) -> list[bytes]:
        db = self._db()
        if db.execute("SELECT 1 FROM l WHERE k = ? LIMIT 1", (key,)).fetchone() is None:
            return []  # the common case of an idle poll takes no write lock
        with self._tx() as db:
            rows = db.execute("SELECT id, v FROM l WHERE k = ? ORDER BY id LIMIT ?", (key, count)).fetchall()
            db.executemany("DELETE FROM l WHERE id = ?", [(r[0],) for r in rows])
        return [bytes(r[1]) for r in rows]

    def bpop(self, key: str, count: int, timeout: float) -> list[bytes]:
        deadline = time.monotonic() + timeout
        pause = 0.001
        while True:
            found = self.pop(key, count)
            left = deadline - time.monotonic()
            if found or left <= 0:
                return found
            time.sleep(min(pause, left))
            pause = min(0.02, pause * 1.5)

    def llen(self, key: str) -> int:
        return self._llen(self._db(), key)

    @staticmethod
    def _llen(db: sqlite3.Connection, key: str) -> int:
        return int(db.execute("SELECT COUNT(*) FROM l WHERE k = ?", (key,)).fetchone()[0])

    # -- batches -----------------------------------------------------------------------------------------------
    def apply(self, batch: Batch) -> None:
        with self._tx() as db:
            for name, args in batch.ops:
                if name == "set":
                    self._set(db, *args)
                else:
                    getattr(self, f"_{name}")(db, *args)

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

"""The coordinator's state lives in a small key-value interface with two implementations: SQLite on one machine
(the embedded default) and Redis for a fleet. Both give keys with optional expiry (leases, heartbeats) and hashes
(a run's builds). One conformance suite runs against both.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from farm.errors import E, FarmError


class KV(ABC):
    url: str

    @abstractmethod
    def get(self, key: str) -> bytes | None: ...

    @abstractmethod
    def set(self, key: str, value: bytes, *, ttl: float | None = None, only_if_absent: bool = False) -> bool:
        """Store a value (expiring after ``ttl`` seconds); with only_if_absent, False if the key existed."""

    @abstractmethod
    def delete(self, *keys: str) -> None: ...

    @abstractmethod
    def keys(self, prefix: str) -> list[str]:
        """Live keys starting with ``prefix`` (plain keys and hashes), sorted."""

    @abstractmethod
    def hset(self, key: str, mapping: dict[str, bytes]) -> None: ...

    @abstractmethod
    def hget(self, key: str, field: str) -> bytes | None: ...

    @abstractmethod
    def hgetall(self, key: str) -> dict[str, bytes]: ...

    @abstractmethod
    def hdel(self, key: str, *fields: str) -> None: ...

    def close(self) -> None:  # noqa: B027 - optional for implementations holding connections
        pass


class SqliteKV(KV):
    """Safe for several processes on one machine (WAL, busy timeout); expiry is checked on read."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.url = f"sqlite:///{path}"
        self._local = threading.local()
        with self._db() as db:
            db.execute("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v BLOB NOT NULL, exp REAL)")
            db.execute("CREATE TABLE IF NOT EXISTS h (k TEXT, f TEXT, v BLOB NOT NULL, PRIMARY KEY (k, f))")

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    def get(self, key: str) -> bytes | None:
        row = self._db().execute("SELECT v, exp FROM kv WHERE k = ?", (key,)).fetchone()
        if row is None or (row[1] is not None and row[1] <= time.time()):
            return None
        return bytes(row[0])

    def set(self, key: str, value: bytes, *, ttl: float | None = None, only_if_absent: bool = False) -> bool:
        exp = time.time() + ttl if ttl is not None else None
        db = self._db()
        if only_if_absent:
            db.execute("BEGIN IMMEDIATE")
            try:
                if self.get(key) is not None:
                    db.execute("ROLLBACK")
                    return False
                db.execute("INSERT OR REPLACE INTO kv (k, v, exp) VALUES (?, ?, ?)", (key, value, exp))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return True
        db.execute("INSERT OR REPLACE INTO kv (k, v, exp) VALUES (?, ?, ?)", (key, value, exp))
        return True

    def delete(self, *keys: str) -> None:
        db = self._db()
        for key in keys:
            db.execute("DELETE FROM kv WHERE k = ?", (key,))
            db.execute("DELETE FROM h WHERE k = ?", (key,))

    def keys(self, prefix: str) -> list[str]:
        like = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        db = self._db()
        plain = db.execute(
            "SELECT k FROM kv WHERE k LIKE ? ESCAPE '\\' AND (exp IS NULL OR exp > ?)", (like, time.time())
        ).fetchall()
        hashes = db.execute("SELECT DISTINCT k FROM h WHERE k LIKE ? ESCAPE '\\'", (like,)).fetchall()
        return sorted({r[0] for r in plain} | {r[0] for r in hashes})

    def hset(self, key: str, mapping: dict[str, bytes]) -> None:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT OR REPLACE INTO h (k, f, v) VALUES (?, ?, ?)", [(key, f, v) for f, v in mapping.items()]
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def hget(self, key: str, field: str) -> bytes | None:
        row = self._db().execute("SELECT v FROM h WHERE k = ? AND f = ?", (key, field)).fetchone()
        return bytes(row[0]) if row else None

    def hgetall(self, key: str) -> dict[str, bytes]:
        rows = self._db().execute("SELECT f, v FROM h WHERE k = ?", (key,)).fetchall()
        return {r[0]: bytes(r[1]) for r in rows}

    def hdel(self, key: str, *fields: str) -> None:
        db = self._db()
        for f in fields:
            db.execute("DELETE FROM h WHERE k = ? AND f = ?", (key, f))

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


class RedisKV(KV):
    """Redis, with reconnection and retries, so a Redis restart is a pause rather than a failure."""

    def __init__(self, url: str, *, retry_seconds: float = 60.0) -> None:
        import redis
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        self.url = url
        attempts = max(1, int(retry_seconds / 2))
        self._redis: Any = redis.Redis.from_url(
            url,
            retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), attempts),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
            socket_connect_timeout=2,
            socket_timeout=10,
            health_check_interval=10,
        )
        self._errors = (redis.ConnectionError, redis.TimeoutError)

    def _call(self, fn: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self._redis, fn)(*args, **kwargs)
        except self._errors as exc:
            raise FarmError(
                E.STATE_UNREACHABLE,
                f"cannot reach the coordinator state at {self.url}: {exc}",
                hint="check that Redis is running and MANGOS_FARM_BROKER / MANGOS_FARM_STATE point at it",
            ) from None

    def get(self, key: str) -> bytes | None:
        value: bytes | None = self._call("get", key)
        return value

    def set(self, key: str, value: bytes, *, ttl: float | None = None, only_if_absent: bool = False) -> bool:
        px = int(ttl * 1000) if ttl is not None else None
        return bool(self._call("set", key, value, px=px, nx=only_if_absent))

    def delete(self, *keys: str) -> None:
        if keys:
            self._call("delete", *keys)

    def keys(self, prefix: str) -> list[str]:
        found = self._call("scan_iter", match=prefix.replace("*", r"\*") + "*", count=1000)
        return sorted(k.decode() for k in found)

    def hset(self, key: str, mapping: dict[str, bytes]) -> None:
        if mapping:
            self._call("hset", key, mapping=mapping)

    def hget(self, key: str, field: str) -> bytes | None:
        value: bytes | None = self._call("hget", key, field)
        return value

    def hgetall(self, key: str) -> dict[str, bytes]:
        return {k.decode(): v for k, v in self._call("hgetall", key).items()}

    def hdel(self, key: str, *fields: str) -> None:
        if fields:
            self._call("hdel", key, *fields)

    def close(self) -> None:
        self._redis.close()


def open_kv(url: str) -> KV:
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisKV(url)
    if url.startswith("sqlite:///"):
        return SqliteKV(Path(url[len("sqlite:///") :]))
    raise FarmError(
        E.SETTINGS,
        f"unsupported coordinator state URL '{url}'",
        field="MANGOS_FARM_STATE",
        hint="use redis://HOST:PORT/DB or sqlite:////absolute/path.sqlite",
    )

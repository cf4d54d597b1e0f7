"""The coordinator's state lives in a small key-value interface (:class:`KV`, :mod:`farm.coordinator.kvbase`) with
two implementations: SQLite on one machine (the embedded default, :mod:`farm.coordinator.kvsqlite`) and Redis for a
fleet (:mod:`farm.coordinator.kvredis`). One conformance suite runs against both (tests/coordinator/test_kv.py).
"""

from __future__ import annotations

from pathlib import Path

from farm.coordinator.kvbase import KV, Batch
from farm.coordinator.kvredis import RedisKV
from farm.coordinator.kvsqlite import SqliteKV
from farm.errors import E, FarmError

__all__ = ["KV", "Batch", "RedisKV", "SqliteKV", "open_kv"]


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

"""The coordinator's key-value interface: what both state stores (:mod:`farm.coordinator.kvsqlite`,
:mod:`farm.coordinator.kvredis`) offer, with Redis's semantics. One conformance suite runs against both.

Values are bytes; keys, hash fields and set or sorted-set members are strings. Plain keys may expire (leases,
heartbeats, worker registrations). Beside plain keys and hashes there are counters (:meth:`KV.hincrby`), sets,
sorted sets (ordered by score, then by member), and lists used as queues (:meth:`KV.rpush` at the tail,
:meth:`KV.pop` / :meth:`KV.bpop` from the head). Writes collected in a :class:`Batch` are applied together: one
Redis pipeline (one round trip, no MULTI), one SQLite transaction.
"""

from __future__ import annotations

import builtins
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

Op = tuple[str, tuple[Any, ...]]


class Batch:
    """Writes to apply together (:meth:`KV.batch`); the same signatures as the :class:`KV` methods of the same
    names. Order is kept."""

    def __init__(self) -> None:
        self.ops: list[Op] = []

    def __len__(self) -> int:
        return len(self.ops)

    def set(self, key: str, value: bytes, *, ttl: float | None = None) -> None:
        self.ops.append(("set", (key, value, ttl)))

    def delete(self, *keys: str) -> None:
        if keys:
            self.ops.append(("delete", keys))

    def hset(self, key: str, mapping: Mapping[str, bytes]) -> None:
        if mapping:
            self.ops.append(("hset", (key, dict(mapping))))

    def hdel(self, key: str, *fields: str) -> None:
        if fields:
            self.ops.append(("hdel", (key, *fields)))

    def hincrby(self, key: str, field: str, amount: int = 1) -> None:
        self.ops.append(("hincrby", (key, field, amount)))

    def zadd(self, key: str, mapping: Mapping[str, float]) -> None:
        if mapping:
            self.ops.append(("zadd", (key, dict(mapping))))

    def zrem(self, key: str, *members: str) -> None:
        if members:
            self.ops.append(("zrem", (key, *members)))

    def sadd(self, key: str, *members: str) -> None:
        if members:
            self.ops.append(("sadd", (key, *members)))

    def srem(self, key: str, *members: str) -> None:
        if members:
            self.ops.append(("srem", (key, *members)))

    def rpush(self, key: str, *values: bytes) -> None:
        if values:
            self.ops.append(("rpush", (key, *values)))


class KV(ABC):
    url: str

    # -- plain keys --------------------------------------------------------------------------------------------
    @abstractmethod
    def get(self, key: str) -> bytes | None: ...

    @abstractmethod
    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values of ``keys``, in order (None: absent or expired)."""

    @abstractmethod
    def set(self, key: str, value: bytes, *, ttl: float | None = None, only_if_absent: bool = False) -> bool:
        """Store a value (expiring after ``ttl`` seconds); with only_if_absent, False if the key existed."""

    @abstractmethod
    def swap(self, key: str, expected: bytes | None, value: bytes | None, *, ttl: float | None = None) -> bool:
        """Compare and set a plain key, atomically: if its value is ``expected`` (None: absent or expired), make it
        ``value`` (None: delete it), expiring after ``ttl`` seconds; whether it did. A lease held by one process
        among several is taken, renewed and given back with this."""

    @abstractmethod
    def delete(self, *keys: str) -> None:
        """Remove keys of any kind (plain, hash, set, sorted set, list)."""

    @abstractmethod
    def keys(self, prefix: str) -> list[str]:
        """Live keys of any kind starting with ``prefix``, sorted. A scan of the whole keyspace: not for ticks."""

    # -- hashes and counters -----------------------------------------------------------------------------------
    @abstractmethod
    def hset(self, key: str, mapping: Mapping[str, bytes]) -> None: ...

    @abstractmethod
    def hget(self, key: str, field: str) -> bytes | None: ...

    @abstractmethod
    def hmget(self, key: str, fields: Sequence[str]) -> list[bytes | None]: ...

    @abstractmethod
    def hgetall(self, key: str) -> dict[str, bytes]: ...

    @abstractmethod
    def hvalues_json(self, key: str) -> list[Any]:
        """Every value of a hash whose values are JSON documents, decoded in one parse (a hash of tens of thousands
        of fields is read several times faster than with :meth:`hgetall` and a parse per value). No order."""

    @abstractmethod
    def hdel(self, key: str, *fields: str) -> None: ...

    @abstractmethod
    def hincrby(self, key: str, field: str, amount: int = 1) -> int:
        """Add ``amount`` to the integer in ``field`` (absent: 0), atomically; the new value."""

    # -- sets --------------------------------------------------------------------------------------------------
    @abstractmethod
    def sadd(self, key: str, *members: str) -> None: ...

    @abstractmethod
    def srem(self, key: str, *members: str) -> None: ...

    @abstractmethod
    def smembers(self, key: str) -> builtins.set[str]: ...

    # -- sorted sets -------------------------------------------------------------------------------------------
    @abstractmethod
    def zadd(self, key: str, mapping: Mapping[str, float]) -> None:
        """Add members with scores (an existing member's score is replaced)."""

    @abstractmethod
    def zrem(self, key: str, *members: str) -> None: ...

    @abstractmethod
    def zrange(self, key: str, start: int = 0, stop: int = -1) -> list[tuple[str, float]]:
        """Members with their scores by rank, lowest score first (ties: by member), ``start`` to ``stop``
        inclusive; negative ranks count from the end (-1: the last)."""

    @abstractmethod
    def zrangebyscore(
        self, key: str, low: float, high: float, *, offset: int = 0, count: int | None = None
    ) -> list[tuple[str, float]]:
        """Members with ``low <= score <= high``, lowest first, skipping ``offset``, at most ``count``."""

    @abstractmethod
    def zrank(self, key: str, member: str) -> int | None:
        """The member's rank (0: the lowest score), or None if absent."""

    @abstractmethod
    def zcard(self, key: str) -> int: ...

    # -- lists as queues ---------------------------------------------------------------------------------------
    @abstractmethod
    def rpush(self, key: str, *values: bytes) -> int:
        """Append values at the tail; the list's new length."""

    @abstractmethod
    def pop(self, key: str, count: int = 1) -> list[bytes]:
        """Take up to ``count`` values from the head (oldest first); empty if there are none."""

    @abstractmethod
    def bpop(self, key: str, count: int, timeout: float) -> list[bytes]:
        """Like :meth:`pop`, but wait up to ``timeout`` seconds for a value to arrive: returns as soon as there is
        one (empty after the timeout)."""

    @abstractmethod
    def llen(self, key: str) -> int: ...

    # -- batches -----------------------------------------------------------------------------------------------
    @abstractmethod
    def apply(self, batch: Batch) -> None:
        """Apply every write of ``batch``, in order, together."""

    @contextmanager
    def batch(self) -> Iterator[Batch]:
        """Collect writes, applied together when the block ends without an exception."""
        b = Batch()
        yield b
        if b.ops:
            self.apply(b)

    def close(self) -> None:  # noqa: B027 - optional for implementations holding connections
        pass

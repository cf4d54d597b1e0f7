"""The fleet's state store: Redis (7 or newer), with reconnection and retries, so that a Redis restart is a pause
rather than a failure. A :class:`~farm.coordinator.kvbase.Batch` is one pipeline without MULTI/EXEC: one round
trip, and only the commands it holds (each write in it is idempotent but for ``rpush`` and ``hincrby``)."""

from __future__ import annotations

import builtins
import json
from collections.abc import Mapping, Sequence
from typing import Any

from farm.coordinator.kvbase import KV, Batch
from farm.errors import E, FarmError
from farm.settings import redact

SOCKET_TIMEOUT = 10.0
# KEYS[1]: the key; ARGV: had (1: expected present), expected, put (1: set, 0: delete), value, ttl in ms (0: none).
_SWAP = """
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return 0 end
elseif current then
  return 0
end
if ARGV[3] == '0' then
  redis.call('DEL', KEYS[1])
elseif ARGV[5] ~= '0' then
  redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5])
else
  redis.call('SET', KEYS[1], ARGV[4])
end
return 1
"""


class RedisKV(KV):
    def __init__(self, url: str, *, retry_seconds: float = 60.0) -> None:
        import redis
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        self.url = redact(url)  # for messages and logs: the password never leaves the connection
        attempts = max(1, int(retry_seconds / 2))
        self._redis: Any = redis.Redis.from_url(
            url,
            retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), attempts),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
            socket_connect_timeout=2,
            socket_timeout=SOCKET_TIMEOUT,
            health_check_interval=10,
        )
        self._errors = (redis.ConnectionError, redis.TimeoutError)
        self._swap = self._redis.register_script(_SWAP)

    def _call(self, fn: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self._redis, fn)(*args, **kwargs)
        except self._errors as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, exc: Exception) -> FarmError:
        return FarmError(
            E.STATE_UNREACHABLE,
            f"cannot reach the coordinator state at {self.url}: {exc}",
            hint="check that Redis is running and MANGOS_FARM_BROKER / MANGOS_FARM_STATE point at it",
        )

    # -- plain keys --------------------------------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        value: bytes | None = self._call("get", key)
        return value

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        return list(self._call("mget", list(keys))) if keys else []

    def set(self, key: str, value: bytes, *, ttl: float | None = None, only_if_absent: bool = False) -> bool:
        px = int(ttl * 1000) if ttl is not None else None
        return bool(self._call("set", key, value, px=px, nx=only_if_absent))

    def swap(self, key: str, expected: bytes | None, value: bytes | None, *, ttl: float | None = None) -> bool:
        px = max(1, int(ttl * 1000)) if ttl is not None else 0
        args = ["0" if expected is None else "1", expected or b"", "0" if value is None else "1", value or b"", px]
        try:
            return bool(self._swap(keys=[key], args=args))
        except self._errors as exc:
            raise self._unreachable(exc) from None

    def delete(self, *keys: str) -> None:
        if keys:
            self._call("delete", *keys)

    def keys(self, prefix: str) -> list[str]:
        found = self._call("scan_iter", match=prefix.replace("*", r"\*") + "*", count=1000)
        return sorted(k.decode() for k in found)

    # -- hashes and counters -----------------------------------------------------------------------------------
    def hset(self, key: str, mapping: Mapping[str, bytes]) -> None:
        if mapping:
            self._call("hset", key, mapping=dict(mapping))

    def hget(self, key: str, field: str) -> bytes | None:
        value: bytes | None = self._call("hget", key, field)
        return value

    def hmget(self, key: str, fields: Sequence[str]) -> list[bytes | None]:
        return list(self._call("hmget", key, list(fields))) if fields else []

    def hgetall(self, key: str) -> dict[str, bytes]:
        return {k.decode(): v for k, v in self._call("hgetall", key).items()}

    def hvalues_json(self, key: str) -> list[Any]:
        values = self._call("hvals", key)
        decoded: list[Any] = json.loads(b"[" + b",".join(values) + b"]")
        return decoded

    def hdel(self, key: str, *fields: str) -> None:
        if fields:
            self._call("hdel", key, *fields)

    def hincrby(self, key: str, field: str, amount: int = 1) -> int:
        return int(self._call("hincrby", key, field, amount))

    # -- sets --------------------------------------------------------------------------------------------------
    def sadd(self, key: str, *members: str) -> None:
        if members:
            self._call("sadd", key, *members)

    def srem(self, key: str, *members: str) -> None:
        if members:
            self._call("srem", key, *members)

    def smembers(self, key: str) -> builtins.set[str]:
        return {m.decode() for m in self._call("smembers", key)}

    # -- sorted sets -------------------------------------------------------------------------------------------
    def zadd(self, key: str, mapping: Mapping[str, float]) -> None:
        if mapping:
            self._call("zadd", key, dict(mapping))

    def zrem(self, key: str, *members: str) -> None:
        if members:
            self._call("zrem", key, *members)

    def zrange(self, key: str, start: int = 0, stop: int = -1) -> list[tuple[str, float]]:
        return [(m.decode(), float(s)) for m, s in self._call("zrange", key, start, stop, withscores=True)]

    def zrangebyscore(
        self, key: str, low: float, high: float, *, offset: int = 0, count: int | None = None
    ) -> list[tuple[str, float]]:
        limit: dict[str, Any] = {"start": offset, "num": count if count is not None else -1}
        rows = self._call("zrangebyscore", key, low, high, withscores=True, **limit)
        return [(m.decode(), float(s)) for m, s in rows]

    def zrank(self, key: str, member: str) -> int | None:
        rank = self._call("zrank", key, member)
        return None if rank is None else int(rank)

    def zcard(self, key: str) -> int:
        return int(self._call("zcard", key))

    # -- lists as queues ---------------------------------------------------------------------------------------
    def rpush(self, key: str, *values: bytes) -> int:
        return int(self._call("rpush", key, *values)) if values else self.llen(key)

    def pop(self, key: str, count: int = 1) -> list[bytes]:
        return list(self._call("lpop", key, count) or [])

    def bpop(self, key: str, count: int, timeout: float) -> list[bytes]:
        # BLMPOP waits server-side; the wait stays under the socket timeout (a longer one would read as a failure).
        wait = max(0.001, min(timeout, SOCKET_TIMEOUT - 1))
        if timeout <= 0:
            return self.pop(key, count)
        found = self._call("blmpop", wait, 1, key, direction="LEFT", count=count)
        return list(found[1]) if found else []

    def llen(self, key: str) -> int:
        return int(self._call("llen", key))

    # -- batches -----------------------------------------------------------------------------------------------
    def apply(self, batch: Batch) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for name, args in batch.ops:
            if name == "set":
                key, value, ttl = args
                pipe.set(key, value, px=int(ttl * 1000) if ttl is not None else None)
            elif name == "hset":
                pipe.hset(args[0], mapping=args[1])
            elif name == "zadd":
                pipe.zadd(args[0], args[1])
            else:
                getattr(pipe, name)(*args)
        try:
            pipe.execute()
        except self._errors as exc:
            raise self._unreachable(exc) from None

    def close(self) -> None:
        self._redis.close()

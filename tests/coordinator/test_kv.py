"""One conformance suite for the coordinator's state store: SQLite (embedded) and a real Redis server."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.coordinator.kv import KV, RedisKV, SqliteKV, open_kv
from farm.errors import E, FarmError
from tests.conftest import RedisServer, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "redis"])
def kv(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KV]:
    if request.param == "sqlite":
        store: KV = SqliteKV(tmp_path / "state.sqlite")
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        store = RedisKV(server.url)
        for key in store.keys("t:"):
            store.delete(key)
    yield store
    store.close()


def test_set_get_delete(kv: KV) -> None:
    assert kv.get("t:a") is None
    assert kv.set("t:a", b"1")
    assert kv.get("t:a") == b"1"
    kv.set("t:a", b"2")
    assert kv.get("t:a") == b"2"
    kv.delete("t:a")
    assert kv.get("t:a") is None


def test_only_if_absent(kv: KV) -> None:
    assert kv.set("t:once", b"first", only_if_absent=True)
    assert not kv.set("t:once", b"second", only_if_absent=True)
    assert kv.get("t:once") == b"first"


def test_expiry(kv: KV) -> None:
    kv.set("t:lease", b"x", ttl=0.3)
    assert kv.get("t:lease") == b"x"
    assert "t:lease" in kv.keys("t:")
    time.sleep(0.5)
    assert kv.get("t:lease") is None
    assert "t:lease" not in kv.keys("t:")
    assert kv.set("t:lease", b"y", ttl=5, only_if_absent=True), "an expired key counts as absent"


def test_hashes(kv: KV) -> None:
    kv.hset("t:h", {"a": b"1", "b": b"2"})
    kv.hset("t:h", {"b": b"3"})
    assert kv.hgetall("t:h") == {"a": b"1", "b": b"3"}
    assert kv.hget("t:h", "a") == b"1"
    assert kv.hget("t:h", "zz") is None
    kv.hdel("t:h", "a")
    assert kv.hgetall("t:h") == {"b": b"3"}
    assert "t:h" in kv.keys("t:")
    kv.delete("t:h")
    assert kv.hgetall("t:h") == {}


def test_keys_by_prefix_only(kv: KV) -> None:
    kv.set("t:p:1", b"")
    kv.set("t:p:2", b"")
    kv.set("t:q:1", b"")
    kv.set("t:p_x", b"")  # a LIKE wildcard must not match
    assert kv.keys("t:p:") == ["t:p:1", "t:p:2"]


def _claim(url: str, key: str, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    results.put(open_kv(url).set(key, b"mine", only_if_absent=True))


def test_only_if_absent_across_processes(kv: KV) -> None:
    ctx = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [ctx.Process(target=_claim, args=(kv.url, "t:race", results)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    wins = [results.get(timeout=5) for _ in procs]
    assert wins.count(True) == 1


def test_unreachable_redis_is_a_clear_error() -> None:
    kv = RedisKV(f"redis://127.0.0.1:{free_port()}/0", retry_seconds=1)
    with pytest.raises(FarmError) as err:
        kv.get("x")
    assert err.value.code == E.STATE_UNREACHABLE
    assert "Redis" in err.value.hint


def test_redis_restart_is_survived(redis_server: RedisServer) -> None:
    kv = RedisKV(redis_server.url, retry_seconds=20)
    kv.set("t:persist", b"kept")
    redis_server.restart()
    assert kv.get("t:persist") == b"kept"

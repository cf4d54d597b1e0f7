"""One conformance suite for the coordinator's state store: SQLite (embedded) and a real Redis server."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from collections.abc import Callable, Iterator
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


def test_sqlite_deletes_expired_keys(tmp_path: Path) -> None:
    """Read as absent at once, and gone from the file at the next purge: spent nonces and old leases do not pile up."""
    kv = SqliteKV(tmp_path / "state.sqlite")
    for i in range(50):
        kv.set(f"t:nonce:{i}", b"x", ttl=0.05)
    kv.set("t:kept", b"y", ttl=3600)
    kv.set("t:forever", b"z")
    time.sleep(0.1)
    assert kv.purge_expired(every=3600) == 0, "purged once already in this process (by the first set)"
    assert kv.purge_expired(every=0) == 50
    rows = sqlite3.connect(tmp_path / "state.sqlite").execute("SELECT k FROM kv ORDER BY k").fetchall()
    assert rows == [("t:forever",), ("t:kept",)]
    kv.close()


def test_swap_compares_and_sets(kv: KV) -> None:
    assert kv.swap("t:lock", None, b"a", ttl=5), "taken when absent"
    assert not kv.swap("t:lock", None, b"b", ttl=5), "not when present"
    assert not kv.swap("t:lock", b"b", b"b", ttl=5), "nor with another value expected"
    assert kv.get("t:lock") == b"a"
    assert kv.swap("t:lock", b"a", b"a", ttl=0.3), "renewed by its holder"
    time.sleep(0.5)
    assert kv.get("t:lock") is None, "the renewal set the new expiry"
    assert not kv.swap("t:lock", b"a", b"a", ttl=5), "an expired key is absent: its former holder lost it"
    assert kv.swap("t:lock", None, b"b")
    assert not kv.swap("t:lock", b"a", None) and kv.get("t:lock") == b"b"
    assert kv.swap("t:lock", b"b", None) and kv.get("t:lock") is None, "given back"


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


def test_mget_and_hmget(kv: KV) -> None:
    kv.set("t:m1", b"1")
    kv.set("t:m2", b"2", ttl=0.2)
    kv.set("t:m3", b"3", ttl=30)
    time.sleep(0.3)
    assert kv.mget(["t:m1", "t:m2", "t:m3", "t:none"]) == [b"1", None, b"3", None]
    assert kv.mget([]) == []
    kv.hset("t:hm", {"a": b"1", "b": b"2"})
    assert kv.hmget("t:hm", ["b", "zz", "a"]) == [b"2", None, b"1"]


def test_hash_of_json_values_read_whole(kv: KV) -> None:
    assert kv.hvalues_json("t:j") == []
    kv.hset("t:j", {"a": b'{"name": "a", "n": 1}', "b": b'{"name": "b", "s": "x,]\\"y"}', "c": b"[1, 2]"})
    found = kv.hvalues_json("t:j")
    assert sorted(map(str, found)) == sorted(map(str, [{"name": "a", "n": 1}, {"name": "b", "s": 'x,]"y'}, [1, 2]]))


def test_counters(kv: KV) -> None:
    assert kv.hincrby("t:c", "built") == 1
    assert kv.hincrby("t:c", "built", 4) == 5
    assert kv.hincrby("t:c", "waiting", -2) == -2
    assert kv.hgetall("t:c") == {"built": b"5", "waiting": b"-2"}
    kv.hset("t:c", {"built": b"7"})  # an absolute value written over a counter is a counter again
    assert kv.hincrby("t:c", "built") == 8


def test_sets(kv: KV) -> None:
    kv.sadd("t:s", "a", "b")
    kv.sadd("t:s", "b", "c")
    assert kv.smembers("t:s") == {"a", "b", "c"}
    kv.srem("t:s", "a", "zz")
    assert kv.smembers("t:s") == {"b", "c"}
    assert "t:s" in kv.keys("t:")
    kv.delete("t:s")
    assert kv.smembers("t:s") == set()


def test_sorted_sets_by_rank_and_score(kv: KV) -> None:
    kv.zadd("t:z", {"c": 3.0, "a": 1.0, "b2": 2.0, "b1": 2.0, "d": -1.5})
    assert kv.zcard("t:z") == 5
    assert kv.zrange("t:z") == [("d", -1.5), ("a", 1.0), ("b1", 2.0), ("b2", 2.0), ("c", 3.0)], "ties by member"
    assert kv.zrange("t:z", 0, 1) == [("d", -1.5), ("a", 1.0)]
    assert kv.zrange("t:z", -2, -1) == [("b2", 2.0), ("c", 3.0)]
    assert kv.zrange("t:z", 4, 10) == [("c", 3.0)]
    assert kv.zrange("t:z", 3, 1) == []
    assert kv.zrank("t:z", "d") == 0 and kv.zrank("t:z", "b2") == 3 and kv.zrank("t:z", "zz") is None
    assert kv.zrangebyscore("t:z", 1.0, 2.0) == [("a", 1.0), ("b1", 2.0), ("b2", 2.0)]
    assert kv.zrangebyscore("t:z", float("-inf"), float("inf"), offset=1, count=2) == [("a", 1.0), ("b1", 2.0)]
    assert kv.zrangebyscore("t:z", 5, 9) == []
    kv.zadd("t:z", {"c": -9.0})  # a new score moves the member
    assert kv.zrange("t:z", 0, 0) == [("c", -9.0)]
    kv.zrem("t:z", "c", "a", "zz")
    assert [m for m, _ in kv.zrange("t:z")] == ["d", "b1", "b2"]
    assert "t:z" in kv.keys("t:")
    kv.delete("t:z")
    assert kv.zcard("t:z") == 0 and kv.zrange("t:z") == []


def test_lists_as_queues(kv: KV) -> None:
    assert kv.pop("t:q") == []
    assert kv.rpush("t:q", b"1", b"2") == 2
    assert kv.rpush("t:q", b"3") == 3
    assert kv.llen("t:q") == 3
    assert kv.pop("t:q") == [b"1"]
    assert kv.pop("t:q", 10) == [b"2", b"3"], "oldest first"
    assert kv.llen("t:q") == 0
    started = time.monotonic()
    assert kv.bpop("t:q", 10, timeout=0.3) == []
    assert 0.25 <= time.monotonic() - started < 2
    kv.rpush("t:q", b"4", b"5", b"6")
    assert kv.bpop("t:q", 2, timeout=5) == [b"4", b"5"]
    assert kv.bpop("t:q", 2, timeout=5) == [b"6"]


def _push_later(url: str, key: str, delay: float) -> None:
    time.sleep(delay)
    open_kv(url).rpush(key, b"late")


def test_blocking_pop_wakes_when_a_value_arrives(kv: KV) -> None:
    """Another process pushes while this one waits: the wait ends with the value, long before the timeout."""
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_push_later, args=(kv.url, "t:wake", 1.0))
    proc.start()
    try:
        started = time.monotonic()
        assert kv.bpop("t:wake", 5, timeout=8) == [b"late"]
        assert time.monotonic() - started < 6
    finally:
        proc.join(timeout=30)


def test_batch_applies_every_write_in_order(kv: KV) -> None:
    kv.set("t:b:gone", b"x")
    with kv.batch() as b:
        b.set("t:b:k", b"v", ttl=30)
        b.hset("t:b:h", {"a": b"1"})
        b.hdel("t:b:h", "a")
        b.hset("t:b:h", {"b": b"2"})
        b.hincrby("t:b:c", "n", 3)
        b.zadd("t:b:z", {"x": 1.0, "y": 2.0})
        b.zrem("t:b:z", "x")
        b.sadd("t:b:s", "m")
        b.srem("t:b:s", "zz")
        b.rpush("t:b:l", b"1", b"2")
        b.delete("t:b:gone")
        b.hdel("t:b:h")  # empty writes are dropped
        assert len(b) == 11
    assert kv.get("t:b:k") == b"v" and kv.get("t:b:gone") is None
    assert kv.hgetall("t:b:h") == {"b": b"2"}
    assert kv.hgetall("t:b:c") == {"n": b"3"}
    assert kv.zrange("t:b:z") == [("y", 2.0)]
    assert kv.smembers("t:b:s") == {"m"}
    assert kv.pop("t:b:l", 5) == [b"1", b"2"]


def test_batch_is_not_applied_when_the_block_fails(kv: KV) -> None:
    with pytest.raises(RuntimeError), kv.batch() as b:
        b.set("t:nb", b"1")
        raise RuntimeError("boom")
    assert kv.get("t:nb") is None


def _claim(url: str, key: str, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    results.put(open_kv(url).set(key, b"mine", only_if_absent=True))


def _swap(url: str, key: str, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    results.put(open_kv(url).swap(key, None, b"mine", ttl=60))


@pytest.mark.parametrize("claim", [_claim, _swap])
def test_only_if_absent_across_processes(kv: KV, claim: Callable[..., None]) -> None:
    ctx = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [ctx.Process(target=claim, args=(kv.url, "t:race", results)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    wins = [results.get(timeout=5) for _ in procs]
    assert wins.count(True) == 1


def test_unreachable_redis_is_a_clear_error_that_keeps_the_password() -> None:
    kv = RedisKV(f"redis://farm:s3cret-pw@127.0.0.1:{free_port()}/0", retry_seconds=1)
    with pytest.raises(FarmError) as err:
        kv.get("x")
    assert err.value.code == E.STATE_UNREACHABLE
    assert "Redis" in err.value.hint
    assert "s3cret-pw" not in err.value.render() and "farm:***@127.0.0.1" in err.value.message


def test_redis_restart_is_survived(redis_server: RedisServer) -> None:
    kv = RedisKV(redis_server.url, retry_seconds=20)
    kv.set("t:persist", b"kept")
    redis_server.restart()
    assert kv.get("t:persist") == b"kept"

"""The nonce ledger (farm.trust.nonces): a signed task is accepted once, by one worker, on both state stores.

Against SQLite (the embedded farm) and a real redis-server (a fleet): a nonce is spent once, atomically across
workers racing for the same message, kept a little longer than a message is accepted at all; a state store that
cannot answer refuses the task. Then the worker's own check (workers.tasks.authenticate): signature first, then
the nonce; a replay is audited and counted as such, an unreachable store is refused without blaming anyone.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from farm import metrics
from farm.coordinator.kv import KV, RedisKV, SqliteKV
from farm.errors import E, FarmError
from farm.settings import Settings
from farm.trust import audit, tasksig
from farm.trust import keys as keymod
from farm.trust.nonces import NONCE_TTL, PREFIX, Nonces
from tests.conftest import RedisServer, free_port

pytestmark = pytest.mark.integration

REQUEST: dict[str, Any] = {"build_key": "a" * 64, "recipe": {"name": "hello"}, "lease": "l1"}


@pytest.fixture(params=["sqlite", "redis"])
def kv(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KV]:
    if request.param == "sqlite":
        store: KV = SqliteKV(tmp_path / "state.sqlite")
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        store = RedisKV(server.url)
        for key in store.keys(PREFIX):
            store.delete(key)
    yield store
    store.close()


def _twin(kv: KV) -> KV:
    """Another connection to the same store, as another worker process would hold."""
    return SqliteKV(kv.path) if isinstance(kv, SqliteKV) else RedisKV(kv.url)


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> tuple[keymod.BuilderKey, keymod.PublicKey]:
    keys_dir = tmp_path_factory.mktemp("keys")
    return keymod.coordinator_key(keys_dir), keymod.coordinator_public(keys_dir)


def test_a_nonce_is_spent_once_and_the_refusal_names_the_first_delivery(kv: KV) -> None:
    Nonces(kv).spend("n1", task_id="t1", who="w1@fleet")
    with pytest.raises(FarmError) as info:
        Nonces(_twin(kv)).spend("n1", task_id="t-other", who="w2@fleet")
    assert info.value.code == E.TASK_REPLAYED and info.value.hint
    assert "as task t1 by w1@fleet" in info.value.message
    Nonces(kv).spend("n2", task_id="t1", who="w1@fleet")  # another nonce: another message


def test_a_nonce_is_kept_a_little_longer_than_a_message_is_accepted(kv: KV) -> None:
    assert tasksig.MAX_AGE < NONCE_TTL <= tasksig.MAX_AGE + 3600
    Nonces(kv).spend("n-ttl", task_id="t", who="w")
    if isinstance(kv, RedisKV):
        left = kv._redis.pttl(PREFIX + "n-ttl") / 1000
    else:
        assert isinstance(kv, SqliteKV)
        row = kv._db().execute("SELECT exp FROM kv WHERE k = ?", (PREFIX + "n-ttl",)).fetchone()
        left = row[0] - time.time()
    assert NONCE_TTL - 60 < left <= NONCE_TTL


def test_workers_racing_for_one_message_exactly_one_accepts(kv: KV) -> None:
    """Eight workers (each its own connection) handed the same messages at the same moment, round after round."""
    ledgers = [Nonces(_twin(kv)) for _ in range(8)]
    rounds = 25
    barrier = threading.Barrier(len(ledgers))
    accepted: list[list[int]] = [[] for _ in range(rounds)]

    def worker(i: int) -> None:
        for r in range(rounds):
            barrier.wait(timeout=30)
            try:
                ledgers[i].spend(f"race-{r}", task_id=f"t{r}", who=f"w{i}")
            except FarmError as exc:
                assert exc.code == E.TASK_REPLAYED
                continue
            accepted[r].append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(ledgers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [len(a) for a in accepted] == [1] * rounds, accepted


def test_a_state_store_that_cannot_answer_refuses_the_task(tmp_path: Path) -> None:
    down = RedisKV(f"redis://farm:s3cret-pw@127.0.0.1:{free_port()}/0", retry_seconds=0.5)
    with pytest.raises(FarmError) as info:
        Nonces(down).spend("n", task_id="t", who="w")
    assert info.value.code == E.STATE_UNREACHABLE and "cannot check" in info.value.message
    assert "s3cret-pw" not in info.value.message and "redis://farm:***@127.0.0.1" in info.value.message
    broken = SqliteKV(tmp_path / "state.sqlite")
    broken._db().execute("DROP TABLE kv")  # a damaged file: no answer either
    with pytest.raises(FarmError) as info:
        Nonces(broken).spend("n", task_id="t", who="w")
    assert info.value.code == E.STATE_UNREACHABLE


def test_only_a_genuine_fresh_message_spends_its_nonce(
    kv: KV, coordinator: tuple[keymod.BuilderKey, keymod.PublicKey]
) -> None:
    key, public = coordinator
    ledger = Nonces(kv)
    sig = tasksig.sign("t1", REQUEST, key)
    altered = {**REQUEST, "lease": "l2"}
    with pytest.raises(FarmError) as info:  # refused for its signature, before the ledger is touched
        tasksig.verify("t1", altered, sig, public, nonces=ledger, who="w")
    assert info.value.code == E.TASK_UNSIGNED
    old = tasksig.sign("t-old", REQUEST, key, now=0)
    with pytest.raises(FarmError):
        tasksig.verify("t-old", REQUEST, old, public, nonces=ledger, who="w")
    assert kv.get(PREFIX + old["nonce"]) is None
    tasksig.verify("t1", REQUEST, sig, public, nonces=ledger, who="w1")  # still unspent: accepted
    with pytest.raises(FarmError) as info:
        tasksig.verify("t1", REQUEST, sig, public, nonces=Nonces(_twin(kv)), who="w2")
    assert info.value.code == E.TASK_REPLAYED


# -- the worker's check ------------------------------------------------------------------------------------------
@pytest.fixture
def worker_tasks(
    tmp_path: Path, coordinator: tuple[keymod.BuilderKey, keymod.PublicKey], monkeypatch: pytest.MonkeyPatch
) -> Any:
    import workers.tasks

    home = tmp_path / "home"
    keys_dir = home / "keys"
    keys_dir.mkdir(parents=True)
    key, _ = coordinator
    (keys_dir / keymod.COORDINATOR_PUBLIC).write_bytes(key.public.pem())
    monkeypatch.setattr(workers.tasks, "settings", Settings(home=home))
    ledger = Nonces(SqliteKV(tmp_path / "state.sqlite"))
    monkeypatch.setattr(workers.tasks, "nonce_ledger", lambda: ledger)
    return workers.tasks


def _events(home: Path) -> list[dict[str, Any]]:
    path = audit.audit_path(home)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_the_worker_refuses_a_replay_audits_and_counts_it(
    worker_tasks: Any, coordinator: tuple[keymod.BuilderKey, keymod.PublicKey]
) -> None:
    key, _ = coordinator
    home = worker_tasks.settings.home
    sig = tasksig.sign("t1", REQUEST, key)
    before = metrics.security_events.labels(audit.REPLAYED_TASK)._value.get()
    assert worker_tasks.authenticate("t1", REQUEST, sig, "w1@fleet") is None
    refused = worker_tasks.authenticate("t1", REQUEST, sig, "w2@fleet")
    assert refused is not None and refused.code == E.TASK_REPLAYED
    assert metrics.security_events.labels(audit.REPLAYED_TASK)._value.get() == before + 1
    [event] = _events(home)
    assert event["event"] == audit.REPLAYED_TASK and event["who"] == "w2@fleet" and event["error"] == E.TASK_REPLAYED
    assert "task t1 (recipe hello" in event["what"]


def test_the_worker_refuses_every_task_while_the_state_store_cannot_answer(
    worker_tasks: Any, coordinator: tuple[keymod.BuilderKey, keymod.PublicKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    key, _ = coordinator
    down = Nonces(RedisKV(f"redis://127.0.0.1:{free_port()}/0", retry_seconds=0.5))
    monkeypatch.setattr(worker_tasks, "nonce_ledger", lambda: down)
    refused = worker_tasks.authenticate("t1", REQUEST, tasksig.sign("t1", REQUEST, key), "w1@fleet")
    assert refused is not None and refused.code == E.STATE_UNREACHABLE
    assert _events(worker_tasks.settings.home) == [], "not an attack: logged, not audited"

"""A store and a coordinator state written by the previous version are read by this one (the state migrated).

``tests/fixtures/v1/`` holds what a ``rebuild`` of ``recipes/libgreet.toml`` (its source made by
``demo/make_sources.py``) left behind: the store (``store/``), the coordinator state (``state.sqlite``, a SqliteKV)
and the public half of the builder key that signed the provenance (``builder.pub``). The fixtures are copied to
``tmp_path`` first: nothing here writes into ``tests/fixtures``.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from farm.coordinator.engine import Coordinator
from farm.coordinator.kv import KV, RedisKV, SqliteKV
from farm.coordinator.migrate import stored_version
from farm.coordinator.plan import Decision, make_plan
from farm.coordinator.policy import Lane
from farm.coordinator.runs import Job, Run, RunStore, State
from farm.coordinator.views import run_rows
from farm.envs.host import Environment
from farm.errors import E, FarmError
from farm.recipes import load_dir
from farm.sources.git import SourceCache
from farm.store.local import LocalStore
from farm.trust import keyring
from farm.trust.keys import load_public
from farm.trust.provenance import verify_envelope
from tests.conftest import RedisServer, require
from tests.coordinator.harness import ENV, T0, FakeDispatcher, FakeWorker, announce, make_jobs, state
from tests.coordinator.harness import coordinator as make_coordinator

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
V1 = REPO / "tests" / "fixtures" / "v1"
KEY = "2be69012b611815b1ef7ed46df4db659f04bef0f166b53c56070917cc880660a"
COMMIT = "a69a23253b408d60b9666abb64f59faf8cc2e8d5"
ARTIFACTS = {"libgreet.tar": "a2e805262d1626ac2876c3ea27364900525be1c94159dc1d081810e085c2bb25"}
RUN_ID = "20261203T165751Z-3ee89c"
ENVIRONMENT = "6a74c427442c764dc76e35741cafc15a041b3b6cdd033af8ca5141c1a66e410e"


@pytest.fixture
def v1(tmp_path: Path) -> Path:
    """A private copy of the v1 fixtures."""
    dest = tmp_path / "v1"
    shutil.copytree(V1, dest)
    return dest


def test_store_record_and_provenance(v1: Path) -> None:
    store = LocalStore(v1 / "store")
    record = store.get_record(KEY)
    assert record is not None
    assert (record.build_key, record.recipe, record.commit) == (KEY, "libgreet", COMMIT)
    assert record.outputs() == ARTIFACTS
    assert record.environment == ENVIRONMENT
    trusted = [load_public(v1 / "builder.pub")]
    verified = verify_envelope(json.loads(store.get_bytes(record.provenance)), trusted)
    assert verified.subjects() == ARTIFACTS
    assert verified.statement["predicate"]["buildDefinition"]["internalParameters"]["buildKey"] == KEY
    assert keyring.check_published(store, KEY, trusted, ARTIFACTS) == record
    assert [r.build_key for r in store.records_for_recipe("libgreet")] == [KEY]
    assert [r.build_key for r in store.records_for_commit(COMMIT)] == [KEY]
    for digest in ARTIFACTS.values():
        assert store.has_blob(digest)


def _check_state(kv: KV, store: LocalStore) -> None:
    """The v1 state as this version reads it, before and after a coordinator migrated it."""
    # The persisted v1 bytes read and written back are the same bytes: the record formats did not change.
    raw_run = kv.get(f"mangos:run:{RUN_ID}")
    assert raw_run is not None and Run.from_bytes(raw_run).to_bytes() == raw_run
    raw_job = kv.hget(f"mangos:run:{RUN_ID}:jobs", "libgreet")
    assert raw_job is not None and Job.from_bytes(raw_job).to_bytes() == raw_job
    assert stored_version(kv) == 1
    _check_runs(kv)  # readable before the migration

    coordinator = Coordinator(kv, store, lambda: pytest.fail("no dispatch needed"))
    assert kv.get("mangos:state:version") == b"2"
    assert kv.hget(f"mangos:run:{RUN_ID}:jobs", "libgreet") != raw_job, "split into static and live parts"
    assert kv.zrange("mangos:runs") == [(RUN_ID, Run.from_bytes(raw_run).created)]
    assert kv.smembers("mangos:runs:active") == set()
    _check_runs(kv)
    status = coordinator.status(RUN_ID)
    assert status["ok"] and status["summary"]["built"] == 1
    assert [b["build_key"] for b in status["builds"]] == [KEY]
    Coordinator(kv, store, lambda: pytest.fail("no dispatch needed"))  # a second start: nothing to migrate
    _check_runs(kv)


def _check_runs(kv: KV) -> None:
    runs = RunStore(kv)
    [run] = runs.all_runs()
    assert (run.id, run.lane, run.arch, run.status, run.order) == (RUN_ID, Lane.REBUILD, "amd64", "done", ["libgreet"])
    assert run.environment == ENVIRONMENT
    assert runs.latest().id == RUN_ID and runs.active() == []
    jobs = runs.jobs(RUN_ID)
    assert list(jobs) == ["libgreet"]
    job = jobs["libgreet"]
    assert (job.state, job.key, job.commit, job.attempts) == (State.BUILT, KEY, COMMIT, 1)
    assert job.outputs == ARTIFACTS and job.deps == [] and not job.failures
    assert runs.counts(RUN_ID)[State.BUILT] == 1
    [row] = run_rows(runs)
    assert (row["run"], row["lane"], row["total"]) == (RUN_ID, "rebuild", 1)


def test_sqlite_state(v1: Path) -> None:
    kv = SqliteKV(v1 / "state.sqlite")
    try:
        _check_state(kv, LocalStore(v1 / "store"))
    finally:
        kv.close()


def test_state_copied_into_redis(v1: Path, redis_server: RedisServer) -> None:
    """The same keys and hashes, copied into a real Redis as they are, read back through the Redis KV (in a
    database of its own: the session's server is shared)."""
    redis = RedisKV(redis_server.url.removesuffix("/0") + "/9")
    db = sqlite3.connect(v1 / "state.sqlite")
    try:
        for key in redis.keys("mangos:"):
            redis.delete(key)
        for key, value in db.execute("SELECT k, v FROM kv WHERE exp IS NULL"):  # leases, beats expire: not state
            redis.set(key, value)
        for key, field, value in db.execute("SELECT k, f, v FROM h"):
            redis.hset(key, {field: value})
        _check_state(redis, LocalStore(v1 / "store"))
    finally:
        for key in redis.keys("mangos:"):
            redis.delete(key)
        redis.close()
        db.close()


def _v1_active_run(kv: KV) -> Run:
    """What version 1 left of a run cut short: a built build, one in flight (lease, task, worker), one ready and
    one waiting on it, a worker out of rotation (a key of its own), leases under their v1 keys."""
    jobs = make_jobs({"a": [], "b": [], "c": [], "d": ["c"]})
    jobs["a"].state, jobs["a"].outputs, jobs["a"].attempts = State.BUILT, {"a.tar": "1" * 64}, 1
    b = jobs["b"]
    b.state, b.task_id, b.lease, b.worker, b.attempts = State.RUNNING, "task-b", "0" * 32, "w1@old", 1
    jobs["c"].ready_since = T0 - 50
    run = Run("20261201T000000Z-aaaaaa", Lane.REBUILD, "amd64", ENV, False, T0 - 100, list(jobs))
    kv.set(f"mangos:run:{run.id}", run.to_bytes())
    kv.hset(f"mangos:run:{run.id}:jobs", {n: j.to_bytes() for n, j in jobs.items()})
    kv.set("mangos:disabled:w9@old", b"3 different builds failed in a row")
    kv.set("mangos:lease:" + "0" * 32, b"{}", ttl=3600)
    kv.set(f"mangos:current:{run.id}:b", b"0" * 32, ttl=3600)
    return run


def test_active_v1_run_is_migrated_and_goes_on(tmp_path: Path) -> None:
    """A coordinator started on version 1 state with an active run builds the v2 indexes (runs, active set,
    counts, ready index), sends the build that was in flight again under a new lease, and finishes the run."""
    kv = SqliteKV(tmp_path / "state.sqlite")
    run = _v1_active_run(kv)
    dispatcher = FakeDispatcher()
    coordinator = make_coordinator(kv, dispatcher)
    assert kv.get("mangos:state:version") == b"2"
    assert kv.smembers("mangos:runs:active") == {run.id}
    assert kv.hgetall("mangos:disabled") == {"w9@old": b"3 different builds failed in a row"}
    assert kv.keys("mangos:lease:") == [] and kv.keys("mangos:current:") == [] and kv.keys("mangos:disabled:") == []
    ready = f"mangos:ready:amd64:default:rebuild:{run.id}"
    assert [m for m, _ in kv.zrange(ready)] == ["c"], "b waits for the store to be asked again (its attempt 2)"
    counts = RunStore(kv).counts(run.id)
    assert (counts[State.BUILT], counts[State.WAITING], counts[State.RUNNING]) == (1, 3, 0)
    jobs = RunStore(kv).jobs(run.id)
    assert jobs["b"].lease is None and jobs["b"].why == "re-dispatching: the coordinator's state was upgraded"
    assert jobs["c"].ready_since == T0 - 50, "the time it became ready is kept (aging)"

    announce(kv, "w1", concurrency=4)
    coordinator.tick(T0)
    assert sorted(dispatcher.names()) == ["b", "c"]
    worker = FakeWorker(kv, "w1")
    for request, _, task in list(dispatcher.sent):
        assert worker.claim(request)
        worker.finish(request, task)
    coordinator.tick(T0 + 1)
    request, _, task = dispatcher.sent[-1]
    assert request.recipe["name"] == "d"
    assert worker.claim(request)
    worker.finish(request, task)
    coordinator.tick(T0 + 2)
    assert RunStore(kv).get(run.id).status == "done"
    assert state(kv, run) == {n: State.BUILT for n in "abcd"}


@pytest.mark.parametrize("version", [b"3", b"v2-beta"])
def test_newer_state_version_stops_with_an_error_id(tmp_path: Path, version: bytes) -> None:
    kv = SqliteKV(tmp_path / "state.sqlite")
    kv.set("mangos:state:version", version)
    with pytest.raises(FarmError) as err:
        make_coordinator(kv, FakeDispatcher())
    assert err.value.code == E.STATE_VERSION
    assert "upgrade" in err.value.hint and "MANGOS_FARM_STATE" in err.value.hint
    assert kv.get("mangos:state:version") == version, "left as it was"


def test_plan_finds_the_v1_build_cached(v1: Path, tmp_path: Path) -> None:
    """The plan of recipes/libgreet.toml computes the v1 build key and takes it from the v1 store.

    The environment is the one the v1 run recorded: the host's package set is an input of the key that a fixture
    cannot pin (an upgraded package changes it), so the test holds it fixed and checks everything else.
    """
    require("git")
    root = tmp_path / "checkout"
    (root / "recipes").mkdir(parents=True)
    shutil.copy(REPO / "recipes" / "libgreet.toml", root / "recipes" / "libgreet.toml")
    shutil.copytree(REPO / "demo" / "src" / "libgreet", root / "demo" / "src" / "libgreet")
    shutil.copy(REPO / "demo" / "make_sources.py", root / "demo" / "make_sources.py")
    subprocess.run([sys.executable, "demo/make_sources.py", "demo/git"], cwd=root, check=True, capture_output=True)

    sources = SourceCache(tmp_path / "cache")
    plan = make_plan(
        load_dir(root / "recipes"),
        LocalStore(v1 / "store"),
        lambda r: sources.resolve(r.git_location, r.source.commit, r.source.ref, origin=str(r.path)),
        Environment("host", ENVIRONMENT, {}),
    )
    build = plan.builds["libgreet"]
    assert build.key == KEY
    assert build.decision is Decision.CACHED
    assert build.record is not None and build.record.outputs() == ARTIFACTS
    assert plan.to_json()["summary"] == {"total": 1, "cached": 1, "build": 0}

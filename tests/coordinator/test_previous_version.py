"""A store and a coordinator state written by the previous version are read by this one.

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
from farm.coordinator.plan import Decision, make_plan
from farm.coordinator.policy import Lane
from farm.coordinator.runs import Job, Run, RunStore, State
from farm.coordinator.views import run_rows
from farm.envs.host import Environment
from farm.recipes import load_dir
from farm.sources.git import SourceCache
from farm.store.local import LocalStore
from farm.trust import keyring
from farm.trust.keys import load_public
from farm.trust.provenance import verify_envelope
from tests.conftest import RedisServer, require

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
    runs = RunStore(kv)
    [run] = runs.all_runs()
    assert (run.id, run.lane, run.arch, run.status, run.order) == (RUN_ID, Lane.REBUILD, "amd64", "done", ["libgreet"])
    assert run.environment == ENVIRONMENT
    jobs = runs.jobs(RUN_ID)
    assert list(jobs) == ["libgreet"]
    job = jobs["libgreet"]
    assert (job.state, job.key, job.commit, job.attempts) == (State.BUILT, KEY, COMMIT, 1)
    assert job.outputs == ARTIFACTS and job.deps == [] and not job.failures
    # The persisted bytes read and written back are the same bytes: the format did not change.
    raw_run = kv.get(f"mangos:run:{RUN_ID}")
    assert raw_run is not None and Run.from_bytes(raw_run).to_bytes() == raw_run
    raw_job = kv.hget(f"mangos:run:{RUN_ID}:jobs", "libgreet")
    assert raw_job is not None and Job.from_bytes(raw_job).to_bytes() == raw_job

    coordinator = Coordinator(kv, store, lambda: pytest.fail("no dispatch needed"))
    status = coordinator.status(RUN_ID)
    assert status["ok"] and status["summary"]["built"] == 1
    assert [b["build_key"] for b in status["builds"]] == [KEY]
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

"""A real fleet whose worker is not root: redis-server, an S3 store (moto's server), a ``mangos-farm coordinator``
process and the client as root, and one ``mangos-farm worker`` started as the non-root user (its own uid, its
/etc/subuid range, a cgroup delegated to it, a home of its own, the store's credentials and a broker password in
its environment and home). The coordinator dispatches the repository's dash recipe and the hostile Debian package
of :mod:`tests.lib.hostile_debian` to it through Redis: dash builds there (in a user namespace with the
user's map, dpkg-buildpackage as uid 1000 inside), the hostile package's attacks are all refused, its setuid .deb
fails the build, and nothing of it (mounts, processes, files of its ids) outlives it on that worker.

One fleet per module, one run of both builds; about 60-90 s here, most of it dash's build and the client's
planning (the dsc import and the pinned packages fetched into the store).
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from farm.envs.debian import save_record
from farm.errors import E
from farm.store import Store, open_store
from tests.integration.conftest import Made
from tests.lib import hostile_debian
from tests.lib.fleet import Fleet
from tests.lib.hostile_debian import MARK, SECRET, farm_argv, running
from tests.lib.keys import install_fleet_keys
from tests.lib.moto import s3_env
from tests.lib.redis_server import RedisServer
from tests.lib.rootless import (
    REPO,
    RootlessUser,
    chown_tree,
    delegated_cgroups,
    descendants,
    ensure_user,
    mounts_mentioning,
    process_ids,
    processes_of,
    python,
    reclaim,
    require_imports,
    spawn_as_user,
    wait_cgroups_empty,
)
from tests.lib.tools import free_port, require

# The moto S3 server of the store suite (a module of its own here: one per module that imports it).
from tests.store.conftest import MotoServer, moto_server  # noqa: F401

pytestmark = pytest.mark.integration

WORKER = "rootless@fleet"
BUILDER = "rootless-builder@fleet"


@dataclass(frozen=True)
class RootlessFleet:
    user: RootlessUser
    fleet: Fleet
    worker_pid: int
    worker_home: Path
    store: Store  # the fleet's store, as this process reaches it
    run: str
    status: dict[str, Any]
    seconds: float

    def build(self, recipe: str) -> dict[str, Any]:
        found: dict[str, Any] = next(b for b in self.status["builds"] if b["recipe"] == recipe)
        return found

    def log(self, recipe: str) -> str:
        """The build's whole log from the fleet's store (a failed build names its log)."""
        build = self.build(recipe)
        record = self.store.get_record(build["build_key"])
        digest = record.log if record is not None else build["log"]
        return self.store.get_bytes(digest).decode(errors="replace")


@pytest.fixture(scope="module")
def listener() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def _s3_store(url: str, aws: dict[str, str]) -> Store:
    """The fleet's store opened here with the fleet's (fake) credentials, read when it is opened."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in aws.items():
            mp.setenv(k, v)
        return open_store(url)


@pytest.fixture(scope="module")
def rootless_fleet(
    made_env: Made,
    redis_server: RedisServer,
    moto_server: MotoServer,  # noqa: F811
    listener: int,
) -> Iterator[RootlessFleet]:
    for tool in ("unshare", "setpriv", "newuidmap", "dpkg-deb", "git"):
        require(tool)
    user = ensure_user()
    py, pyenv = python(user)
    require_imports(user, py, pyenv, ["workers.app", "kombu.transport.redis", "boto3"])  # a fleet worker's
    base = Path(tempfile.mkdtemp(prefix="mangos-rootless-fleet-"))
    base.chmod(0o755)  # the worker reads the hostile package's repository in it
    bucket = f"farm-{uuid.uuid4().hex[:12]}"
    moto_server.client.create_bucket(Bucket=bucket)
    store_url = f"s3://{bucket}/farm"
    aws = s3_env(moto_server.url)
    redis_server.restart()  # a clean broker (AOF keeps data across restarts, so flush it)
    client = redis_server.client()
    client.flushall()
    client.close()
    with ExitStack() as stack:
        stack.callback(reclaim, user, base)
        fleet = Fleet(base / "fleet", redis_server, store_url, aws)
        stack.callback(fleet.close)
        fleet.fail_fast = True
        store = _s3_store(store_url, aws)
        # the environment made once per session (by root), into the fleet's store; its record in the client's home
        made_env.store.fetch_blob(made_env.record.digest, base / "env.tar")
        assert store.put_file(base / "env.tar").digest == made_env.record.digest
        (base / "env.tar").unlink()
        save_record(made_env.record, fleet.client_home / "envs")
        fleet.start_coordinator()

        # the worker's machine: a home of its own, secrets in its environment and its HOME, its fleet keys
        worker_home = base / "worker"
        secrets_home = base / "worker-home"
        (secrets_home / ".aws").mkdir(parents=True)
        (secrets_home / ".aws" / "credentials").write_text(f"[default]\naws_secret_access_key = {SECRET}\n")
        (secrets_home / "broker-password").write_text(SECRET)
        # the hostile package's repository is root's: this user's git may read it (as for a shared checkout;
        # git's own safe.directory, from the user's global configuration: a local clone drops GIT_CONFIG_*)
        (secrets_home / ".gitconfig").write_text("[safe]\n\tdirectory = *\n")
        install_fleet_keys(fleet.client_home / "keys", worker_home, coordinator=False)
        chown_tree(worker_home, user)
        chown_tree(secrets_home, user)
        recipes = base / "recipes"
        recipes.mkdir()
        shutil.copy(REPO / "recipes" / "debian" / "dash.toml", recipes / "dash.toml")
        hostile_debian.write_recipe(base, recipes, listener, secrets_home)

        argv, _ = farm_argv(user)
        port = fleet.metrics_ports.setdefault("rootless", free_port())
        argv += ["worker", "--concurrency", "1", "--name", WORKER, "--metrics-port", str(port),
                 "--metrics-addr", "127.0.0.1"]  # fmt: skip
        settings = {
            "MANGOS_FARM_HOME": str(worker_home),
            "MANGOS_FARM_BROKER": redis_server.url,
            "MANGOS_FARM_STORE": store_url,
            "MANGOS_FARM_BUILDER_ID": BUILDER,
            "MANGOS_FARM_BUILD_PROCESSES": "256",
            "MANGOS_FARM_BUILD_MEMORY_MB": "1536",
        }
        # the store's secret (moto takes any) and the secrets' home: neither may reach a build
        env = pyenv | aws | settings | {"AWS_SECRET_ACCESS_KEY": SECRET, "HOME": str(secrets_home)}
        cgroups = stack.enter_context(delegated_cgroups(user))
        stack.callback(wait_cgroups_empty, cgroups)  # the cgroups go once empty: after the worker's pool is reaped
        stack.callback(fleet.close)
        proc = spawn_as_user(user, argv, env=env, cwd=worker_home, log=fleet.root / "rootless.log", cgroups=cgroups)
        fleet.procs["rootless"] = fleet.workers["rootless"] = proc
        fleet.wait_workers(1, timeout=120)

        start = time.monotonic()
        run = fleet.cli("rebuild", str(recipes), "--lane", "rebuild").stdout.strip()
        status = fleet.wait_run(run, timeout=1200, poll=1.0)
        seconds = time.monotonic() - start
        yield RootlessFleet(user, fleet, proc.pid, worker_home, store, run, status, seconds)


def test_the_worker_process_is_not_root_and_probes_debian(rootless_fleet: RootlessFleet) -> None:
    """The Celery worker (and its pool) runs with the user's ids and no capability; ``workers --json`` lists it
    with the ``debian`` capability its start-up probe found (a user-namespace overlay mount)."""
    f, user = rootless_fleet, rootless_fleet.user
    assert user.uid != 0 and user.idmap is not None
    pids = [f.worker_pid, *descendants(f.worker_pid)]
    assert len(pids) >= 2, "the worker's prefork pool"
    for pid in pids:
        ids = process_ids(pid)
        assert ids["Uid"] == [user.uid] * 4 and ids["Gid"] == [user.gid] * 4 and ids["CapEff"] == [0], (pid, ids)
    assert "celery" in Path(f"/proc/{f.worker_pid}/cmdline").read_text(errors="replace")
    (worker,) = f.fleet.json("workers")
    assert worker["name"] == WORKER and "debian" in worker["capabilities"], worker
    assert "capability debian: yes" in f.fleet.log_tail("rootless", 100_000)


def test_a_debian_recipe_dispatched_by_the_coordinator_builds_on_the_rootless_worker(
    rootless_fleet: RootlessFleet,
) -> None:
    f = rootless_fleet
    dash = f.build("dash")
    assert dash["state"] == "built" and dash["worker"] == WORKER, (dash, f.fleet.logs())
    debs = {n for n in dash["artifacts"] or {} if n.endswith(".deb")}
    assert {"dash_0.5.12-2_amd64.deb", "ash_0.5.12-2_all.deb"} <= debs, dash
    record = f.store.get_record(dash["build_key"])
    assert record is not None and record.builder == BUILDER, record
    log = f.log("dash")
    assert f"builder {BUILDER}" in log and "dpkg-deb: building package 'dash'" in log
    # the worker unpacked the environment itself, with its map: the build root keeps real owners (subordinate ids)
    idmap = f.user.idmap
    assert idmap is not None
    roots = list(f.worker_home.rglob(f"root-{idmap.tag}"))
    assert roots, "the rootless worker unpacked its own copy of the environment"
    assert (roots[0] / "var/lib/apt/lists/partial").stat().st_uid == idmap.outer_uid(42)


def test_a_hostile_debian_package_is_contained_on_the_rootless_worker(
    rootless_fleet: RootlessFleet, listener: int
) -> None:
    f = rootless_fleet
    evil = f.build("evil")
    assert evil["state"] == "failed" and evil["worker"] == WORKER, evil
    assert evil["error"]["code"] in (E.SANDBOX_LIMIT, E.BUILD_FAILED), evil["error"]
    assert f.status["ok"] is False, f.status
    log = f.log("evil")
    made = [line for line in log.splitlines() if line.startswith("MADE ")]
    assert "dpkg-deb: building package 'evil'" in log and len(made) == 3, log[-4000:]
    assert any(m.startswith("MADE -rwsr-xr-x") and m.endswith("/evil-su") for m in made), made
    assert any(m.endswith("/shadow -> /etc/shadow") for m in made), made
    attacks = [line for line in log.splitlines() if line.startswith("ATTACK ")]
    assert len(attacks) == 9 and all(line.endswith(": refused") for line in attacks), attacks
    assert SECRET not in log, "a secret of the worker (its store key, its files) reached the build"
    env = [line for line in log.splitlines() if line.startswith("ENV ")]
    assert env and not [e for e in env if "AWS_" in e or "MANGOS_FARM" in e], env
    assert f"uid 1000 caps CapEff:\t{'0' * 16}" in log
    assert Path("/etc/shadow").read_text().splitlines()[0] not in log, "the build read the host's /etc/shadow"
    # the worker lives on, and nothing of the build is left on it: no mount in any namespace, no process of its
    # ids, no file (setuid or not) of them outside the unpacked environment, no work directory, no sleeper
    assert f.fleet.workers["rootless"].poll() is None
    idmap = f.user.idmap
    assert idmap is not None
    assert mounts_mentioning(str(f.worker_home)) == []
    subids = range(idmap.subuid, idmap.subuid + idmap.count)
    assert processes_of(subids) == []
    envs = f.worker_home / "cache" / "envs"  # the unpacked environment: owned by its map on purpose
    left = [p for p in f.worker_home.rglob("*") if p.lstat().st_uid in subids and envs not in p.parents]
    assert left == [], "files of the build's ids outlived it"
    assert not list((f.worker_home / "work").glob("*/*")), "the build's work directory is gone"
    assert running(MARK) == [], "the sleeper it left behind was killed with it"

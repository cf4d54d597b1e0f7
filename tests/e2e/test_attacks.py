"""Attacks on a running farm, end to end through the CLI and real processes.

- A fleet whose Redis demands an ACL user and password: hostile recipes try to read the worker's AWS credentials,
  broker password and home, and to reach Redis and the S3 endpoint on loopback; a process with broker access but
  without the coordinator's key enqueues forged builds. Nothing leaks, nothing forged is built, the worker stays
  healthy; the refusals are in the worker's audit log and its metrics.
- The embedded farm: results signed by an unknown builder key, or by a key revoked afterwards, are refused by the
  coordinator, also when found in the store later, and `verify` refuses the revoked key's artifacts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MakeRepo, RedisServer, require, write_recipe
from tests.e2e.conftest import Farm
from tests.store.conftest import REGION, MotoServer

pytestmark = pytest.mark.e2e

PASSWORD = "br0ker-pw-3c9d1f"
AWS_SECRET = "aws-s3cret-8e21b7"


class AclRedis(RedisServer):
    """A real redis-server that only admits the ACL user ``farm`` with a password (the default user is off)."""

    @property
    def url(self) -> str:
        return f"redis://farm:{PASSWORD}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.workdir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--user",
            "default",
            "off",
            "--user",
            "farm",
            "on",
            f">{PASSWORD}",
            "~*",
            "&*",
            "+@all",
        ]
        log = (self.workdir / "redis.log").open("ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        import redis

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis.from_url(self.url).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server with ACL did not start")


@pytest.fixture
def secure_fleet(tmp_path: Path, moto_server: MotoServer) -> Iterator[Any]:
    from tests.e2e.fleet import Fleet

    server = AclRedis(tmp_path / "redis")
    server.start()
    bucket = f"farm-{uuid.uuid4().hex[:12]}"
    moto_server.client.create_bucket(Bucket=bucket)
    aws = {
        "AWS_ACCESS_KEY_ID": "AKIAFLEET",
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL_S3": moto_server.url,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    fleet = Fleet(tmp_path, server, f"s3://{bucket}/farm", aws)
    fleet.start_coordinator()
    try:
        yield fleet
    finally:
        fleet.close()
        server.stop()


def recipe(directory: Path, name: str, repo: Path, commit: str, *, steps: list[str], outputs: list[str]) -> None:
    """A recipe file; strings as JSON strings, which TOML reads as basic strings (steps hold both quote kinds)."""
    directory.mkdir(parents=True, exist_ok=True)
    text = (
        f'name = {json.dumps(name)}\nversion = "1.0"\noutputs = {json.dumps(outputs)}\n\n'
        f"[source]\ngit = {json.dumps(str(repo))}\ncommit = {json.dumps(commit)}\n\n"
        f"[build]\nsteps = {json.dumps(steps)}\n"
    )
    (directory / f"{name}.toml").write_text(text)


def _forged_request(repo: Path, commit: str) -> dict[str, Any]:
    recipe = {
        "name": "forged",
        "version": "1",
        "source": {"git": str(repo), "commit": commit},
        "build": {"steps": ['echo owned > "$OUT/owned"']},
        "outputs": ["owned"],
    }
    return {
        "build_key": "f" * 64,
        "recipe": recipe,
        "recipe_path": "forged.toml",
        "fetch_url": str(repo),
        "tree": "0" * 40,
        "environment": "0" * 64,
        "dependencies": [],
        "lease": "",
    }


def test_fleet_with_broker_auth_resists_secret_theft_network_and_forged_tasks(
    secure_fleet: Any, moto_server: MotoServer, make_repo: MakeRepo, tmp_path: Path
) -> None:
    import redis
    from celery import Celery
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from farm.trust import tasksig
    from farm.trust.keys import BuilderKey

    fleet = secure_fleet
    # Without the ACL password the broker is closed.
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=fleet.redis.port).ping()
    fleet.start_worker("w1")
    fleet.wait_workers(1)
    worker_home = fleet.root / "w1"
    repo, commit = make_repo("attack-src", {"a": "a\n"})

    # 1. A process with broker access but not the coordinator's key enqueues builds: unsigned, self-signed.
    attacker = Celery("attacker", broker=fleet.redis.url, backend=fleet.redis.url, set_as_current=False)
    request = _forged_request(repo, commit)
    own = BuilderKey(Ed25519PrivateKey.generate())
    forged = [
        attacker.send_task("mangos.build", args=[request], queue="mangos.build.amd64"),
        attacker.send_task(
            "mangos.build",
            args=[request],
            kwargs={"signature": tasksig.sign("x", request, own)},
            queue="mangos.build.amd64",
        ),
    ]
    tid = str(uuid.uuid4())
    forged.append(
        attacker.send_task(
            "mangos.build",
            args=[request],
            kwargs={"signature": tasksig.sign(tid, request, own)},
            queue="mangos.build.amd64",
            task_id=tid,
        )
    )
    for result in forged:
        outcome = result.get(timeout=60)
        assert outcome["ok"] is False and outcome["error"]["code"] == "E-TASK-UNSIGNED", outcome
    events = [json.loads(line) for line in (worker_home / "audit.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["forged_task"] * 3
    assert all(e["who"] == "w1@fleet" and "forged" in e["what"] for e in events)
    assert fleet.builds_executed("forged") == 0
    listed = fleet.cli("fetch", "--commit", commit, check=False)
    assert listed.returncode != 0 and "E-FETCH-NOTHING" in listed.stderr
    scrape = urllib.request.urlopen(f"http://127.0.0.1:{fleet.metrics_ports['w1']}/metrics", timeout=10).read()
    assert b'mangos_security_events_total{event="forged_task"} 3.0' in scrape

    # 2. Hostile recipes on the same worker, through the real coordinator: secrets, loopback services.
    recipes = tmp_path / "recipes"
    probes = [
        f"{worker_home}/keys/builder.key",
        f"{worker_home}/keys/coordinator.pub",
        "/root/.aws/credentials",
        f"{fleet.root}/coordinator/keys/coordinator.key",
    ]
    snoop = " ".join(f"'{p}'" for p in probes)
    recipe(
        recipes,
        "snoop",
        repo,
        commit,
        outputs=["seen"],
        steps=[
            'env > "$OUT/seen"; cat /proc/*/environ >> "$OUT/seen" 2>/dev/null || true',
            f'for f in {snoop}; do cat "$f" >> "$OUT/seen" 2>&1 || echo "no $f" >> "$OUT/seen"; done',
        ],
    )
    connect = "python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {}), timeout=2)'"
    recipe(recipes, "redis-probe", repo, commit, steps=[connect.format(fleet.redis.port)], outputs=["x"])
    s3_port = int(moto_server.url.rsplit(":", 1)[1].strip("/"))
    recipe(recipes, "s3-probe", repo, commit, steps=[connect.format(s3_port)], outputs=["x"])
    write_recipe(recipes, "fine", git_url=str(repo), commit=commit, outputs=["a"], steps=['cp a "$OUT/a"'])
    run = fleet.cli("rebuild", str(recipes)).stdout.strip()
    status = fleet.wait_run(run, timeout=180)
    builds = {b["recipe"]: b for b in status["builds"]}
    assert builds["snoop"]["state"] == "built" and builds["fine"]["state"] == "built", status
    for probe in ("redis-probe", "s3-probe"):
        assert builds[probe]["state"] == "failed", builds[probe]
        assert builds[probe]["error"]["code"] == "E-BUILD-FAILED"
        assert "Connection refused" in builds[probe]["log_tail"]
    out = tmp_path / "out"
    fleet.cli("fetch", "--commit", commit, "--recipe", "snoop", "-o", str(out))
    seen = (out / "seen").read_text(errors="replace")
    for secret in (PASSWORD, AWS_SECRET, "AKIAFLEET", moto_server.url, "PRIVATE KEY"):
        assert secret not in seen, secret
    for p in probes:
        assert f"no {p}\n" in seen
    # The worker was never blamed for the recipes' failures.
    assert not any(w["disabled"] for w in fleet.json("workers"))


# -- results and builder keys on the embedded farm ---------------------------------------------------------------
@pytest.fixture
def farm(tmp_path: Path) -> Farm:
    require("bwrap")
    home = tmp_path / ".mangos"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANGOS_FARM_")}
    env |= {"MANGOS_FARM_HOME": str(home), "MANGOS_FARM_WORKERS": "1", "MANGOS_FARM_MAX_ATTEMPTS": "1"}
    f = Farm(tmp_path, home, env)
    f.run("keys", "generate")
    return f


def _failed(result: dict[str, Any], recipe: str) -> dict[str, Any]:
    build = next(b for b in result["builds"] if b["recipe"] == recipe)
    assert build["state"] == "failed", build
    error: dict[str, Any] = build["error"]
    return error


def test_results_signed_by_unknown_or_revoked_builder_keys_are_refused(
    farm: Farm, make_repo: MakeRepo, tmp_path: Path
) -> None:
    repo, commit = make_repo("keys-src", {"a": "a\n"})
    recipes = tmp_path / "recipes"
    write_recipe(recipes, "rogue", git_url=str(repo), commit=commit, outputs=["a"], steps=['cp a "$OUT/a"'])
    keys = farm.home / "keys"
    honest = (keys / "builder.key").read_bytes()
    other = tmp_path / "other"
    farm.run("keys", "generate", env={"MANGOS_FARM_HOME": str(other)})
    shutil.copy(other / "keys" / "builder.key", keys / "builder.key")  # the worker signs with an unknown key

    result = farm.json("rebuild", str(recipes), check=False)
    error = _failed(result, "rogue")
    assert error["code"] == "E-RESULT-REFUSED" and "not trusted" in error["message"], error
    # Its record is in the store now, but a later run does not take it as cached either.
    again = _failed(farm.json("rebuild", str(recipes), check=False), "rogue")
    assert again["code"] == "E-RESULT-REFUSED", again

    (keys / "builder.key").write_bytes(honest)
    write_recipe(recipes, "later", git_url=str(repo), commit=commit, outputs=["b"], steps=['cp a "$OUT/b"'])
    ok = farm.json("rebuild", str(recipes), check=False)
    assert next(b for b in ok["builds"] if b["recipe"] == "later")["state"] == "built"
    out = tmp_path / "out"
    farm.run("fetch", "--commit", commit, "--recipe", "later", "-o", str(out))
    assert farm.json("verify", str(out))["failed"] == []

    keyid = json.loads(farm.run("keys", "list", "--json").stdout)[0]["keyid"]
    farm.run("keys", "revoke", keyid, "--reason", "builder compromised")
    revoked = _failed(farm.json("rebuild", str(recipes), check=False), "later")
    assert revoked["code"] == "E-RESULT-REFUSED" and "revoked" in revoked["message"], revoked
    check = farm.run("verify", str(out), check=False)
    assert check.returncode != 0 and "E-KEY-REVOKED" in check.stdout + check.stderr
    events = [e["event"] for e in farm.json("audit")]
    assert events.count("refused_result") >= 2 and "key_revoked" in events and "revoked_key_used" in events

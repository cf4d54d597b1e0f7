"""Hostile recipes against the real sandbox: real git, bubblewrap, cgroups and a real local store.

Each attack is a recipe whose build tries something a build must not do. Every one is contained: the build fails
with a clear E-SANDBOX-LIMIT / E-BUILD-OUTPUT reason (or, for reads of secrets, finds nothing), the limit hit is
in the audit log, and the same worker context then builds an ordinary recipe fine.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.build import BuildOutcome, BuildRequest
from farm.build.context import WorkerContext
from farm.build.execute import execute_build
from farm.build.sandbox import MIB, Limits
from farm.envs.host import host_environment
from farm.errors import E
from farm.identity import build_key
from farm.recipes import Recipe, Source
from farm.sources.git import SourceCache
from farm.store import open_store
from farm.trust import audit
from farm.trust.keys import BuilderKey
from tests.conftest import RedisServer, git, require

pytestmark = pytest.mark.integration

SECRET = "s3cr3t-AKIA-do-not-leak-7f1c"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    require("git")
    repo = tmp_path_factory.mktemp("attack-src")
    git(repo, "init", "-q", "-b", "main")
    (repo / "hello.c").write_text('#include <stdio.h>\nint main(void){puts("hi");return 0;}\n')
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "src")
    return repo, git(repo, "rev-parse", "HEAD")


@pytest.fixture(scope="module")
def worker_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A worker's home as an operator would have it: AWS credentials, a builder key, a broker password file."""
    home = tmp_path_factory.mktemp("worker-home")
    (home / ".aws").mkdir()
    (home / ".aws" / "credentials").write_text(f"[default]\naws_secret_access_key = {SECRET}\n")
    (home / "broker-password").write_text(SECRET)
    return home


@pytest.fixture
def ctx(tmp_path: Path, builder_key: BuilderKey, worker_home: Path, monkeypatch: pytest.MonkeyPatch) -> WorkerContext:
    require("bwrap")
    # The worker's own environment carries every secret a real worker has.
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("MANGOS_FARM_BROKER", f"redis://farm:{SECRET}@127.0.0.1:6379/0")
    monkeypatch.setenv("HOME", str(worker_home))
    return WorkerContext(
        store=open_store(str(tmp_path / "store")),
        builder_key=builder_key,
        sources=SourceCache(tmp_path / "cache"),
        work_root=tmp_path / "work",
        builder_id="attacked-builder",
        environment=host_environment(),
        timeout=60,
        audit_log=tmp_path / "audit.jsonl",
        limits=Limits(memory=256 * MIB, processes=64, scratch=64 * MIB, output=32 * MIB, tmp=16 * MIB),
    )


def request(repo: tuple[Path, str], name: str, steps: list[str], outputs: list[str]) -> BuildRequest:
    path, commit = repo
    recipe = Recipe(name=name, version="1.0", source=Source(git=str(path), commit=commit), steps=tuple(steps),
                    outputs=tuple(outputs))  # fmt: skip
    tree = git(path, "rev-parse", f"{commit}^{{tree}}")
    env = host_environment().digest
    key = build_key(recipe.content(), commit, tree, env, {})
    return BuildRequest(key, recipe.content(), str(path / f"{name}.toml"), str(path), tree, env)


def still_healthy(ctx: WorkerContext, repo: tuple[Path, str]) -> None:
    ok = execute_build(request(repo, "after", ['cc -o "$OUT/hello" hello.c && "$OUT/hello"'], ["hello"]), ctx)
    assert ok.ok, ok.log_tail
    assert not list(ctx.work_root.iterdir()), "nothing of the attack is left in the work directory"


def failed(outcome: BuildOutcome, code: str, *words: str) -> str:
    assert not outcome.ok, outcome.log_tail
    assert outcome.error is not None
    message = f"{outcome.error['message']} {outcome.error.get('hint', '')}"
    assert outcome.error["code"] == code, (outcome.error, outcome.log_tail)
    for w in words:
        assert w in message, message
    return message


def audited(ctx: WorkerContext, limit: str) -> None:
    assert ctx.audit_log is not None
    events = list(audit.read(ctx.audit_log))
    assert any(e["event"] == audit.SANDBOX_LIMIT and e.get("limit") == limit for e in events), events


# -- secrets -----------------------------------------------------------------------------------------------------
def test_secrets_are_not_readable_from_a_build(
    ctx: WorkerContext, repo: tuple[Path, str], worker_home: Path, builder_key: BuilderKey
) -> None:
    targets = [
        worker_home / ".aws" / "credentials",
        worker_home / "broker-password",
        "/root/.aws/credentials",
        "/proc/1/environ",
        "/etc/shadow",
    ]
    probes = " ".join(f"'{t}'" for t in targets)
    steps = [
        'env > "$OUT/env.txt"',
        f'for f in {probes}; do cat "$f" >> "$OUT/probe.txt" 2>&1 || echo "no $f" >> "$OUT/probe.txt"; done',
        'ls -la / /build "$HOME" >> "$OUT/probe.txt" 2>&1',
        'cat /proc/*/environ >> "$OUT/probe.txt" 2>/dev/null || true',
    ]
    outcome = execute_build(request(repo, "snoop", steps, ["env.txt", "probe.txt"]), ctx)
    assert outcome.ok, outcome.log_tail
    assert outcome.record is not None
    seen = b"".join(ctx.store.get_bytes(a["digest"]) for a in outcome.record["artifacts"]).decode(errors="replace")
    assert SECRET not in seen
    assert "AWS_" not in seen and "MANGOS_FARM" not in seen
    assert f"{worker_home}/.aws/credentials: No such file or directory" in seen  # the worker's home is not there
    assert "HOME=/build/home" in seen
    for t in targets:  # every file probe read nothing; /proc/1 is the sandbox's own init, with a clean environment
        assert t == "/proc/1/environ" or f"no {t}\n" in seen, seen
    still_healthy(ctx, repo)


@pytest.fixture
def listener() -> Iterator[int]:
    """A real TCP service on loopback (as the S3 endpoint or anything else a worker can reach would be)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_no_network_not_even_loopback(
    ctx: WorkerContext, repo: tuple[Path, str], redis_server: RedisServer, listener: int
) -> None:
    for port in (redis_server.port, listener):  # reachable from the worker itself: the test would notice a leak
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    connect = (
        "python3 -c 'import socket,sys; socket.create_connection((\"127.0.0.1\", int(sys.argv[1])), timeout=2)' {}"
    )
    for port in (redis_server.port, listener):
        step = f"{connect.format(port)} && echo CONN''ECTED"  # the log shows the step: only a success prints this
        outcome = execute_build(request(repo, "netcat", [step], ["nothing"]), ctx)
        failed(outcome, E.BUILD_FAILED, "step 1")
        assert "CONNECTED" not in outcome.log_tail, outcome.log_tail
        assert "Connection refused" in outcome.log_tail  # the sandbox's own loopback: nothing listens there
    ip = execute_build(request(repo, "ifaces", ["cat /proc/net/dev > $OUT/dev"], ["dev"]), ctx)
    assert ip.ok and ip.record is not None
    devices = ctx.store.get_bytes(ip.record["artifacts"][0]["digest"]).decode()
    assert [line.split(":")[0].strip() for line in devices.splitlines()[2:]] == ["lo"]  # its own loopback only
    still_healthy(ctx, repo)


# -- resource limits ---------------------------------------------------------------------------------------------
def test_fork_bomb_hits_the_process_limit(ctx: WorkerContext, repo: tuple[Path, str]) -> None:
    start = time.monotonic()
    outcome = execute_build(request(repo, "bomb", ["bomb() { bomb & bomb & wait; }; bomb"], ["x"]), ctx)
    failed(outcome, E.SANDBOX_LIMIT, "process limit", "64")
    assert time.monotonic() - start < 30
    audited(ctx, "process")
    still_healthy(ctx, repo)


def test_memory_hog_hits_the_memory_limit(ctx: WorkerContext, repo: tuple[Path, str]) -> None:
    outcome = execute_build(request(repo, "hog", ["python3 -c 'x = b\"x\" * (1024 ** 3)'"], ["x"]), ctx)
    failed(outcome, E.SANDBOX_LIMIT, "memory limit", "256 MiB")
    audited(ctx, "memory")
    still_healthy(ctx, repo)


@pytest.mark.parametrize(
    "script",
    [
        'dd if=/dev/zero of="$OUT/big" bs=1M count=200',  # one huge file: the file-size rlimit stops it
        'for i in $(seq 1 100); do head -c 1048576 /dev/zero > "$OUT/f$i"; done',  # many files: the size check
    ],
    ids=["one-file", "many-files"],
)
def test_filling_the_disk_hits_the_scratch_limit(ctx: WorkerContext, repo: tuple[Path, str], script: str) -> None:
    outcome = execute_build(request(repo, "fill", [script], ["big"]), ctx)
    failed(outcome, E.SANDBOX_LIMIT, "disk limit")
    audited(ctx, "disk")
    still_healthy(ctx, repo)


def test_filling_tmp_stops_at_its_size(ctx: WorkerContext, repo: tuple[Path, str]) -> None:
    outcome = execute_build(request(repo, "tmpfill", ["head -c 100000000 /dev/zero > /tmp/fill"], ["x"]), ctx)
    failed(outcome, E.BUILD_FAILED, "step 1")
    assert "No space left on device" in outcome.log_tail
    still_healthy(ctx, repo)


def test_outputs_over_the_cap_are_refused(ctx: WorkerContext, repo: tuple[Path, str]) -> None:
    script = 'mkdir "$OUT/d" && for i in 1 2 3; do head -c 15000000 /dev/urandom > "$OUT/d/f$i"; done'
    outcome = execute_build(request(repo, "huge", [script], ["d"]), ctx)
    failed(outcome, E.SANDBOX_LIMIT, "output size limit")
    audited(ctx, "output size")
    still_healthy(ctx, repo)


def _processes_with(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                found.append(int(pid))
    return found


def test_running_forever_is_killed_with_its_whole_tree(ctx: WorkerContext, repo: tuple[Path, str]) -> None:
    ctx.timeout = 3
    script = "(setsid sleep 987654 &) ; (sleep 987653 &) ; nohup sleep 987652 & sleep 987651"
    start = time.monotonic()
    outcome = execute_build(request(repo, "forever", [script], ["x"]), ctx)
    failed(outcome, E.SANDBOX_LIMIT, "timed out after 3s", "killed")
    assert time.monotonic() - start < 15
    deadline = time.monotonic() + 10  # killed processes may take a moment to go; an escaped one sleeps for days
    while _processes_with("98765") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_with("98765") == [], "no process of the build outlives it"
    audited(ctx, "time")
    ctx.timeout = 60
    still_healthy(ctx, repo)


# -- hostile outputs ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("script", "outputs", "words"),
    [
        ('cp /usr/bin/true "$OUT/su" && chmod 4755 "$OUT/su"', ["su"], ["setuid"]),
        ('mkdir "$OUT/bin" && cp /usr/bin/true "$OUT/bin/su" && chmod 4755 "$OUT/bin/su"', ["bin"], ["setuid"]),
        ('mkdir "$OUT/bin" && cp /usr/bin/true "$OUT/bin/sg" && chmod 2755 "$OUT/bin/sg"', ["bin"], ["setgid"]),
        ('ln -s /etc/shadow "$OUT/shadow"', ["shadow"], ["outside"]),
        ('mkdir "$OUT/etc" && ln -s /etc/shadow "$OUT/etc/shadow"', ["etc"], ["outside", "/etc/shadow"]),
        ('mkdir -p "$OUT/etc/a" && ln -s ../../../../etc/shadow "$OUT/etc/a/s"', ["etc"], ["outside"]),
        ('mkdir "$OUT/p" && mkfifo "$OUT/p/fifo"', ["p"], ["FIFO"]),
    ],
    ids=[
        "setuid-file",
        "setuid-in-tree",
        "setgid-in-tree",
        "shadow-link",
        "shadow-link-in-tree",
        "dotdot-link",
        "fifo",
    ],
)
def test_hostile_outputs_are_refused(
    ctx: WorkerContext, repo: tuple[Path, str], script: str, outputs: list[str], words: list[str]
) -> None:
    outcome = execute_build(request(repo, "evil-out", [script], outputs), ctx)
    failed(outcome, E.BUILD_OUTPUT, *words)
    assert ctx.store.get_record(outcome.build_key) is None
    still_healthy(ctx, repo)


def test_a_build_sees_only_its_own_uid_and_no_capabilities(ctx: WorkerContext, repo: tuple[Path, str]) -> None:
    steps = ['id -u > "$OUT/who" && grep -E "^Cap(Eff|Prm)" /proc/self/status >> "$OUT/who"']
    outcome = execute_build(request(repo, "whoami", steps, ["who"]), ctx)
    assert outcome.ok and outcome.record is not None, outcome.log_tail
    text = ctx.store.get_bytes(outcome.record["artifacts"][0]["digest"]).decode()
    assert text.splitlines()[0] == "1000"
    assert "CapEff:\t0000000000000000" in text and "CapPrm:\t0000000000000000" in text


def test_killing_everything_it_can_see_harms_only_itself(ctx: WorkerContext, repo: tuple[Path, str]) -> None:
    sentinel = subprocess.Popen(["sleep", "60"])  # a process of the worker's, outside the sandbox
    try:
        outcome = execute_build(request(repo, "killer", ["kill -9 -1; kill -9 1; sleep 1"], ["x"]), ctx)
        failed(outcome, E.BUILD_FAILED, "step 1")
        assert sentinel.poll() is None, "a process outside the build was killed"
    finally:
        sentinel.kill()
        sentinel.wait()
    still_healthy(ctx, repo)

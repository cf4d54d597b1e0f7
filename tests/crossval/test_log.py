"""The attestation log's chain, signed head and consistency checks, with real Ed25519 keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.crossval.log import (
    ENTRIES,
    HEAD,
    InputsKey,
    Log,
    chain_head,
    check_consistent,
    parse_entries,
    read_verified,
)
from farm.errors import E, FarmError
from farm.trust.keys import BuilderKey, generate
from farm.trust.provenance import sign, statement

pytestmark = pytest.mark.unit


def _stmt(name: str, digest: str, commit: str = "a" * 40) -> dict[str, object]:
    return statement(
        subjects=[(name, digest)],
        recipe={"name": name},
        recipe_digest="r" * 64,
        source_url="https://example.invalid/x.git",
        commit=commit,
        tree="t" * 40,
        environment="e" * 64,
        dependencies=[],
        builder_id="b",
        build_key="k" * 64,
        started="2026-01-01T00:00:00Z",
        finished="2026-01-01T00:00:01Z",
    )


def _fill(root: Path, key: BuilderKey, n: int) -> Log:
    log = Log.open(root)
    for i in range(n):
        digest = f"{i:064x}"
        stmt = _stmt(f"pkg{i}", digest, commit=f"{i:040x}")
        log.append(
            key=InputsKey.from_statement(stmt, "amd64"),
            recipe=f"pkg{i}",
            version="1.0",
            build_key=f"{i + 100:064x}",
            outputs={f"pkg{i}": digest},
            envelope=sign(stmt, key),
        )
    log.sign(key)
    return log


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> BuilderKey:
    return generate(tmp_path_factory.mktemp("k"))


def test_log_round_trips_and_verifies(tmp_path: Path, key: BuilderKey) -> None:
    log = _fill(tmp_path, key, 3)
    entries, head = read_verified((tmp_path / ENTRIES).read_bytes(), (tmp_path / HEAD).read_bytes(), key.public, "t")
    assert [e.recipe for e in entries] == ["pkg0", "pkg1", "pkg2"]
    assert head == chain_head(log.entries) and head.size == 3
    assert Log.open(tmp_path).entries == log.entries
    assert entries[1].key == InputsKey("1".zfill(40), "r" * 64, "e" * 64, "amd64")


def test_removed_entry_breaks_the_chain(tmp_path: Path, key: BuilderKey) -> None:
    _fill(tmp_path, key, 3)
    lines = (tmp_path / ENTRIES).read_bytes().splitlines(keepends=True)
    with pytest.raises(FarmError) as err:
        parse_entries(lines[0] + lines[2], "t")
    assert err.value.code == E.LOG_INVALID


def test_truncated_log_does_not_match_its_signed_head(tmp_path: Path, key: BuilderKey) -> None:
    _fill(tmp_path, key, 3)
    lines = (tmp_path / ENTRIES).read_bytes().splitlines(keepends=True)
    with pytest.raises(FarmError, match="removed or rewritten after signing") as err:
        read_verified(b"".join(lines[:2]), (tmp_path / HEAD).read_bytes(), key.public, "t")
    assert err.value.code == E.LOG_INVALID


def test_head_signed_by_another_key_is_refused(tmp_path: Path, key: BuilderKey) -> None:
    _fill(tmp_path, key, 1)
    other = generate(tmp_path / "other")
    with pytest.raises(FarmError, match="not signed by the key") as err:
        read_verified((tmp_path / ENTRIES).read_bytes(), (tmp_path / HEAD).read_bytes(), other.public, "t")
    assert err.value.code == E.LOG_INVALID


def test_entry_outputs_must_match_signed_provenance(tmp_path: Path, key: BuilderKey) -> None:
    log = Log.open(tmp_path)
    stmt = _stmt("pkg", "1" * 64)
    log.append(
        key=InputsKey.from_statement(stmt, "amd64"),
        recipe="pkg",
        version="1",
        build_key="2" * 64,
        outputs={"pkg": "3" * 64},  # not what was signed
        envelope=sign(stmt, key),
    )
    log.sign(key)
    with pytest.raises(FarmError, match="outputs differ from its signed provenance"):
        read_verified((tmp_path / ENTRIES).read_bytes(), (tmp_path / HEAD).read_bytes(), key.public, "t")


def test_rewritten_history_is_inconsistent_with_the_head_seen_before(tmp_path: Path, key: BuilderKey) -> None:
    first = _fill(tmp_path / "a", key, 3)
    seen = chain_head(first.entries)
    grown = _fill(tmp_path / "a2", key, 5)  # same first three entries (deterministic), then two more
    check_consistent(grown.entries, seen, "t")
    shrunk = _fill(tmp_path / "b", key, 2)
    with pytest.raises(FarmError, match="entries were removed") as err:
        check_consistent(shrunk.entries, seen, "t")
    assert err.value.code == E.LOG_INCONSISTENT
    # A re-signed, self-consistent log whose second entry differs: valid on its own, inconsistent with history.
    rewritten = Log.open(tmp_path / "c")
    for i, e in enumerate(first.entries):
        outputs = {k: ("f" * 64 if i == 1 else v) for k, v in e.outputs.items()}
        stmt = _stmt(e.recipe, outputs[e.recipe], commit=e.key.commit)
        rewritten.append(
            key=e.key,
            recipe=e.recipe,
            version=e.version,
            build_key=e.build_key,
            outputs=outputs,
            envelope=sign(stmt, key),
        )
    rewritten.sign(key)
    read_verified((tmp_path / "c" / ENTRIES).read_bytes(), (tmp_path / "c" / HEAD).read_bytes(), key.public, "t")
    with pytest.raises(FarmError, match="rewritten") as err:
        check_consistent(rewritten.entries, seen, "t")
    assert err.value.code == E.LOG_INCONSISTENT

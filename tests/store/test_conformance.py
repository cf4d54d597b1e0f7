"""The store conformance suite: what every :class:`farm.store.Store` promises, checked through the interface.

Each test runs once per backend (see ``conftest.py``). Only the test whose name starts with ``test_local_only_``
looks at a backend's layout on disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import queue
import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pytest

from farm.errors import E, FarmError
from farm.store import open_store
from farm.store.base import Artifact, BuildRecord, Store
from farm.store.local import LocalStore
from tests.store.conftest import corrupt_blob

pytestmark = pytest.mark.integration

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40
RACERS = 8
RACE_ROUNDS = 25
BARRIER_TIMEOUT = 60.0
JOIN_TIMEOUT = 120.0

INVALID_DIGESTS = [
    pytest.param("", id="empty"),
    pytest.param("abc", id="short"),
    pytest.param("0" * 63, id="63-hex"),
    pytest.param("0" * 65, id="65-hex"),
    pytest.param("A" * 64, id="uppercase"),
    pytest.param("g" * 64, id="not-hex"),
    pytest.param("sha256:" + "0" * 64, id="prefixed"),
    pytest.param("0" * 64 + "\n", id="trailing-newline"),
    pytest.param(" " + "0" * 63, id="leading-space"),
    pytest.param("../" + "0" * 61, id="dot-dot"),
    pytest.param("0" * 32 + "/" + "0" * 31, id="slash"),
]


# -- helpers ---------------------------------------------------------------------------------------------------
def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def key(n: int) -> str:
    """A well-formed build key (any 64-hex string is one, as far as the store is concerned)."""
    return sha256(f"build key {n}".encode())


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


@contextmanager
def farm_error(code: str) -> Iterator[None]:
    with pytest.raises(FarmError) as info:
        yield
    assert info.value.code == code, info.value.render()


def record_blobs(build_key: str, recipe: str, builder: str) -> dict[str, bytes]:
    """The contents of the blobs a record made by :func:`make_record` names."""
    return {
        "artifact": f"artifact {recipe} {build_key} {builder}".encode(),
        "provenance": f"envelope {recipe} {build_key} {builder}".encode(),
        "log": f"log {recipe} {build_key} {builder}".encode(),
    }


def make_record(
    store: Store,
    build_key: str,
    *,
    recipe: str = "hello",
    commit: str = COMMIT_A,
    builder: str = "builder-1",
    finished: str = "2026-02-03T04:05:06Z",
    store_blobs: bool = True,
) -> BuildRecord:
    """A complete record whose artifact, provenance and log blobs are stored first (unless told not to).

    The blob contents depend on the builder, so two builders' records for one key differ, as two runs of a build
    that is not reproducible would.
    """
    blobs = record_blobs(build_key, recipe, builder)
    art, prov, log = blobs["artifact"], blobs["provenance"], blobs["log"]
    if store_blobs:
        for data in blobs.values():
            store.put_bytes(data)
    return BuildRecord(
        build_key=build_key,
        recipe=recipe,
        version="1.0",
        recipe_digest=sha256(f"recipe {recipe}".encode()),
        source_url=f"https://git.invalid/{recipe}.git",
        commit=commit,
        tree=sha256(commit.encode())[:40],
        environment=sha256(b"environment"),
        artifacts=(Artifact(name=recipe, digest=sha256(art), size=len(art), executable=True),),
        provenance=sha256(prov),
        log=sha256(log),
        builder=builder,
        started="2026-02-03T04:00:00Z",
        finished=finished,
        key_inputs={"schema": "test", "dependencies": {"dep": {"dep.tar": "0" * 64}}, "list": [1, "two"]},
    )


def keys_of(records: list[BuildRecord]) -> set[str]:
    return {r.build_key for r in records}


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# -- blobs -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 1, 4096, (1 << 20) * 3 + 17], ids=["empty", "one", "4k", "3m"])
def test_put_bytes_returns_the_sha256(store: Store, size: int) -> None:
    data = payload(size, seed=size)
    digest = store.put_bytes(data)
    assert digest == sha256(data)
    assert store.has_blob(digest)
    assert store.get_bytes(digest) == data


@pytest.mark.parametrize("executable", [False, True], ids=["plain", "executable"])
def test_put_file_returns_name_digest_size_and_mode(store: Store, tmp_path: Path, executable: bool) -> None:
    data = payload((1 << 20) + 5, seed=1)
    path = tmp_path / "files" / "libthing.so"
    path.parent.mkdir()
    path.write_bytes(data)
    path.chmod(0o755 if executable else 0o644)
    artifact = store.put_file(path)
    assert artifact == Artifact(name="libthing.so", digest=sha256(data), size=len(data), executable=executable)
    assert store.get_bytes(artifact.digest) == data
    assert path.read_bytes() == data  # the source file is left alone


def test_same_bytes_twice_give_one_blob(store: Store, tmp_path: Path) -> None:
    data = b"the same bytes\n" * 1000
    first = store.put_bytes(data)
    second = store.put_bytes(data)
    path = tmp_path / "same"
    path.write_bytes(data)
    third = store.put_file(path)
    assert first == second == third.digest == sha256(data)
    assert third.size == len(data)
    assert store.get_bytes(first) == data


def test_has_blob(store: Store) -> None:
    data = b"present"
    absent = sha256(b"never stored")
    assert not store.has_blob(sha256(data))
    digest = store.put_bytes(data)
    assert store.has_blob(digest)
    assert not store.has_blob(absent)


def test_fetch_blob_writes_verified_bytes_atomically(store: Store, tmp_path: Path) -> None:
    data = payload((1 << 20) * 2 + 3, seed=2)  # several read chunks
    digest = store.put_bytes(data)
    dest_dir = tmp_path / "dest"
    dest_dir.mkdir()
    dest = dest_dir / "out.bin"
    store.fetch_blob(digest, dest)
    assert dest.read_bytes() == data
    assert listing(dest_dir) == ["out.bin"], "fetch_blob left a staging file next to its destination"


def test_fetch_blob_replaces_an_existing_file(store: Store, tmp_path: Path) -> None:
    data = b"new contents"
    digest = store.put_bytes(data)
    dest = tmp_path / "dest" / "out"
    dest.parent.mkdir()
    dest.write_bytes(b"old contents that are longer than the new ones")
    store.fetch_blob(digest, dest)
    assert dest.read_bytes() == data
    assert listing(dest.parent) == ["out"]


def test_get_bytes_and_open_blob(store: Store) -> None:
    data = payload(70_000, seed=3)
    digest = store.put_bytes(data)
    assert store.get_bytes(digest) == data
    with store.open_blob(digest) as fh:
        assert fh.read() == data


CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    "flipped-bit": lambda d: d[:100] + bytes([d[100] ^ 1]) + d[101:],
    "truncated": lambda d: d[: len(d) // 2],
    "extended": lambda d: d + b"\0",
    "emptied": lambda d: b"",
}


@pytest.mark.parametrize("damage", list(CORRUPTIONS))
def test_corrupt_blob_fails_fetch_and_leaves_no_file(store: Store, tmp_path: Path, damage: str) -> None:
    data = payload((1 << 20) + 1000, seed=4)
    digest = store.put_bytes(data)
    corrupt_blob(store, digest, CORRUPTIONS[damage](data))
    dest_dir = tmp_path / "dest"
    dest_dir.mkdir()
    with farm_error(E.STORE_CORRUPT):
        store.fetch_blob(digest, dest_dir / "new")
    assert listing(dest_dir) == [], "a corrupt fetch left a (partial) file behind"
    # An existing destination is not replaced by corrupt bytes either.
    kept = dest_dir / "kept"
    kept.write_bytes(b"previous version")
    with farm_error(E.STORE_CORRUPT):
        store.fetch_blob(digest, kept)
    assert kept.read_bytes() == b"previous version"
    assert listing(dest_dir) == ["kept"]


@pytest.mark.parametrize("damage", list(CORRUPTIONS))
def test_corrupt_blob_fails_get_bytes(store: Store, damage: str) -> None:
    data = payload(5000, seed=5)
    digest = store.put_bytes(data)
    corrupt_blob(store, digest, CORRUPTIONS[damage](data))
    with farm_error(E.STORE_CORRUPT):
        store.get_bytes(digest)


def test_missing_blob(store: Store, tmp_path: Path) -> None:
    digest = sha256(b"never stored")
    with farm_error(E.STORE_MISSING):
        store.get_bytes(digest)
    with farm_error(E.STORE_MISSING):
        store.open_blob(digest)
    dest_dir = tmp_path / "dest"
    dest_dir.mkdir()
    with farm_error(E.STORE_MISSING):
        store.fetch_blob(digest, dest_dir / "out")
    assert listing(dest_dir) == []


OPERATIONS: dict[str, Callable[[Store, str, Path], object]] = {
    "has_blob": lambda s, d, _p: s.has_blob(d),
    "get_bytes": lambda s, d, _p: s.get_bytes(d),
    "open_blob": lambda s, d, _p: s.open_blob(d),
    "fetch_blob": lambda s, d, p: s.fetch_blob(d, p / "out"),
    "get_record": lambda s, d, _p: s.get_record(d),
    "keys_present": lambda s, d, _p: s.keys_present([key(1), d]),
}


@pytest.mark.parametrize("operation", list(OPERATIONS))
@pytest.mark.parametrize("digest", INVALID_DIGESTS)
def test_invalid_digest_is_rejected(store: Store, tmp_path: Path, operation: str, digest: str) -> None:
    with farm_error(E.STORE_MISSING):
        OPERATIONS[operation](store, digest, tmp_path)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("digest", INVALID_DIGESTS)
def test_record_with_an_invalid_key_or_blob_digest_is_rejected(store: Store, digest: str) -> None:
    good = make_record(store, key(1))
    with farm_error(E.STORE_MISSING):
        store.put_record(make_record(store, digest))
    bad_artifact = Artifact(name="x", digest=digest, size=1)
    with farm_error(E.STORE_MISSING):
        store.put_record(dataclasses.replace(good, artifacts=(bad_artifact,)))
    assert store.get_record(key(1)) is None
    assert store.records_for_recipe("hello") == []


# -- records ---------------------------------------------------------------------------------------------------
def test_put_record_then_get_it_back(store: Store) -> None:
    record = make_record(store, key(1))
    assert store.get_record(key(1)) is None
    assert store.put_record(record) is True
    got = store.get_record(key(1))
    assert got == record
    assert got is not None and got.to_bytes() == record.to_bytes()


@pytest.mark.parametrize("missing", ["artifact", "provenance", "log"])
def test_put_record_refuses_a_record_whose_blobs_are_missing(store: Store, missing: str) -> None:
    record = make_record(store, key(1), store_blobs=False)
    for what, data in record_blobs(key(1), record.recipe, record.builder).items():
        if what != missing:
            store.put_bytes(data)
    assert record.blob_digests() and not all(store.has_blob(d) for d in record.blob_digests())
    with farm_error(E.STORE_MISSING):
        store.put_record(record)
    assert store.get_record(key(1)) is None
    assert store.keys_present([key(1)]) == set()
    assert store.records_for_recipe("hello") == []
    assert store.records_for_commit(COMMIT_A) == []


def test_put_record_is_put_if_absent(store: Store) -> None:
    first = make_record(store, key(1), builder="first", finished="2026-02-03T04:05:06Z")
    second = make_record(store, key(1), builder="second", finished="2026-02-03T05:00:00Z")
    assert first != second and first.outputs() != second.outputs()
    assert store.put_record(first) is True
    assert store.put_record(second) is False
    assert store.put_record(first) is False  # the same record again is also not "published"
    assert store.get_record(key(1)) == first
    assert store.records_for_recipe("hello") == [first]
    assert store.records_for_commit(COMMIT_A) == [first]


def test_records_for_recipe_and_commit(store: Store) -> None:
    records = [
        make_record(store, key(1), recipe="zlib", commit=COMMIT_A),
        make_record(store, key(2), recipe="zlib", commit=COMMIT_B),
        make_record(store, key(3), recipe="openssl", commit=COMMIT_A),
        make_record(store, key(4), recipe="openssl", commit=COMMIT_A, builder="other"),
    ]
    for r in records:
        assert store.put_record(r)
    assert keys_of(store.records_for_recipe("zlib")) == {key(1), key(2)}
    assert keys_of(store.records_for_recipe("openssl")) == {key(3), key(4)}
    assert keys_of(store.records_for_commit(COMMIT_A)) == {key(1), key(3), key(4)}
    assert keys_of(store.records_for_commit(COMMIT_B)) == {key(2)}
    by_key = {r.build_key: r for r in records}
    for r in store.records_for_recipe("zlib") + store.records_for_commit(COMMIT_A):
        assert r == by_key[r.build_key]
    assert store.records_for_recipe("zlib2") == []
    assert store.records_for_commit("c" * 40) == []


@pytest.mark.parametrize("name", ["", ".", "..", "../records", "a/b", ".hidden", "zlib/"])
def test_lookups_by_odd_names_find_nothing(store: Store, name: str) -> None:
    assert store.put_record(make_record(store, key(1), recipe="zlib"))
    assert store.records_for_recipe(name) == []
    assert store.records_for_commit(name) == []


def test_keys_present(store: Store) -> None:
    for n in (1, 2, 3):
        assert store.put_record(make_record(store, key(n), recipe=f"r{n}"))
    wanted = [key(n) for n in range(6)]
    assert store.keys_present(wanted) == {key(1), key(2), key(3)}
    assert store.keys_present(k for k in wanted if k != key(2)) == {key(1), key(3)}  # any iterable
    assert store.keys_present([key(1), key(1)]) == {key(1)}
    assert store.keys_present([]) == set()
    assert store.keys_present([key(9)]) == set()


def test_get_record_of_an_unknown_key_is_none(store: Store) -> None:
    assert store.get_record(key(1)) is None
    assert store.put_record(make_record(store, key(1)))
    assert store.get_record(key(2)) is None


def test_blob_digest_is_not_a_record(store: Store) -> None:
    digest = store.put_bytes(b"a blob, not a record")
    assert store.get_record(digest) is None
    assert store.keys_present([digest]) == set()


# -- concurrency -----------------------------------------------------------------------------------------------
RaceResult = tuple[int, int, bool, str]  # round, racer, published, error


def _race_put_record(store: Store, index: int, barrier: Any, results: Any) -> None:
    """One racer: per round, prepare its own record for that round's key, wait for all, publish.

    Reports every round and never raises, so the parent never waits for nothing.
    """
    for rnd in range(RACE_ROUNDS):
        try:
            record = make_record(store, key(rnd), builder=f"racer-{index}")
            barrier.wait(timeout=BARRIER_TIMEOUT)
            results.put((rnd, index, store.put_record(record), ""))
        except BaseException as exc:
            results.put((rnd, index, False, repr(exc)))


def _race_put_record_process(url: str, index: int, barrier: Any, results: Any) -> None:
    _race_put_record(open_store(url), index, barrier, results)


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_concurrent_put_record_publishes_exactly_one(store: Store, mode: str) -> None:
    candidates = {
        rnd: [make_record(store, key(rnd), builder=f"racer-{i}", store_blobs=False) for i in range(RACERS)]
        for rnd in range(RACE_ROUNDS)
    }
    torn: list[str] = []
    done = threading.Event()

    def reader() -> None:  # a record is never seen half-written, nor as anything but one racer's record
        while not done.is_set():
            for rnd in range(RACE_ROUNDS):
                try:
                    rec = store.get_record(key(rnd))
                except FarmError as exc:
                    torn.append(exc.render())
                    continue
                if rec is not None and rec not in candidates[rnd]:
                    torn.append(f"round {rnd}: unexpected record {rec}")

    watcher = threading.Thread(target=reader)
    watcher.start()
    results: Any
    try:
        if mode == "threads":
            barrier: Any = threading.Barrier(RACERS)
            results = queue.Queue()
            workers: list[Any] = [
                threading.Thread(target=_race_put_record, args=(store, i, barrier, results)) for i in range(RACERS)
            ]
        else:
            ctx = get_context("spawn")
            barrier, results = ctx.Barrier(RACERS), ctx.Queue()
            workers = [
                ctx.Process(target=_race_put_record_process, args=(store.url, i, barrier, results))
                for i in range(RACERS)
            ]
        for w in workers:
            w.start()
        outcomes: list[RaceResult] = [results.get(timeout=JOIN_TIMEOUT) for _ in range(RACERS * RACE_ROUNDS)]
        for w in workers:
            w.join(timeout=JOIN_TIMEOUT)
    finally:
        done.set()
        watcher.join()
    assert [err for *_, err in outcomes if err] == []
    assert torn == []
    for rnd in range(RACE_ROUNDS):
        winners = sorted(i for r, i, published, _ in outcomes if r == rnd and published)
        assert len(winners) == 1, f"round {rnd}: {len(winners)} racers were told they published: {winners}"
        stored = store.get_record(key(rnd))
        assert stored is not None and stored.builder == f"racer-{winners[0]}", f"round {rnd}"
    assert store.keys_present(key(rnd) for rnd in range(RACE_ROUNDS)) == {key(rnd) for rnd in range(RACE_ROUNDS)}
    assert len(store.records_for_recipe("hello")) == RACE_ROUNDS


def _race_put_file(url: str, path: str, index: int, barrier: Any, results: Any) -> None:
    try:
        store = open_store(url)
        barrier.wait(timeout=BARRIER_TIMEOUT)
        artifact = store.put_file(Path(path))
        results.put((index, artifact.digest, artifact.size, ""))
    except BaseException as exc:
        results.put((index, "", 0, repr(exc)))


def test_concurrent_put_file_of_identical_content_from_processes(store: Store, tmp_path: Path) -> None:
    racers = 4
    data = payload((1 << 20) * 8 + 11, seed=6)
    digest = sha256(data)
    paths = []
    for i in range(racers):
        p = tmp_path / "sources" / str(i) / "big.bin"
        p.parent.mkdir(parents=True)
        p.write_bytes(data)
        paths.append(p)
    read_errors: list[str] = []
    done = threading.Event()

    def reader() -> None:  # once the blob is visible it is whole
        while not done.is_set():
            if store.has_blob(digest):
                try:
                    if store.get_bytes(digest) != data:
                        read_errors.append("get_bytes returned other bytes")
                except FarmError as exc:
                    read_errors.append(exc.render())

    ctx = get_context("spawn")
    barrier, results = ctx.Barrier(racers), ctx.Queue()
    procs = [
        ctx.Process(target=_race_put_file, args=(store.url, str(p), i, barrier, results)) for i, p in enumerate(paths)
    ]
    watcher = threading.Thread(target=reader)
    watcher.start()
    try:
        for proc in procs:
            proc.start()
        outcomes = [results.get(timeout=JOIN_TIMEOUT) for _ in procs]
        for proc in procs:
            proc.join(timeout=JOIN_TIMEOUT)
    finally:
        done.set()
        watcher.join()
    assert [err for *_, err in outcomes if err] == []
    assert {(d, size) for _, d, size, _ in outcomes} == {(digest, len(data))}
    assert read_errors == []
    assert store.get_bytes(digest) == data
    dest = tmp_path / "fetched"
    store.fetch_blob(digest, dest)
    assert dest.read_bytes() == data


# -- local only ------------------------------------------------------------------------------------------------
def test_local_only_crash_leftovers_in_tmp_are_invisible(tmp_path: Path) -> None:
    """A writer killed after staging but before linking into place leaves files in tmp/; nobody sees them."""
    store = LocalStore(tmp_path / "local-store")
    blob = b"a blob whose writer crashed before publishing it"
    blob_digest = sha256(blob)
    record = make_record(store, key(1))  # blobs published, record not
    staged = {
        "put-crashed-blob": blob,  # complete, fsynced, never linked
        "put-partial-blob": blob[:10],  # the writer died mid-write
        "put-crashed-record": record.to_bytes(),  # a complete record that was never linked
        blob_digest: blob,  # even a leftover named like a blob
        f"{key(1)}.json": record.to_bytes(),  # or like a record
    }
    tmp = store.root / "tmp"
    for name, data in staged.items():
        (tmp / name).write_bytes(data)
        os.chmod(tmp / name, 0o444)

    for view in (store, LocalStore(store.root)):  # this process, and one started after the crash
        assert not view.has_blob(blob_digest)
        with farm_error(E.STORE_MISSING):
            view.get_bytes(blob_digest)
        assert view.get_record(key(1)) is None
        assert view.keys_present([key(1)]) == set()
        assert view.records_for_recipe("hello") == []
        assert view.records_for_commit(COMMIT_A) == []

    # The leftovers do not get in the way of publishing the same things for real.
    assert store.put_bytes(blob) == blob_digest
    assert store.get_bytes(blob_digest) == blob
    assert store.put_record(record) is True
    assert store.get_record(key(1)) == record
    assert set(staged) <= set(listing(tmp))  # nothing here cleans up, and nothing needs to

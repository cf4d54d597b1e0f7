"""Storing a file whose digest the caller has (``put_file(path, sha256=...)``) and reading records in batches.

The first two tests run on every backend (like the conformance suite); the others look at how often the S3 store
reads the file and what it sends, through a real moto server.
"""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path
from typing import Any

import pytest

from farm.errors import E, FarmError
from farm.store import Store
from farm.store.s3 import MiB, S3Store
from farm.store.s3_multipart import put_stream
from tests.store.test_conformance import key, make_record
from tests.store.test_s3 import FlakyFile, objects, pending_uploads, spy

pytestmark = pytest.mark.integration


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.mark.parametrize("size", [3, 20 * MiB], ids=["one-part", "multipart"])
def test_a_file_with_its_digest_is_stored_and_a_wrong_digest_stores_nothing(
    store: Store, tmp_path: Path, size: int
) -> None:
    data = payload(size, seed=size)
    path = tmp_path / "out.bin"
    path.write_bytes(data)
    wrong = sha256(data + b"!")
    with pytest.raises(FarmError) as info:
        store.put_file(path, sha256=wrong)
    assert info.value.code == E.STORE_CORRUPT, info.value
    assert not store.has_blob(wrong) and not store.has_blob(sha256(data))
    artifact = store.put_file(path, sha256=sha256(data))
    assert (artifact.name, artifact.digest, artifact.size) == ("out.bin", sha256(data), size)
    assert store.get_bytes(sha256(data)) == data


def test_get_records_reads_many_keys_at_once(store: Store) -> None:
    records = [make_record(store, key(i), recipe=f"r{i}") for i in range(1, 6)]
    for record in records:
        assert store.put_record(record)
    wanted = [key(3), key(9), key(1), key(3)]
    found = store.get_records(wanted)
    assert list(found) == [key(3), key(9), key(1)]
    assert found[key(9)] is None
    assert found[key(3)] == store.get_record(key(3)) and found[key(1)] == store.get_record(key(1))
    assert store.get_records([]) == {}


class CountingFile(io.FileIO):
    """A file that counts the bytes read from it."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "rb")
        self.bytes_read = 0

    def readinto(self, buffer: Any) -> int:
        n = super().readinto(buffer)
        self.bytes_read += n or 0
        return n or 0


@pytest.mark.parametrize("given", [True, False], ids=["digest-given", "digest-unknown"])
def test_a_given_digest_means_one_read_of_the_file(
    s3_store: S3Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: bool
) -> None:
    store = S3Store(s3_store.url, max_concurrency=2)
    data = payload(30 * MiB, seed=7)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    with CountingFile(path) as fh:
        digest, size = put_stream(store, fh, "big.bin", sha256(data) if given else None)  # type: ignore[arg-type]
    assert (digest, size) == (sha256(data), len(data))
    # Unknown, the file is hashed whole first; then all but the two parts kept in memory are read and hashed again.
    reread = 0 if given else len(data) - 2 * store.part_size
    assert fh.bytes_read == len(data) + reread
    assert s3_store.get_bytes(digest) == data
    assert pending_uploads(s3_store) == []


def test_a_given_digest_of_a_stored_blob_sends_nothing_but_is_still_checked(
    s3_store: S3Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = payload(20 * MiB, seed=8)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    s3_store.put_file(path)
    creates = spy(monkeypatch, s3_store, "create_multipart_upload")
    assert s3_store.put_file(path, sha256=sha256(data)).digest == sha256(data)
    other = tmp_path / "other.bin"
    other.write_bytes(data[:-1] + b"\0")  # same size and first part, another digest
    with pytest.raises(FarmError) as info:
        s3_store.put_file(other, sha256=sha256(data))
    assert info.value.code == E.STORE_CORRUPT
    assert creates.calls == 0
    assert objects(s3_store, "blobs/") == [f"blobs/sha256/{sha256(data)[:2]}/{sha256(data)}"]


def test_a_given_digest_of_a_blob_in_a_local_store_writes_nothing_but_is_still_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reproducible rebuild hands the local store outputs it has: no staging copy and no fsync for those, and
    a file whose bytes are not the claimed blob is refused all the same."""
    import os

    from farm.store.local import LocalStore

    store = LocalStore(tmp_path / "store")
    data = payload(3 * MiB + 5, seed=9)
    path = tmp_path / "out.bin"
    path.write_bytes(data)
    store.put_file(path, sha256=sha256(data))
    fsyncs: list[int] = []
    real_fsync = os.fsync

    def counted(fd: int) -> None:
        fsyncs.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counted)
    again = store.put_file(path, sha256=sha256(data))
    assert (again.name, again.digest, again.size) == ("out.bin", sha256(data), len(data))
    assert fsyncs == [] and list((tmp_path / "store" / "tmp").iterdir()) == []
    other = tmp_path / "other.bin"
    other.write_bytes(data[:-1] + b"\0")
    with pytest.raises(FarmError) as info:
        store.put_file(other, sha256=sha256(data))
    assert info.value.code == E.STORE_CORRUPT and fsyncs == []
    assert store.get_bytes(sha256(data)) == data


@pytest.mark.parametrize("failure", ["changes", "raises"])
def test_a_one_pass_upload_that_fails_leaves_nothing_behind(s3_store: S3Store, failure: str) -> None:
    data = payload(30 * MiB, seed=9)
    store = S3Store(s3_store.url, max_concurrency=2)
    source = FlakyFile(data, fail_at=20 * MiB, mode=failure)  # the first part is read, then the rest after a seek
    with pytest.raises(FarmError if failure == "changes" else OSError) as info:
        store._put_fileobj(source, "the flaky file", sha256(data))
    if failure == "changes":
        assert isinstance(info.value, FarmError) and info.value.code == E.STORE_CORRUPT, info.value
    assert objects(s3_store, "blobs/") == []
    assert pending_uploads(s3_store) == []

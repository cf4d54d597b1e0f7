"""What only the S3 store does: multipart uploads, conditional writes, S3 errors, outages, URLs.

The conformance suite (``test_conformance.py``) already runs every store promise against S3; these tests look at
the S3 side of it, through a real moto server over HTTP (see ``conftest.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from farm.errors import E, FarmError
from farm.store import open_store
from farm.store.s3 import MiB, S3Store
from tests.store.conftest import FAKE_CREDENTIALS, MotoServer, free_port
from tests.store.test_conformance import COMMIT_A, farm_error, key, make_record

pytestmark = pytest.mark.integration


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def objects(store: S3Store, under: str = "") -> list[str]:
    """The keys in the store's bucket under its prefix plus ``under``, relative to the prefix."""
    keys: list[str] = []
    for page in store.client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket, Prefix=store.prefix):
        keys += [o["Key"][len(store.prefix) :] for o in page.get("Contents", []) if "Key" in o]
    return sorted(k for k in keys if k.startswith(under))


def pending_uploads(store: S3Store) -> list[str]:
    return [u.get("Key", "") for u in store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])]


class Spy:
    """Counts the calls of one client method (and can make one of them fail)."""

    def __init__(self, target: Callable[..., Any], fail_on: int | None = None) -> None:
        self.target = target
        self.calls = 0
        self.fail_on = fail_on

    def __call__(self, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == self.fail_on:
            raise ClientError({"Error": {"Code": "InternalError", "Message": "injected"}}, "UploadPart")
        return self.target(**kwargs)


def spy(monkeypatch: pytest.MonkeyPatch, store: S3Store, method: str, fail_on: int | None = None) -> Spy:
    s = Spy(getattr(store.client, method), fail_on)
    monkeypatch.setattr(store.client, method, s)
    return s


# -- multipart -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("concurrency", [8, 1], ids=["all-parts-kept", "parts-read-twice"])
def test_a_large_file_goes_up_in_parts_and_keeps_its_digest(
    s3_store: S3Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, concurrency: int
) -> None:
    s3_store = S3Store(s3_store.url, max_concurrency=concurrency)
    data = payload(20 * MiB, seed=1)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    parts = spy(monkeypatch, s3_store, "upload_part")
    creates = spy(monkeypatch, s3_store, "create_multipart_upload")
    artifact = s3_store.put_file(path)
    assert (artifact.digest, artifact.size) == (sha256(data), len(data))
    assert (creates.calls, parts.calls) == (1, 3)  # 8 + 8 + 4 MiB
    assert objects(s3_store) == [f"blobs/sha256/{artifact.digest[:2]}/{artifact.digest}"]
    assert pending_uploads(s3_store) == []
    head = s3_store.client.head_object(Bucket=s3_store.bucket, Key=s3_store.blob_key(artifact.digest))
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3"), "not a multipart object"
    dest = tmp_path / "out" / "big.bin"
    s3_store.fetch_blob(artifact.digest, dest)
    assert dest.read_bytes() == data

    # Storing it again costs a HEAD, not an upload.
    again = s3_store.put_file(path)
    assert again == artifact
    assert (creates.calls, parts.calls) == (1, 3)


def test_a_small_file_is_one_conditional_put(
    s3_store: S3Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = payload(s3_store.part_size, seed=2)  # exactly one part: still a single PutObject
    path = tmp_path / "small.bin"
    path.write_bytes(data)
    creates = spy(monkeypatch, s3_store, "create_multipart_upload")
    puts = spy(monkeypatch, s3_store, "put_object")
    assert s3_store.put_file(path).digest == sha256(data)
    assert s3_store.put_file(path).digest == sha256(data)  # the second is refused by If-None-Match: fine
    assert (creates.calls, puts.calls) == (0, 2)
    assert s3_store.get_bytes(sha256(data)) == data


class FlakyFile(io.BytesIO):
    """A file that breaks off, or reads differently, once read again after a seek (the upload's second read)."""

    def __init__(self, data: bytes, fail_at: int, mode: str) -> None:
        super().__init__(data)
        self.fail_at = fail_at
        self.failure = mode
        self.rewound = False

    def seek(self, pos: int, whence: int = 0) -> int:
        self.rewound = True
        return super().seek(pos, whence)

    def readinto(self, buffer: Any) -> int:
        start = self.tell()
        n = super().readinto(buffer)
        if n and self.rewound and start + n > self.fail_at:
            if self.failure == "raises":
                raise OSError("injected: the disk went away")
            if self.failure == "interrupted":
                raise KeyboardInterrupt
            if self.failure == "changes":
                view = memoryview(buffer).cast("B")
                view[0] ^= 1
        return n

    def read(self, size: int | None = -1) -> bytes:  # the store reads with readinto; refuse to be read otherwise
        raise AssertionError("read() is not expected")


FAILURES: dict[str, tuple[type[BaseException], str | None]] = {
    "source-raises": (OSError, None),
    "source-interrupted": (KeyboardInterrupt, None),
    "source-changes": (FarmError, E.STORE_CORRUPT),
    "server-fails": (FarmError, E.STORE_UNREACHABLE),
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_a_failed_multipart_upload_leaves_nothing_behind(
    s3_store: S3Store, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    data = payload(30 * MiB, seed=3)
    expected, code = FAILURES[failure]
    # Two parts (16 MiB) are kept from the first read and uploaded first; the rest is read again from 16 MiB on.
    store = S3Store(s3_store.url, max_concurrency=2)
    store_it: Callable[[], object]
    if failure == "server-fails":
        spy(monkeypatch, store, "upload_part", fail_on=2)  # the second part fails, then all is well again
        store_it = lambda: store.put_bytes(data)  # noqa: E731
    else:
        source = FlakyFile(data, fail_at=20 * MiB, mode=failure.removeprefix("source-"))
        store_it = lambda: store._put_fileobj(source, "the flaky file")  # noqa: E731
    with pytest.raises(expected) as info:
        store_it()
    if code is not None:
        assert isinstance(info.value, FarmError) and info.value.code == code, info.value
    assert objects(s3_store, "blobs/") == []
    assert pending_uploads(s3_store) == []
    assert not s3_store.has_blob(sha256(data))
    # Nothing stops the same bytes from being stored properly afterwards.
    assert store._put_fileobj(io.BytesIO(data), "the file") == (sha256(data), len(data))
    assert s3_store.get_bytes(sha256(data)) == data
    assert pending_uploads(s3_store) == []


def test_racing_identical_large_uploads_leave_one_blob_and_no_uploads(s3_store: S3Store, tmp_path: Path) -> None:
    data = payload(17 * MiB, seed=4)
    path = tmp_path / "same.bin"
    path.write_bytes(data)
    results: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def put() -> None:
        try:
            barrier.wait(timeout=30)
            results.append(s3_store.put_file(path).digest)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=put) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert results == [sha256(data)] * 4
    assert objects(s3_store) == [f"blobs/sha256/{sha256(data)[:2]}/{sha256(data)}"]
    assert pending_uploads(s3_store) == []
    assert s3_store.get_bytes(sha256(data)) == data


# -- records ---------------------------------------------------------------------------------------------------
def test_the_second_record_for_a_key_is_refused_and_the_first_stays(s3_store: S3Store) -> None:
    first = make_record(s3_store, key(1), recipe="zlib", builder="first")
    second = make_record(s3_store, key(1), recipe="openssl", builder="second")
    assert s3_store.put_record(first) is True
    assert s3_store.put_record(second) is False
    raw = s3_store.client.get_object(Bucket=s3_store.bucket, Key=s3_store.record_key(key(1)))["Body"].read()
    assert raw == first.to_bytes()
    # The index describes the winner only: the loser's recipe name got no marker.
    assert objects(s3_store, "index/") == [f"index/commit/{COMMIT_A}/{key(1)}", f"index/recipe/zlib/{key(1)}"]
    assert s3_store.records_for_recipe("openssl") == []
    assert s3_store.records_for_recipe("zlib") == [first]


def test_a_record_is_refused_while_a_blob_is_missing(s3_store: S3Store) -> None:
    record = make_record(s3_store, key(1), store_blobs=False)
    with farm_error(E.STORE_MISSING):
        s3_store.put_record(record)
    assert objects(s3_store) == []


def test_index_listing_follows_pagination(s3_store: S3Store, monkeypatch: pytest.MonkeyPatch) -> None:
    records = [make_record(s3_store, key(n), recipe="zlib", builder=f"b{n}") for n in range(7)]
    for r in records:
        assert s3_store.put_record(r)
    original = s3_store.client.list_objects_v2
    pages = 0

    def small_pages(**kwargs: Any) -> Any:
        nonlocal pages
        pages += 1
        return original(**kwargs, MaxKeys=2)

    monkeypatch.setattr(s3_store.client, "list_objects_v2", small_pages)
    assert {r.build_key for r in s3_store.records_for_recipe("zlib")} == {key(n) for n in range(7)}
    assert pages == 4


def test_an_unreadable_record_is_reported_as_corrupt(s3_store: S3Store) -> None:
    s3_store.client.put_object(Bucket=s3_store.bucket, Key=s3_store.record_key(key(1)), Body=b"{not json")
    with farm_error(E.STORE_CORRUPT):
        s3_store.get_record(key(1))


# -- errors and outages ----------------------------------------------------------------------------------------
def closed_port() -> int:
    return free_port()  # nothing listens there once the probing socket is closed


def test_an_unreachable_endpoint_fails_with_a_clear_error_soon(s3_env: str) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    store = S3Store("s3://bucket/prefix", endpoint_url=endpoint, max_attempts=2, retry_seconds=1.0)
    for operation in (
        lambda: store.has_blob("0" * 64),
        lambda: store.put_bytes(b"data"),
        lambda: store.get_record("0" * 64),
    ):
        started = time.monotonic()
        with pytest.raises(FarmError) as info:
            operation()
        assert info.value.code == E.STORE_UNREACHABLE, info.value.render()
        assert endpoint in info.value.message and info.value.field == "MANGOS_FARM_STORE"
        assert time.monotonic() - started < 10


def test_missing_credentials(s3_env: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = open_store(f"s3://{s3_bucket}")
    with pytest.raises(FarmError) as info:
        store.has_blob("0" * 64)
    assert info.value.code == E.STORE_UNREACHABLE
    assert "credentials" in info.value.message and "AWS_ACCESS_KEY_ID" in info.value.hint


def test_missing_bucket(s3_env: str) -> None:
    store = open_store("s3://no-such-bucket-for-the-farm/prefix")
    operations: list[Callable[[], object]] = [
        lambda: store.has_blob("0" * 64),
        lambda: store.put_bytes(b"x"),
        lambda: store.get_record("0" * 64),
        lambda: store.records_for_recipe("zlib"),
    ]
    for operation in operations:
        with farm_error(E.STORE_UNREACHABLE):
            operation()
    with pytest.raises(FarmError) as info:
        store.has_blob("0" * 64)
    assert "'no-such-bucket-for-the-farm' does not exist" in info.value.message
    assert "create the bucket" in info.value.hint


class Forwarder:
    """A TCP forwarder to the moto server that starts listening late (an outage), or cuts one response short."""

    def __init__(self, upstream_port: int, *, listen_after: float = 0.0, cut_after: int | None = None) -> None:
        self.port = free_port()
        self.upstream_port = upstream_port
        self.listen_after = listen_after
        self.cut_after = cut_after  # close the first connection that has sent this many bytes back
        self.cuts = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        if self.stopped.wait(self.listen_after):
            return
        with socket.create_server(("127.0.0.1", self.port)) as listener:
            listener.settimeout(0.2)
            while not self.stopped.is_set():
                try:
                    client, _ = listener.accept()
                except TimeoutError:
                    continue
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
                threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
                threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, downstream: bool) -> None:
        sent = 0
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
                sent += len(data)
                if downstream and self.cut_after is not None and sent > self.cut_after and self.cuts == 0:
                    self.cuts += 1
                    break
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)


@pytest.fixture
def forwarder(moto_server: MotoServer) -> Iterator[Callable[..., Forwarder]]:
    made: list[Forwarder] = []
    upstream = int(moto_server.url.rsplit(":", 1)[1])

    def make(**kwargs: Any) -> Forwarder:
        made.append(Forwarder(upstream, **kwargs))
        return made[-1]

    yield make
    for f in made:
        f.stop()


OUTAGE_SECONDS = 10.0


def test_an_endpoint_down_for_ten_seconds_is_survived(
    s3_env: str, s3_bucket: str, forwarder: Callable[..., Forwarder]
) -> None:
    proxy = forwarder(listen_after=OUTAGE_SECONDS)
    store = S3Store(f"s3://{s3_bucket}/p", endpoint_url=f"http://127.0.0.1:{proxy.port}")  # default retries
    data = payload(3 * MiB, seed=5)
    started = time.monotonic()
    digest = store.put_bytes(data)
    assert time.monotonic() - started >= OUTAGE_SECONDS - 1
    assert store.get_bytes(digest) == data


def test_a_download_that_breaks_off_resumes(
    s3_env: str, s3_store: S3Store, tmp_path: Path, forwarder: Callable[..., Forwarder]
) -> None:
    data = payload(12 * MiB, seed=6)
    digest = s3_store.put_bytes(data)
    proxy = forwarder(cut_after=5 * MiB)
    store = S3Store(s3_store.url, endpoint_url=f"http://127.0.0.1:{proxy.port}")
    store.has_blob(digest)  # the bucket check goes first, on a connection of its own
    dest = tmp_path / "out.bin"
    store.fetch_blob(digest, dest)
    assert proxy.cuts == 1
    assert dest.read_bytes() == data


# -- URLs ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "s3://",
        "s3:///prefix",
        "s3:bucket",
        "S3://bucket",
        "s3://Bucket/prefix",
        "s3://ab",
        "s3://-bucket",
        "s3://bu..cket",
        "s3://bucket/../other",
        "s3://bucket/a/./b",
        "s3://bucket/a//b",
        "s3://bucket/a b",
        "s3://bucket?versionId=1",
        "s3://bucket/p#frag",
        "s3://user:secret@bucket/p",
    ],
)
def test_a_malformed_s3_url_names_the_setting(url: str) -> None:
    with farm_error(E.STORE_URL):
        open_store(url)
    with pytest.raises(FarmError) as info:
        open_store(url)
    assert info.value.field == "MANGOS_FARM_STORE" and "s3://BUCKET" in info.value.hint


@pytest.mark.parametrize(
    ("url", "canonical", "prefix"),
    [
        ("s3://bucket", "s3://bucket", ""),
        ("s3://bucket/", "s3://bucket", ""),
        ("s3://my.bucket-1/farm", "s3://my.bucket-1/farm", "farm/"),
        ("s3://bucket/a/b/", "s3://bucket/a/b", "a/b/"),
    ],
)
def test_s3_urls_are_normalized_without_touching_the_network(
    url: str, canonical: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = closed_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
    for name, value in FAKE_CREDENTIALS.items():  # to sign the presigned URL below; nothing is sent
        monkeypatch.setenv(name, value)
    store = open_store(url)
    assert isinstance(store, S3Store)
    assert (store.url, store.prefix, store.bucket) == (canonical, prefix, canonical.split("/")[2])
    assert open_store(store.url).url == store.url
    # An endpoint is set, so requests use path-style addressing (as MinIO needs), not bucket.host names.
    presigned = store.client.generate_presigned_url("get_object", Params={"Bucket": store.bucket, "Key": "k"})
    assert presigned.startswith(f"http://127.0.0.1:{port}/{store.bucket}/k?")

"""Blobs in S3: uploads that are hashed as they are read, and the resumable download.

A blob is named by its sha256, and S3 needs an object's name before its first byte, so how many times a file is
read depends on whether the caller knows its digest:

- given (``sha256=``, e.g. computed by whoever wrote the file while writing it): one pass. The file is sent straight
  to its final name and hashed on the way; the upload is completed only if what was sent hashes to that digest.
- not given: a first pass hashes the file (keeping its first parts in memory); the upload then reads the rest
  again, hashing it on from there, so a file that changed in between is never stored under a name it does not have.

A file of one part is one conditional PUT. A larger one is a multipart upload that stays invisible until it is
completed with If-None-Match: *, and any failure or mismatch aborts it. A download that breaks off resumes at its
offset, from the same object (by ETag).
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, ParamSpec, Protocol, TypeVar, cast

from botocore.exceptions import BotoCoreError, ClientError, IncompleteReadError, SSLError

from farm.errors import E, StoreError
from farm.store.s3_errors import (
    TRANSIENT,
    code,
    conditional_write,
    corrupt_blob,
    is_missing,
    is_precondition_failed,
    missing_blob,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef, GetObjectRequestTypeDef

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

MiB = 1 << 20
MAX_PARTS = 10_000
CHUNK = 1 << 20


class Bucket(Protocol):
    """What these functions use of :class:`farm.store.s3.S3Store`."""

    client: S3Client
    bucket: str
    url: str
    endpoint: str
    part_size: int
    max_concurrency: int
    retry_seconds: float
    checksums: bool

    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T: ...
    def ready(self) -> None: ...
    def exists(self, key: str) -> bool: ...
    def blob_key(self, digest: str) -> str: ...
    def put_if_absent(self, key: str, body: bytes | bytearray, content_type: str = ..., sha256: str = ...) -> bool: ...


def read_part(fh: io.BufferedIOBase, size: int, h: hashlib._Hash | None) -> bytearray:
    """Up to ``size`` bytes of ``fh`` (short only at its end), hashed into ``h`` (if given) 1 MiB at a time while
    in cache."""
    buf = bytearray(size)
    got = 0
    with memoryview(buf) as view:
        while got < size and (n := fh.readinto(view[got : min(size, got + CHUNK)])):
            if h is not None:
                h.update(view[got : got + n])
            got += n
    del buf[got:]
    return buf


@dataclass
class FirstPass:
    """What the first read of a large file found: its digest and size, its first parts, and the hash state
    after them (to check the rest of the file as it is read again for the upload)."""

    digest: str
    size: int
    kept: list[bytearray]
    resume: hashlib._Hash
    single: bool = False  # the whole file fits in one part, kept[0] (or is empty)
    claimed: bool = False  # digest and size are the caller's, still to be checked against the rest of the file


def first_pass(fh: io.BufferedIOBase, part_size: int, keep: int) -> FirstPass:
    """Read and hash the whole of ``fh``, which names the blob, keeping its first ``keep`` parts in memory (the
    memory the upload has in flight anyway). A multipart upload then starts with the kept parts and reads, and
    hashes again, only the rest (from the hash state at that point), to check that what is sent is what was named.
    """
    h = hashlib.sha256()
    kept: list[bytearray] = []
    at_end = False
    while len(kept) < keep:
        part = read_part(fh, part_size, h)
        if part:
            kept.append(part)
        if len(part) < part_size:
            at_end = True
            break
    if at_end and len(kept) <= 1:
        return FirstPass(digest=h.hexdigest(), size=sum(len(p) for p in kept), kept=kept, resume=h, single=True)
    resume = h.copy()
    size = sum(len(p) for p in kept)
    if not at_end:
        with memoryview(bytearray(CHUNK)) as buf:  # 1 MiB at a time: the bytes are hashed while in cache
            while n := fh.readinto(buf):
                h.update(buf[:n])
                size += n
    return FirstPass(digest=h.hexdigest(), size=size, kept=kept, resume=resume)


def claimed_pass(fh: io.BufferedIOBase, part_size: int, digest: str, size: int) -> FirstPass:
    """The start of a file whose digest and size the caller gives: only its first part is read (a file of one part
    is then hashed whole; a larger one is hashed part by part as the upload sends the rest, and checked at the end)."""
    h = hashlib.sha256()
    part = read_part(fh, part_size, h)
    if len(part) < part_size:
        return FirstPass(digest=h.hexdigest(), size=len(part), kept=[part] if part else [], resume=h, single=True)
    return FirstPass(digest=digest, size=size, kept=[part], resume=h, claimed=True)


def mismatch(what: str, url: str, named: tuple[str, int], read: tuple[str, int]) -> StoreError:
    return StoreError(
        E.STORE_CORRUPT,
        f"{what} is not the blob it was to be stored as in {url} ({named[1]} bytes hashing to {named[0]}, but "
        f"{read[1]} bytes hashing to {read[0]} were read)",
        hint="nothing was stored; do not modify files while they are being stored, and give the store the digest "
        "of exactly the file's bytes",
    )


def put_stream(store: Bucket, fh: io.BufferedIOBase, what: str, sha256: str | None = None) -> tuple[str, int]:
    """Store the bytes of ``fh`` (seekable when larger than a part) as a blob; returns (digest, size).

    ``sha256``: the bytes' digest, when the caller has it: then ``fh`` is read once (see the module docstring) and a
    wrong digest stores nothing (E-STORE-CORRUPT)."""
    if sha256 is None:
        first = first_pass(fh, store.part_size, store.max_concurrency)
    else:
        store.blob_key(sha256)  # a malformed digest is refused before anything is read
        size = fh.seek(0, io.SEEK_END)  # to size the parts; what counts is the digest of what is read
        fh.seek(0)
        first = claimed_pass(fh, store.part_size, sha256, size)
        if first.single and first.digest != sha256:
            raise mismatch(what, store.url, (sha256, first.size), (first.digest, first.size))
    if first.single:
        store.ready()
        body = first.kept[0] if first.kept else b""
        store.put_if_absent(store.blob_key(first.digest), body, sha256=first.digest)
    else:
        put_large(store, fh, first, what)
    return first.digest, first.size


def put_large(store: Bucket, fh: io.BufferedIOBase, first: FirstPass, what: str) -> None:
    """Store the file ``fh`` named by ``first`` as a multipart upload, unless the blob is there already."""
    key = store.blob_key(first.digest)
    store.ready()
    if store.exists(key):
        if first.claimed:  # nothing to send, but the caller's digest must still be the file's
            _check_rest(fh, first, what, store.url)
        return
    if store.checksums:
        created = store.call(
            store.client.create_multipart_upload, Bucket=store.bucket, Key=key, ChecksumAlgorithm="CRC32"
        )
    else:
        created = store.call(store.client.create_multipart_upload, Bucket=store.bucket, Key=key)
    upload_id = created["UploadId"]
    completed = False
    try:
        parts, got_digest, got_size = _upload_parts(store, fh, key, upload_id, first)
        if (got_digest, got_size) != (first.digest, first.size):
            raise mismatch(what, store.url, (first.digest, first.size), (got_digest, got_size))
        completed = _complete(store, key, upload_id, parts)
    finally:
        if not completed:
            _abort(store, key, upload_id)


def _check_rest(fh: io.BufferedIOBase, first: FirstPass, what: str, url: str) -> None:
    h = first.resume.copy()
    size = sum(len(p) for p in first.kept)
    fh.seek(size)
    with memoryview(bytearray(CHUNK)) as buf:
        while n := fh.readinto(buf):
            h.update(buf[:n])
            size += n
    if (h.hexdigest(), size) != (first.digest, first.size):
        raise mismatch(what, url, (first.digest, first.size), (h.hexdigest(), size))


def _upload_parts(
    store: Bucket, fh: io.BufferedIOBase, key: str, upload_id: str, first: FirstPass
) -> tuple[list[CompletedPartTypeDef], str, int]:
    """Upload the kept parts, then read the rest of ``fh`` (hashing it on from the first pass's state there)
    part by part, with up to ``max_concurrency`` parts in flight. Returns the parts, and the digest and size
    of what was sent."""
    kept = first.kept
    kept_size = sum(len(p) for p in kept)
    # Parts may differ in size: the rest grows its parts if needed to stay within S3's 10,000 parts.
    rest_parts = MAX_PARTS - len(kept)
    part_size = max(store.part_size, -(-(first.size - kept_size) // rest_parts // MiB) * MiB)
    h = first.resume.copy()
    sent = 0
    number = 0
    parts: list[CompletedPartTypeDef] = []
    pending: set[Future[CompletedPartTypeDef]] = set()
    with ThreadPoolExecutor(max_workers=store.max_concurrency, thread_name_prefix="s3-part") as pool:
        try:

            def submit(part: bytearray) -> None:
                nonlocal pending, sent, number
                if len(pending) >= store.max_concurrency:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    parts.extend(f.result() for f in done)
                sent += len(part)
                number += 1
                pending.add(pool.submit(_upload_part, store, key, upload_id, number, part))

            while kept:
                submit(kept.pop(0))  # the pool holds each part only until it is uploaded
            fh.seek(kept_size)
            # Each further part is handed to the upload as soon as it is read and hashed just after, while it is
            # sent: the (sequential) hash is not what the parts in flight wait for, and what is sent is what is hashed.
            while part := read_part(fh, part_size, None):
                submit(part)
                h.update(part)
            done, pending = wait(pending)
            parts.extend(f.result() for f in done)
        except BaseException:
            for f in pending:
                f.cancel()
            raise
    parts.sort(key=lambda p: p.get("PartNumber", 0))
    return parts, h.hexdigest(), sent


def _upload_part(store: Bucket, key: str, upload_id: str, number: int, body: bytearray) -> CompletedPartTypeDef:
    data = cast(bytes, body)  # botocore sends a bytearray body as it is; the stubs only name bytes
    if store.checksums:
        resp = store.call(
            store.client.upload_part,
            Bucket=store.bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
            ChecksumAlgorithm="CRC32",
        )
    else:
        resp = store.call(
            store.client.upload_part, Bucket=store.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
        )
    done: CompletedPartTypeDef = {"ETag": resp["ETag"], "PartNumber": number}
    if "ChecksumCRC32" in resp:
        done["ChecksumCRC32"] = resp["ChecksumCRC32"]
    return done


def _complete(store: Bucket, key: str, upload_id: str, parts: list[CompletedPartTypeDef]) -> bool:
    """Complete with If-None-Match: *. False if the blob was already there (the upload is then aborted):
    a blob's bytes are its name, so what is there is what we were storing."""
    return conditional_write(
        lambda: store.call(
            store.client.complete_multipart_upload,
            Bucket=store.bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
            IfNoneMatch="*",
        )
    )


def _abort(store: Bucket, key: str, upload_id: str) -> None:
    try:
        store.call(store.client.abort_multipart_upload, Bucket=store.bucket, Key=key, UploadId=upload_id)
    except ClientError as exc:
        if code(exc) != "NoSuchUpload":
            log.warning("could not abort the multipart upload %s of %s: %s", upload_id, key, exc)
    except BotoCoreError as exc:  # the original failure matters more; the parts expire by lifecycle rule
        log.warning("could not abort the multipart upload %s of %s: %s", upload_id, key, exc)


def read_blob(store: Bucket, digest: str) -> Iterator[bytes]:
    """The blob's bytes in chunks; a read that breaks off resumes at its offset (same object, by ETag)."""
    key = store.blob_key(digest)
    store.ready()
    offset = 0
    total = -1
    etag: str | None = None
    deadline: float | None = None
    while True:
        request: GetObjectRequestTypeDef = {"Bucket": store.bucket, "Key": key}
        if etag is not None:
            request["Range"] = f"bytes={offset}-"
            request["IfMatch"] = etag
        try:
            resp = store.call(store.client.get_object, **request)
        except ClientError as exc:
            if is_missing(exc):
                raise missing_blob(digest, store.url) from None
            if etag is not None and is_precondition_failed(exc):
                raise corrupt_blob(digest, store.url, "it was replaced while being read") from None
            raise
        if etag is None:
            total = resp.get("ContentLength", -1)
        etag = resp["ETag"]
        body = resp["Body"]
        try:
            for chunk in body.iter_chunks(CHUNK):
                offset += len(chunk)
                yield chunk
            return
        except (*TRANSIENT, IncompleteReadError) as exc:
            if isinstance(exc, SSLError):
                raise
            if offset == total:  # every byte arrived; only the end of the response went wrong
                return
            now = time.monotonic()
            deadline = deadline or now + store.retry_seconds
            if now >= deadline:
                raise
            log.warning("reading %s from %s broke off at byte %d (%s); resuming", key, store.endpoint, offset, exc)
        finally:
            body.close()

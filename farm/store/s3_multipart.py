"""Large blobs in S3: the multipart upload of a file that is hashed as it is read, and the resumable download.

An upload goes straight to the blob's final name and stays invisible until it is completed with If-None-Match: *;
any failure, or a file that changed between the first read (which named it) and the second (which sent it),
aborts it. A download that breaks off resumes at its offset, from the same object (by ETag).
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


def read_part(fh: io.BufferedIOBase, size: int, h: hashlib._Hash) -> bytearray:
    """Up to ``size`` bytes of ``fh`` (short only at its end), hashed into ``h`` 1 MiB at a time while in cache."""
    buf = bytearray(size)
    got = 0
    with memoryview(buf) as view:
        while got < size and (n := fh.readinto(view[got : min(size, got + CHUNK)])):
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


def put_large(store: Bucket, fh: io.BufferedIOBase, first: FirstPass, what: str) -> None:
    """Store the file ``fh`` named by ``first`` as a multipart upload, unless the blob is there already."""
    key = store.blob_key(first.digest)
    store.ready()
    if store.exists(key):
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
            raise StoreError(
                E.STORE_CORRUPT,
                f"{what} changed while it was being stored in {store.url} ({first.size} bytes hashing to "
                f"{first.digest}, then {got_size} bytes hashing to {got_digest})",
                hint="nothing was stored; do not modify build outputs while they are being stored",
            )
        completed = _complete(store, key, upload_id, parts)
    finally:
        if not completed:
            _abort(store, key, upload_id)


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
            while part := read_part(fh, part_size, h):
                submit(part)
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

"""The store in an S3 bucket: AWS S3, MinIO, or any server that speaks the S3 API with conditional writes.

Layout under ``s3://BUCKET/PREFIX``::

    blobs/sha256/ab/abcd...        immutable; written with If-None-Match: * (put-if-absent)
    records/<build key>.json       immutable; If-None-Match: * is the atomic put-if-absent of a record
    index/recipe/<name>/<key>      empty marker objects, written after the record
    index/commit/<sha>/<key>

S3 makes an object visible whole or not at all (PutObject and CompleteMultipartUpload are atomic), so no
staging area is needed. A small blob (up to one part) is read into memory, hashed and put with If-None-Match.
A large file is hashed first, then sent as a multipart upload straight to its final name and hashed again on
the way; the upload stays invisible until it is completed (again with If-None-Match), and any failure, or a file
that changed between the two reads, aborts it. That is simpler and cheaper than uploading to a temporary name
and copying: no second server-side write, no 5 GiB CopyObject limit, no orphaned temporary objects after a
crash (an interrupted multipart upload is invisible; a bucket lifecycle rule ``AbortIncompleteMultipartUpload``
reclaims its parts), and a blob already present costs one HEAD request, not an upload.

Endpoint, region and credentials come from boto3's usual chain (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``,
``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_PROFILE``, ~/.aws/config, ...).
With an endpoint set (MinIO and friends) requests use path-style addressing.

Transient connection failures are retried twice over: botocore's "standard" retry mode (throttling, 5xx, resets),
and around every request a deadline of ``retry_seconds`` during which connection failures are retried with
backoff, so an endpoint that is down for a while (a restarting MinIO) is survived. Reads of large blobs resume
where they broke off.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import random
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal, ParamSpec, TypeVar, cast

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    SSLError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from farm.errors import E, FarmError
from farm.store.base import Artifact, BuildRecord, Store
from farm.store.local import COMMIT_RE, DIGEST_RE, INDEX_NAME_RE, _check_digest, check_record_names

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef, GetObjectRequestTypeDef, ListObjectsV2RequestTypeDef

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")
U = TypeVar("U")

MiB = 1 << 20
PART_SIZE = 8 * MiB
MIN_PART_SIZE = 5 * MiB  # S3's minimum for every part but the last
MAX_PARTS = 10_000
CHUNK = 1 << 20
FAN_OUT = 16  # concurrent HEAD/GET requests for lookups of many keys
CONFLICT_RETRIES = 8  # 409 ConditionalRequestConflict: another conditional write to the key was in flight

# s3://bucket[/prefix]: bucket per S3's naming rules; prefix segments are plain path names (no ., .., //).
S3_URL_RE = re.compile(r"s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(?P<prefix>[^?#]*))?")
PREFIX_SEGMENT_RE = re.compile(r"[A-Za-z0-9_.+=-]+")
TRANSIENT = (BotoConnectionError, HTTPClientError)  # refused, reset, timed out: worth another try
ACCESS_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
}


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://BUCKET/PREFIX`` -> (bucket, prefix without slashes); raises E.STORE_URL naming MANGOS_FARM_STORE."""
    match = S3_URL_RE.fullmatch(url)
    prefix = (match.group("prefix") or "").strip("/") if match else ""
    segments = prefix.split("/") if prefix else []
    if (
        match is None
        or ".." in match.group("bucket")
        or any(s in (".", "..") or not PREFIX_SEGMENT_RE.fullmatch(s) for s in segments)
    ):
        raise FarmError(
            E.STORE_URL,
            f"'{url}' is not a usable S3 store URL",
            field="MANGOS_FARM_STORE",
            hint="write it as s3://BUCKET or s3://BUCKET/PREFIX (a lowercase bucket name, a prefix of plain path "
            "segments); endpoint, region and credentials come from AWS_ENDPOINT_URL_S3, AWS_DEFAULT_REGION, "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        )
    return match.group("bucket"), prefix


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _is_missing(exc: ClientError) -> bool:
    return _code(exc) in ("NoSuchKey", "404", "NotFound")


def _read_part(fh: io.BufferedIOBase, size: int, h: hashlib._Hash) -> bytearray:
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
class _FirstPass:
    """What the first read of a large file found: its digest and size, its first parts, and the hash state
    after them (to check the rest of the file as it is read again for the upload)."""

    digest: str
    size: int
    kept: list[bytearray]
    resume: hashlib._Hash


class S3Store(Store):
    """Blobs and records in ``s3://BUCKET/PREFIX``. Thread-safe; open one per process (``open_store(url)``)."""

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        addressing_style: Literal["auto", "virtual", "path"] | None = None,
        max_attempts: int = 10,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        retry_seconds: float = 15.0,
        part_size: int = PART_SIZE,
        max_concurrency: int = 8,
    ) -> None:
        """``endpoint_url``, ``region``: default to boto3's chain (AWS_ENDPOINT_URL_S3, AWS_DEFAULT_REGION, ...).

        ``addressing_style``: "path" or "virtual"; default path-style when an endpoint is configured, else auto.
        ``max_attempts``: botocore's attempts per request (its jittered backoff makes 10 attempts at a refused
        connection last 13-31 s here); ``retry_seconds``: for how long after a call began connection failures are
        tried again around that, so an outage that long is survived even when botocore's retry quota runs dry
        (a dead endpoint is reported after roughly 15-45 s with the defaults).
        ``part_size``/``max_concurrency``: the multipart upload's part size and parts in flight at once.
        """
        self.bucket, prefix = parse_s3_url(url)
        self.prefix = f"{prefix}/" if prefix else ""
        self.url = f"s3://{self.bucket}/{prefix}" if prefix else f"s3://{self.bucket}"
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum part size)")
        self.part_size = part_size
        self.max_concurrency = max(1, max_concurrency)
        self.retry_seconds = retry_seconds
        configured = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if addressing_style is None:
            addressing_style = "path" if configured else "auto"
        config = Config(
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max(10, self.max_concurrency, FAN_OUT),
            s3={"addressing_style": addressing_style},
        )
        # A session of its own: boto3's default session is not safe to create clients from in several threads.
        session = boto3.session.Session(region_name=region)
        self.client: S3Client = session.client("s3", endpoint_url=endpoint_url, config=config)
        self.endpoint = self.client.meta.endpoint_url
        self._checksums = getattr(self.client.meta.config, "request_checksum_calculation", None) == "when_supported"
        self._bucket_checked = False
        self._bucket_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3Store({self.url!r}, endpoint={self.endpoint!r})"

    # -- plumbing ---------------------------------------------------------------------------------------------
    def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(...)``; connection failures that outlast botocore's own retries are tried again until
        ``retry_seconds`` after the call began (botocore's retry quota can run dry during an outage)."""
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.25
        while True:
            try:
                return fn(*args, **kwargs)
            except TRANSIENT as exc:
                if isinstance(exc, SSLError):  # a certificate problem does not heal by waiting
                    raise
                now = time.monotonic()
                if now >= deadline:
                    raise
                log.warning("S3 endpoint %s: %s; retrying", self.endpoint, exc)
                time.sleep(min(delay, deadline - now))
                delay = min(delay * 2, 2.0)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn what boto3 raises into a FarmError that says what to do."""
        try:
            yield
        except ClientError as exc:
            raise self._client_error(exc) from exc
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise FarmError(
                E.STORE_UNREACHABLE,
                f"no usable AWS credentials for the store {self.url}: {exc}",
                field="MANGOS_FARM_STORE",
                hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) for the S3 store",
            ) from exc
        except TRANSIENT as exc:
            raise FarmError(
                E.STORE_UNREACHABLE,
                f"cannot reach the S3 endpoint {self.endpoint} for the store {self.url}: {exc}",
                field="MANGOS_FARM_STORE",
                hint=f"check that the endpoint is up and reachable (retried for {self.retry_seconds:g} s); it comes "
                "from AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, or is AWS's own when neither is set",
            ) from exc
        except BotoCoreError as exc:
            raise FarmError(
                E.STORE_UNREACHABLE,
                f"the S3 client failed for the store {self.url}: {exc}",
                field="MANGOS_FARM_STORE",
                hint="check the AWS settings (AWS_ENDPOINT_URL_S3, AWS_DEFAULT_REGION, credentials)",
            ) from exc

    def _client_error(self, exc: ClientError) -> FarmError:
        code, status = _code(exc), _status(exc)
        message = exc.response.get("Error", {}).get("Message", "") or str(exc)
        if code == "NoSuchBucket":
            return self._no_bucket()
        if code in ACCESS_CODES or status == 403:
            return FarmError(
                E.STORE_UNREACHABLE,
                f"S3 refused access to the store {self.url} at {self.endpoint}: {code or status}: {message}",
                field="MANGOS_FARM_STORE",
                hint="check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE) and that they "
                "may read and write the bucket",
            )
        return FarmError(
            E.STORE_UNREACHABLE,
            f"an S3 request for the store {self.url} at {self.endpoint} failed: {code or status}: {message}",
            field="MANGOS_FARM_STORE",
            hint="check the S3 service; transient failures were already retried",
        )

    def _no_bucket(self) -> FarmError:
        return FarmError(
            E.STORE_UNREACHABLE,
            f"the bucket '{self.bucket}' does not exist at {self.endpoint}",
            field="MANGOS_FARM_STORE",
            hint="create the bucket (for example 'aws s3 mb s3://BUCKET'), or fix the bucket name or the endpoint",
        )

    def _ready(self) -> None:
        """Check once that the bucket exists: a HEAD of a missing object cannot tell a missing bucket apart."""
        if self._bucket_checked:
            return
        with self._bucket_lock:
            if self._bucket_checked:
                return
            try:
                self._call(self.client.head_bucket, Bucket=self.bucket)
            except ClientError as exc:
                if _status(exc) == 404 or _code(exc) in ("404", "NoSuchBucket", "NotFound"):
                    raise self._no_bucket() from exc
                raise
            self._bucket_checked = True

    def _fan_out(self, fn: Callable[[T], U], items: Sequence[T]) -> list[U]:
        if len(items) <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(FAN_OUT, len(items)), thread_name_prefix="s3-lookup") as pool:
            return list(pool.map(fn, items))

    def _exists(self, key: str) -> bool:
        try:
            self._call(self.client.head_object, Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _is_missing(exc) or _status(exc) == 404:
                return False
            raise
        return True

    def _put_if_absent(
        self, key: str, body: bytes | bytearray, content_type: str = "application/octet-stream", sha256: str = ""
    ) -> bool:
        """PutObject with If-None-Match: *. True if this call created the object, False if it existed.

        ``sha256``: the body's hex digest when the caller has it already.
        """
        checksum = base64.b64encode(bytes.fromhex(sha256) if sha256 else hashlib.sha256(body).digest()).decode()
        for attempt in range(CONFLICT_RETRIES):
            try:
                self._call(
                    self.client.put_object,
                    Bucket=self.bucket,
                    Key=key,
                    Body=cast(bytes, body),  # botocore sends a bytearray as it is; the stubs only name bytes
                    IfNoneMatch="*",
                    ContentType=content_type,
                    ChecksumSHA256=checksum,  # the server checks the bytes it got
                )
            except ClientError as exc:
                if _status(exc) == 412 or _code(exc) == "PreconditionFailed":
                    return False
                if (_status(exc) == 409 or _code(exc) == "ConditionalRequestConflict") and (
                    attempt < CONFLICT_RETRIES - 1
                ):
                    time.sleep(random.uniform(0.01, 0.05) * 2**attempt)  # noqa: S311 - jitter, not crypto
                    continue
                raise
            return True
        raise AssertionError("unreachable")  # pragma: no cover

    # -- blobs ------------------------------------------------------------------------------------------------
    def blob_key(self, digest: str) -> str:
        _check_digest(digest)
        return f"{self.prefix}blobs/sha256/{digest[:2]}/{digest}"

    def _missing(self, digest: str) -> FarmError:
        return FarmError(
            E.STORE_MISSING,
            f"blob {digest} is not in the store {self.url}",
            hint="the artifact was never stored here; check MANGOS_FARM_STORE",
        )

    def _corrupt(self, digest: str, detail: str) -> FarmError:
        return FarmError(
            E.STORE_CORRUPT,
            f"blob {digest} in {self.url} is corrupt ({detail})",
            hint="delete the blob object and rebuild with --force; investigate who wrote to the bucket",
        )

    def _put_fileobj(self, fh: io.BufferedIOBase, what: str) -> tuple[str, int]:
        """Store the bytes of ``fh`` (seekable when larger than a part); returns (digest, size).

        The first pass names the blob: it hashes the whole file, keeping its first ``max_concurrency`` parts in
        memory (the memory the upload has in flight anyway). A file of one part is then one conditional PUT; a
        larger one is a multipart upload that starts with the kept parts and reads, and hashes again, only the
        rest (from the hash state at that point), to check that what is sent is what was named.
        """
        h = hashlib.sha256()
        kept: list[bytearray] = []
        at_end = False
        while len(kept) < self.max_concurrency:
            part = _read_part(fh, self.part_size, h)
            if part:
                kept.append(part)
            if len(part) < self.part_size:
                at_end = True
                break
        if at_end and len(kept) <= 1:
            data = kept[0] if kept else bytearray()
            digest = h.hexdigest()
            self._ready()
            self._put_if_absent(self.blob_key(digest), data, sha256=digest)
            return digest, len(data)
        resume = h.copy()
        size = sum(len(p) for p in kept)
        if not at_end:
            with memoryview(bytearray(CHUNK)) as buf:  # 1 MiB at a time: the bytes are hashed while in cache
                while n := fh.readinto(buf):
                    h.update(buf[:n])
                    size += n
        first = _FirstPass(digest=h.hexdigest(), size=size, kept=kept, resume=resume)
        self._put_large(fh, first, what)
        return first.digest, first.size

    def _put_large(self, fh: io.BufferedIOBase, first: _FirstPass, what: str) -> None:
        key = self.blob_key(first.digest)
        self._ready()
        if self._exists(key):
            return
        if self._checksums:
            created = self._call(
                self.client.create_multipart_upload, Bucket=self.bucket, Key=key, ChecksumAlgorithm="CRC32"
            )
        else:
            created = self._call(self.client.create_multipart_upload, Bucket=self.bucket, Key=key)
        upload_id = created["UploadId"]
        completed = False
        try:
            parts, got_digest, got_size = self._upload_parts(fh, key, upload_id, first)
            if (got_digest, got_size) != (first.digest, first.size):
                raise FarmError(
                    E.STORE_CORRUPT,
                    f"{what} changed while it was being stored in {self.url} ({first.size} bytes hashing to "
                    f"{first.digest}, then {got_size} bytes hashing to {got_digest})",
                    hint="nothing was stored; do not modify build outputs while they are being stored",
                )
            completed = self._complete(key, upload_id, parts)
        finally:
            if not completed:
                self._abort(key, upload_id)

    def _upload_parts(
        self, fh: io.BufferedIOBase, key: str, upload_id: str, first: _FirstPass
    ) -> tuple[list[CompletedPartTypeDef], str, int]:
        """Upload the kept parts, then read the rest of ``fh`` (hashing it on from the first pass's state there)
        part by part, with up to ``max_concurrency`` parts in flight. Returns the parts, and the digest and size
        of what was sent."""
        kept = first.kept
        kept_size = sum(len(p) for p in kept)
        # Parts may differ in size: the rest grows its parts if needed to stay within S3's 10,000 parts.
        rest_parts = MAX_PARTS - len(kept)
        part_size = max(self.part_size, -(-(first.size - kept_size) // rest_parts // MiB) * MiB)
        h = first.resume.copy()
        sent = 0
        number = 0
        parts: list[CompletedPartTypeDef] = []
        pending: set[Future[CompletedPartTypeDef]] = set()
        with ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="s3-part") as pool:
            try:

                def submit(part: bytearray) -> None:
                    nonlocal pending, sent, number
                    if len(pending) >= self.max_concurrency:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        parts.extend(f.result() for f in done)
                    sent += len(part)
                    number += 1
                    pending.add(pool.submit(self._upload_part, key, upload_id, number, part))

                while kept:
                    submit(kept.pop(0))  # the pool holds each part only until it is uploaded
                fh.seek(kept_size)
                while part := _read_part(fh, part_size, h):
                    submit(part)
                done, pending = wait(pending)
                parts.extend(f.result() for f in done)
            except BaseException:
                for f in pending:
                    f.cancel()
                raise
        parts.sort(key=lambda p: p.get("PartNumber", 0))
        return parts, h.hexdigest(), sent

    def _upload_part(self, key: str, upload_id: str, number: int, body: bytearray) -> CompletedPartTypeDef:
        data = cast(bytes, body)  # botocore sends a bytearray body as it is; the stubs only name bytes
        if self._checksums:
            resp = self._call(
                self.client.upload_part,
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=data,
                ChecksumAlgorithm="CRC32",
            )
        else:
            resp = self._call(
                self.client.upload_part, Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
            )
        done: CompletedPartTypeDef = {"ETag": resp["ETag"], "PartNumber": number}
        if "ChecksumCRC32" in resp:
            done["ChecksumCRC32"] = resp["ChecksumCRC32"]
        return done

    def _complete(self, key: str, upload_id: str, parts: list[CompletedPartTypeDef]) -> bool:
        """Complete with If-None-Match: *. False if the blob was already there (the upload is then aborted)."""
        for attempt in range(CONFLICT_RETRIES):
            try:
                self._call(
                    self.client.complete_multipart_upload,
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                    IfNoneMatch="*",
                )
            except ClientError as exc:
                if _status(exc) == 412 or _code(exc) == "PreconditionFailed":
                    return False  # a blob's bytes are its name: what is there is what we were storing
                if (_status(exc) == 409 or _code(exc) == "ConditionalRequestConflict") and (
                    attempt < CONFLICT_RETRIES - 1
                ):
                    time.sleep(random.uniform(0.01, 0.05) * 2**attempt)  # noqa: S311 - jitter, not crypto
                    continue
                raise
            return True
        raise AssertionError("unreachable")  # pragma: no cover

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self._call(self.client.abort_multipart_upload, Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            if _code(exc) != "NoSuchUpload":
                log.warning("could not abort the multipart upload %s of %s: %s", upload_id, key, exc)
        except BotoCoreError as exc:  # the original failure matters more; the parts expire by lifecycle rule
            log.warning("could not abort the multipart upload %s of %s: %s", upload_id, key, exc)

    def put_file(self, path: Path) -> Artifact:
        with self._errors(), path.open("rb") as fh:
            digest, size = self._put_fileobj(fh, str(path))
        return Artifact(name=path.name, digest=digest, size=size, executable=os.access(path, os.X_OK))

    def put_bytes(self, data: bytes) -> str:
        with self._errors():
            return self._put_fileobj(io.BytesIO(data), "the bytes")[0]

    def has_blob(self, digest: str) -> bool:
        key = self.blob_key(digest)
        with self._errors():
            self._ready()
            return self._exists(key)

    def open_blob(self, digest: str) -> BinaryIO:
        key = self.blob_key(digest)
        with self._errors():
            self._ready()
            try:
                resp = self._call(self.client.get_object, Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if _is_missing(exc):
                    raise self._missing(digest) from None
                raise
            return cast(BinaryIO, resp["Body"])

    def _read_blob(self, digest: str) -> Iterator[bytes]:
        """The blob's bytes in chunks; a read that breaks off resumes at its offset (same object, by ETag)."""
        key = self.blob_key(digest)
        self._ready()
        offset = 0
        total = -1
        etag: str | None = None
        deadline: float | None = None
        while True:
            request: GetObjectRequestTypeDef = {"Bucket": self.bucket, "Key": key}
            if etag is not None:
                request["Range"] = f"bytes={offset}-"
                request["IfMatch"] = etag
            try:
                resp = self._call(self.client.get_object, **request)
            except ClientError as exc:
                if _is_missing(exc):
                    raise self._missing(digest) from None
                if etag is not None and (_status(exc) == 412 or _code(exc) == "PreconditionFailed"):
                    raise self._corrupt(digest, "it was replaced while being read") from None
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
                deadline = deadline or now + self.retry_seconds
                if now >= deadline:
                    raise
                log.warning("reading %s from %s broke off at byte %d (%s); resuming", key, self.endpoint, offset, exc)
            finally:
                body.close()

    def fetch_blob(self, digest: str, dest: Path) -> None:
        self.blob_key(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
        tmp = Path(name)
        try:
            h = hashlib.sha256()
            with self._errors(), os.fdopen(fd, "wb") as out:
                for chunk in self._read_blob(digest):
                    h.update(chunk)
                    out.write(chunk)
            if h.hexdigest() != digest:
                raise self._corrupt(digest, f"its bytes hash to {h.hexdigest()}")
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    def get_bytes(self, digest: str) -> bytes:
        self.blob_key(digest)
        with self._errors():
            data = b"".join(self._read_blob(digest))
        if hashlib.sha256(data).hexdigest() != digest:
            raise self._corrupt(digest, f"its bytes hash to {hashlib.sha256(data).hexdigest()}")
        return data

    # -- records ----------------------------------------------------------------------------------------------
    def record_key(self, build_key: str) -> str:
        _check_digest(build_key)
        return f"{self.prefix}records/{build_key}.json"

    def put_record(self, record: BuildRecord) -> bool:
        check_record_names(record)
        key = self.record_key(record.build_key)
        digests = list(dict.fromkeys(record.blob_digests()))
        blob_keys = [self.blob_key(d) for d in digests]
        with self._errors():
            self._ready()
            present = self._fan_out(self._exists, blob_keys)
            missing = [d for d, there in zip(digests, present, strict=True) if not there]
            if missing:
                raise FarmError(
                    E.STORE_MISSING,
                    f"record {record.build_key} names blobs that are not stored: {', '.join(missing)}",
                    hint="store every blob before its record (this is a bug in the caller)",
                )
            published = self._put_if_absent(key, record.to_bytes(), "application/json")
            # Index markers are idempotent, so a crash between record and markers heals on the next put. They
            # always describe the record that won, never a losing duplicate.
            stored = record if published else self.get_record(record.build_key) or record
            for kind, value in (("recipe", stored.recipe), ("commit", stored.commit)):
                self._put_if_absent(f"{self.prefix}index/{kind}/{value}/{record.build_key}", b"")
        return published

    def _get_small(self, key: str) -> bytes | None:
        """A small object's bytes (None if absent), read in one go; a read that breaks off is retried whole."""
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise
        with resp["Body"] as body:
            return body.read()

    def get_record(self, build_key: str) -> BuildRecord | None:
        key = self.record_key(build_key)
        with self._errors():
            self._ready()
            raw = self._call(self._get_small, key)
        if raw is None:
            return None
        try:
            return BuildRecord.from_json(json.loads(raw))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise FarmError(
                E.STORE_CORRUPT,
                f"record {build_key} in {self.url} is unreadable: {exc}",
                hint="records are immutable; restore it from a backup or rebuild with --force",
            ) from None

    def keys_present(self, build_keys: Iterable[str]) -> set[str]:
        keys = list(dict.fromkeys(build_keys))
        record_keys = [self.record_key(k) for k in keys]
        if not keys:
            return set()
        with self._errors():
            self._ready()
            present = self._fan_out(self._exists, record_keys)
        return {k for k, there in zip(keys, present, strict=True) if there}

    def _list_keys(self, prefix: str) -> list[str]:
        names: list[str] = []
        request: ListObjectsV2RequestTypeDef = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            page = self._call(self.client.list_objects_v2, **request)
            names += [obj["Key"][len(prefix) :] for obj in page.get("Contents", []) if "Key" in obj]
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return names
            request["ContinuationToken"] = token

    def _indexed(self, kind: str, value: str) -> list[BuildRecord]:
        valid = INDEX_NAME_RE if kind == "recipe" else COMMIT_RE
        if not valid.fullmatch(value):  # nothing else can have been indexed (put_record checks the same)
            return []
        with self._errors():
            self._ready()
            keys = [k for k in self._list_keys(f"{self.prefix}index/{kind}/{value}/") if DIGEST_RE.fullmatch(k)]
        found = self._fan_out(self.get_record, sorted(keys))
        return sorted((r for r in found if r is not None), key=lambda r: (r.recipe, r.finished))

    def records_for_recipe(self, name: str) -> list[BuildRecord]:
        return self._indexed("recipe", name)

    def records_for_commit(self, commit: str) -> list[BuildRecord]:
        return self._indexed("commit", commit)

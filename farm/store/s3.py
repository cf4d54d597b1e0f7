"""The store in an S3 bucket: AWS S3, MinIO, or any server that speaks the S3 API with conditional writes.

Layout under ``s3://BUCKET/PREFIX``::

    blobs/sha256/ab/abcd...        immutable; written with If-None-Match: * (put-if-absent)
    records/<build key>.json       immutable; If-None-Match: * is the atomic put-if-absent of a record
    index/recipe/<name>/<key>      empty marker objects, written after the record
    index/commit/<sha>/<key>

S3 makes an object visible whole or not at all (PutObject and CompleteMultipartUpload are atomic), so no
staging area is needed: a blob goes straight to its final name, a small one (up to one part) as one PUT with
If-None-Match, a large one as a multipart upload completed with If-None-Match (:mod:`farm.store.s3_multipart`).
``put_file(path, sha256=...)`` reads the file once when the caller has its digest; without it the file is hashed
first (S3 needs the name before the first byte). That is simpler and cheaper than uploading to a temporary name
and copying: no second server-side write, no 5 GiB CopyObject limit, no orphaned temporary objects after a crash
(an interrupted multipart upload is invisible; a bucket lifecycle rule ``AbortIncompleteMultipartUpload``
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
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal, ParamSpec, TypeVar, cast

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, SSLError

from farm.errors import E, StoreError
from farm.store.base import Artifact, BuildRecord, Store
from farm.store.names import COMMIT_RE, DIGEST_RE, INDEX_NAME_RE, check_digest, check_record_names
from farm.store.s3_errors import (
    TRANSIENT,
    code,
    conditional_write,
    corrupt_blob,
    is_missing,
    mapped,
    missing_blob,
    no_bucket,
    status,
)
from farm.store.s3_multipart import MiB, put_stream, read_blob

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ListObjectsV2RequestTypeDef

__all__ = ["MiB", "S3Store", "parse_s3_url"]

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")
U = TypeVar("U")

PART_SIZE = 8 * MiB
MIN_PART_SIZE = 5 * MiB  # S3's minimum for every part but the last
FAN_OUT = 16  # concurrent HEAD/GET requests for lookups of many keys

# s3://bucket[/prefix]: bucket per S3's naming rules; prefix segments are plain path names (no ., .., //).
S3_URL_RE = re.compile(r"s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(?P<prefix>[^?#]*))?")
PREFIX_SEGMENT_RE = re.compile(r"[A-Za-z0-9_.+=-]+")


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
        raise StoreError(
            E.STORE_URL,
            f"'{url}' is not a usable S3 store URL",
            field="MANGOS_FARM_STORE",
            hint="write it as s3://BUCKET or s3://BUCKET/PREFIX (a lowercase bucket name, a prefix of plain path "
            "segments); endpoint, region and credentials come from AWS_ENDPOINT_URL_S3, AWS_DEFAULT_REGION, "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        )
    return match.group("bucket"), prefix


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
        self.checksums = getattr(self.client.meta.config, "request_checksum_calculation", None) == "when_supported"
        self._bucket_checked = False
        self._bucket_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3Store({self.url!r}, endpoint={self.endpoint!r})"

    # -- plumbing ---------------------------------------------------------------------------------------------
    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
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

    def _errors(self) -> AbstractContextManager[None]:
        """Turn what boto3 raises into a store error that says what to do."""
        return mapped(url=self.url, endpoint=self.endpoint, bucket=self.bucket, retry_seconds=self.retry_seconds)

    def ready(self) -> None:
        """Check once that the bucket exists: a HEAD of a missing object cannot tell a missing bucket apart."""
        if self._bucket_checked:
            return
        with self._bucket_lock:
            if self._bucket_checked:
                return
            try:
                self.call(self.client.head_bucket, Bucket=self.bucket)
            except ClientError as exc:
                if status(exc) == 404 or code(exc) in ("404", "NoSuchBucket", "NotFound"):
                    raise no_bucket(self.bucket, self.endpoint) from exc
                raise
            self._bucket_checked = True

    def _fan_out(self, fn: Callable[[T], U], items: Sequence[T]) -> list[U]:
        if len(items) <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(FAN_OUT, len(items)), thread_name_prefix="s3-lookup") as pool:
            return list(pool.map(fn, items))

    def exists(self, key: str) -> bool:
        try:
            self.call(self.client.head_object, Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if is_missing(exc) or status(exc) == 404:
                return False
            raise
        return True

    def put_if_absent(
        self, key: str, body: bytes | bytearray, content_type: str = "application/octet-stream", sha256: str = ""
    ) -> bool:
        """PutObject with If-None-Match: *. True if this call created the object, False if it existed.

        ``sha256``: the body's hex digest when the caller has it already.
        """
        checksum = base64.b64encode(bytes.fromhex(sha256) if sha256 else hashlib.sha256(body).digest()).decode()
        return conditional_write(
            lambda: self.call(
                self.client.put_object,
                Bucket=self.bucket,
                Key=key,
                Body=cast(bytes, body),  # botocore sends a bytearray as it is; the stubs only name bytes
                IfNoneMatch="*",
                ContentType=content_type,
                ChecksumSHA256=checksum,  # the server checks the bytes it got
            )
        )

    # -- blobs ------------------------------------------------------------------------------------------------
    def blob_key(self, digest: str) -> str:
        check_digest(digest)
        return f"{self.prefix}blobs/sha256/{digest[:2]}/{digest}"

    def _put_fileobj(self, fh: io.BufferedIOBase, what: str, sha256: str | None = None) -> tuple[str, int]:
        """Store the bytes of ``fh`` (:func:`~farm.store.s3_multipart.put_stream`); returns (digest, size)."""
        with self._errors():
            return put_stream(self, fh, what, sha256)

    def put_file(self, path: Path, *, sha256: str | None = None) -> Artifact:
        with self._errors(), path.open("rb") as fh:
            digest, size = self._put_fileobj(fh, str(path), sha256)
        return Artifact(name=path.name, digest=digest, size=size, executable=os.access(path, os.X_OK))

    def put_bytes(self, data: bytes) -> str:
        return self._put_fileobj(io.BytesIO(data), "the bytes")[0]

    def has_blob(self, digest: str) -> bool:
        key = self.blob_key(digest)
        with self._errors():
            self.ready()
            return self.exists(key)

    def open_blob(self, digest: str) -> BinaryIO:
        key = self.blob_key(digest)
        with self._errors():
            self.ready()
            try:
                resp = self.call(self.client.get_object, Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if is_missing(exc):
                    raise missing_blob(digest, self.url) from None
                raise
            return cast(BinaryIO, resp["Body"])

    def fetch_blob(self, digest: str, dest: Path) -> None:
        self.blob_key(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
        tmp = Path(name)
        try:
            h = hashlib.sha256()
            with self._errors(), os.fdopen(fd, "wb") as out:
                for chunk in read_blob(self, digest):
                    h.update(chunk)
                    out.write(chunk)
            if h.hexdigest() != digest:
                raise corrupt_blob(digest, self.url, f"its bytes hash to {h.hexdigest()}")
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    def get_bytes(self, digest: str) -> bytes:
        self.blob_key(digest)
        with self._errors():
            data = b"".join(read_blob(self, digest))
        if hashlib.sha256(data).hexdigest() != digest:
            raise corrupt_blob(digest, self.url, f"its bytes hash to {hashlib.sha256(data).hexdigest()}")
        return data

    # -- records ----------------------------------------------------------------------------------------------
    def record_key(self, build_key: str) -> str:
        check_digest(build_key)
        return f"{self.prefix}records/{build_key}.json"

    def put_record(self, record: BuildRecord) -> bool:
        check_record_names(record)
        key = self.record_key(record.build_key)
        digests = list(dict.fromkeys(record.blob_digests()))
        blob_keys = [self.blob_key(d) for d in digests]
        with self._errors():
            self.ready()
            present = self._fan_out(self.exists, blob_keys)
            missing = [d for d, there in zip(digests, present, strict=True) if not there]
            if missing:
                raise StoreError(
                    E.STORE_MISSING,
                    f"record {record.build_key} names blobs that are not stored: {', '.join(missing)}",
                    hint="store every blob before its record (this is a bug in the caller)",
                )
            published = self.put_if_absent(key, record.to_bytes(), "application/json")
            # Index markers are idempotent, so a crash between record and markers heals on the next put. They
            # always describe the record that won, never a losing duplicate.
            stored = record if published else self.get_record(record.build_key) or record
            for kind, value in (("recipe", stored.recipe), ("commit", stored.commit)):
                self.put_if_absent(f"{self.prefix}index/{kind}/{value}/{record.build_key}", b"")
        return published

    def _get_small(self, key: str) -> bytes | None:
        """A small object's bytes (None if absent), read in one go; a read that breaks off is retried whole."""
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if is_missing(exc):
                return None
            raise
        with resp["Body"] as body:
            return body.read()

    def get_record(self, build_key: str) -> BuildRecord | None:
        key = self.record_key(build_key)
        with self._errors():
            self.ready()
            raw = self.call(self._get_small, key)
        if raw is None:
            return None
        try:
            return BuildRecord.from_bytes(raw)
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise StoreError(
                E.STORE_CORRUPT,
                f"record {build_key} in {self.url} is unreadable: {exc}",
                hint="records are immutable; restore it from a backup or rebuild with --force",
            ) from None

    def get_records(self, build_keys: Iterable[str]) -> dict[str, BuildRecord | None]:
        keys = list(dict.fromkeys(build_keys))
        return dict(zip(keys, self._fan_out(self.get_record, keys), strict=True))

    def keys_present(self, build_keys: Iterable[str]) -> set[str]:
        keys = list(dict.fromkeys(build_keys))
        record_keys = [self.record_key(k) for k in keys]
        if not keys:
            return set()
        with self._errors():
            self.ready()
            present = self._fan_out(self.exists, record_keys)
        return {k for k, there in zip(keys, present, strict=True) if there}

    def _list_keys(self, prefix: str) -> list[str]:
        names: list[str] = []
        request: ListObjectsV2RequestTypeDef = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            page = self.call(self.client.list_objects_v2, **request)
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
            self.ready()
            keys = [k for k in self._list_keys(f"{self.prefix}index/{kind}/{value}/") if DIGEST_RE.fullmatch(k)]
        found = self._fan_out(self.get_record, sorted(keys))
        return sorted((r for r in found if r is not None), key=lambda r: (r.recipe, r.finished))

    def records_for_recipe(self, name: str) -> list[BuildRecord]:
        return self._indexed("recipe", name)

    def records_for_commit(self, commit: str) -> list[BuildRecord]:
        return self._indexed("commit", commit)

"""Reading and writing log files at a location: a directory, an http(s) URL (read only) or an s3:// URL.

S3 goes through the store's own client (:class:`farm.store.s3.S3Store`), so endpoint, region and credentials come
from the same ``AWS_*`` settings as the artifact store.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from farm.errors import E, FarmError
from farm.fsutil import atomic_write

HTTP_TIMEOUT = 30.0
MAX_LOG_BYTES = 1 << 30


def _s3(location: str) -> tuple[object, str, str]:
    # boto3 and botocore are imported only for s3:// locations (here and below): they are slow to load
    from farm.store.s3 import S3Store, parse_s3_url

    bucket, prefix = parse_s3_url(location)
    return S3Store(location), bucket, f"{prefix}/" if prefix else ""


def read(location: str, name: str) -> bytes:
    """The bytes of ``name`` under ``location``; a FarmError (E-LOG-FETCH) if it cannot be read."""
    hint = "check the peer's 'log' location in peers.toml and that it has published ('mangos-farm publish')"
    if location.startswith(("http://", "https://")):
        url = location.rstrip("/") + "/" + name
        try:
            with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as resp:  # noqa: S310 - http(s) only, checked above
                data: bytes = resp.read(MAX_LOG_BYTES + 1)
        except (urllib.error.URLError, OSError) as exc:
            raise FarmError(E.LOG_FETCH, f"cannot fetch {url}: {exc}", hint=hint) from None
        if len(data) > MAX_LOG_BYTES:
            raise FarmError(E.LOG_FETCH, f"{url} is larger than {MAX_LOG_BYTES} bytes", hint="is this a log?")
        return data
    if location.startswith("s3://"):
        from botocore.exceptions import BotoCoreError, ClientError

        store, bucket, prefix = _s3(location)
        try:
            obj = store.client.get_object(Bucket=bucket, Key=prefix + name)  # type: ignore[attr-defined]
            body: bytes = obj["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise FarmError(E.LOG_FETCH, f"cannot fetch {location.rstrip('/')}/{name}: {exc}", hint=hint) from None
        return body
    path = Path(location) / name
    try:
        return path.read_bytes()
    except OSError as exc:
        raise FarmError(E.LOG_FETCH, f"cannot read {path}: {exc.strerror}", hint=hint) from None


def write(location: str, name: str, data: bytes) -> None:
    """Publish ``name`` under ``location`` (directory or s3://); each file replaced whole, never half-written."""
    if location.startswith(("http://", "https://")):
        raise FarmError(
            E.LOG_FETCH,
            f"cannot publish to {location}: http(s) locations are read-only here",
            hint="publish to a directory your web server serves, or to s3://",
        )
    if location.startswith("s3://"):
        from botocore.exceptions import BotoCoreError, ClientError

        store, bucket, prefix = _s3(location)
        try:
            store.client.put_object(Bucket=bucket, Key=prefix + name, Body=data)  # type: ignore[attr-defined]
        except (ClientError, BotoCoreError) as exc:
            raise FarmError(
                E.LOG_FETCH, f"cannot publish to {location}: {exc}", hint="check the bucket and credentials"
            ) from None
        return
    atomic_write(Path(location) / name, data)

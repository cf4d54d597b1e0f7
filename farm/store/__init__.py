"""The artifact store: content-addressed blobs plus build records indexed by key, recipe and commit."""

from __future__ import annotations

from pathlib import Path

from farm.errors import E, StoreError
from farm.store.base import Artifact, BuildRecord, Store

__all__ = ["Artifact", "BuildRecord", "Store", "open_store"]


def open_store(url: str) -> Store:
    """A store from its URL: a directory path (or file://), or s3://BUCKET[/PREFIX].

    An S3 store takes its endpoint, region and credentials from the usual AWS settings (AWS_ENDPOINT_URL_S3,
    AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID, ...), so ``open_store(store.url)`` reaches the same store in another
    process with the same environment.
    """
    from farm.store.local import LocalStore

    if url.startswith("file://"):
        return LocalStore(Path(url[len("file://") :]))
    if url.lower().startswith("s3:"):
        from farm.store.s3 import S3Store  # imports boto3: only paid for by S3 stores

        return S3Store(url)
    if "://" in url:
        raise StoreError(
            E.STORE_URL,
            f"unsupported store URL '{url}'",
            field="MANGOS_FARM_STORE",
            hint="use a directory path, file:///PATH or s3://BUCKET/PREFIX",
        )
    return LocalStore(Path(url))

"""The artifact store: content-addressed blobs plus build records indexed by key, recipe and commit."""

from __future__ import annotations

from pathlib import Path

from farm.errors import E, FarmError
from farm.store.base import Artifact, BuildRecord, Store

__all__ = ["Artifact", "BuildRecord", "Store", "open_store"]


def open_store(url: str) -> Store:
    """A store from its URL: a directory path (or file://) today; s3:// when the S3 backend is installed."""
    from farm.store.local import LocalStore

    if url.startswith("file://"):
        return LocalStore(Path(url[len("file://") :]))
    if "://" in url:
        raise FarmError(
            E.STORE_URL,
            f"unsupported store URL '{url}'",
            field="MANGOS_FARM_STORE",
            hint="use a directory path (s3:// stores come with the distributed deployment)",
        )
    return LocalStore(Path(url))

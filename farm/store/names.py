"""The names a store accepts: blob digests and build keys (sha256 hex), and the index names of a record.

Every backend checks these before a name reaches a path or an object key, so a name can never escape its folder.
"""

from __future__ import annotations

import re

from farm.errors import E, StoreError
from farm.store.base import BuildRecord

DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
COMMIT_RE = re.compile(r"[0-9a-f]{40}")
INDEX_NAME_RE = re.compile(r"[a-z0-9][a-z0-9+.-]*")


def check_digest(digest: str) -> None:
    """Raise E-STORE-MISSING unless ``digest`` is 64 lowercase hex digits."""
    if not DIGEST_RE.fullmatch(digest):  # fullmatch: '$' alone would accept a trailing newline
        raise StoreError(E.STORE_MISSING, f"'{digest}' is not a sha256 digest", hint="pass 64 lowercase hex")


def check_record_names(record: BuildRecord) -> None:
    """Record fields become index paths: refuse names that could not have come from a validated recipe."""
    if not INDEX_NAME_RE.fullmatch(record.recipe) or not COMMIT_RE.fullmatch(record.commit):
        raise StoreError(
            E.STORE_CORRUPT,
            f"record {record.build_key} has an unusable recipe name or commit id",
            hint="records come from validated recipes; this is a bug in the caller",
        )

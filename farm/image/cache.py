"""The image build's cache: content-addressed blobs and small JSON entries naming them, under the farm home.

``blobs/sha256/HEX`` holds a file whose sha256 is HEX; ``entries/KIND/KEY.json`` maps the digest of a stage's
inputs (KEY) to what that stage made (blob digests and facts). Everything is written to a temporary name in the
same directory and renamed into place, so a reader sees a whole entry or none. A blob is checked against its name
every time it is used: a damaged or truncated blob (or an unreadable entry) is deleted and counts as a miss, so a
corrupt entry is never used; the stage then runs and writes it again.

Blobs are hard links where the file system allows: storing an output costs no copy, and an output file taken from
the cache is a link to the blob. Whoever changes such a file in place damages the blob, which the check catches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from farm.fsutil import atomic_write

log = logging.getLogger(__name__)

_HEX = frozenset("0123456789abcdef")
# Entries kept of each kind, the most recently used first (a root entry holds a ~300 MB erofs image).
KEEP = {"root": 3, "initrd": 4, "initrd-plan": 4, "deb-stanza": 2000}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _is_digest(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


def _link_or_copy(src: Path, dest: Path) -> None:
    """``dest`` (replaced atomically if it exists) gets ``src``'s bytes: a hard link, or a copy across devices."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    os.close(fd)
    tmp = Path(name)
    try:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class ImageCache:
    """The cache at ``root`` (``$MANGOS_FARM_HOME/cache/image``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def blob(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest

    def put_file(self, src: Path, digest: str | None = None) -> str:
        """Store ``src``'s bytes; returns their sha256 (``digest`` if the caller has just computed it)."""
        digest = digest or sha256_file(src)
        target = self.blob(digest)
        if not target.is_file():
            _link_or_copy(src, target)
        return digest

    def put_bytes(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        if not self.blob(digest).is_file():
            atomic_write(self.blob(digest), data)
        return digest

    def has(self, digest: object) -> bool:
        """Whether the blob exists and its bytes hash to its name (a damaged blob is deleted)."""
        if not _is_digest(digest):
            return False
        path = self.blob(str(digest))
        try:
            actual = sha256_file(path)
        except FileNotFoundError:
            return False
        if actual != digest:
            log.warning("image cache: %s is damaged (its bytes hash to %s): deleted, made again", path, actual)
            path.unlink(missing_ok=True)
            return False
        return True

    def get_file(self, digest: object, dest: Path) -> bool:
        """Put the checked blob at ``dest``; False (and ``dest`` untouched) when it is missing or damaged."""
        if not self.has(digest):
            return False
        _link_or_copy(self.blob(str(digest)), dest)
        return True

    def get_bytes(self, digest: object) -> bytes | None:
        if not _is_digest(digest):
            return None
        try:
            data = self.blob(str(digest)).read_bytes()
        except FileNotFoundError:
            return None
        if hashlib.sha256(data).hexdigest() != digest:
            self.blob(str(digest)).unlink(missing_ok=True)
            return None
        return data

    def _entry(self, kind: str, key: str) -> Path:
        if not _is_digest(key) or not kind.replace("-", "").isalnum():
            raise ValueError(f"bad cache entry name {kind}/{key}")
        return self.root / "entries" / kind / f"{key}.json"

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        path = self._entry(kind, key)
        try:
            doc = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            log.warning("image cache: %s is unreadable: deleted", path)
            path.unlink(missing_ok=True)
            return None
        if not isinstance(doc, dict) or doc.get("key") != key:
            path.unlink(missing_ok=True)
            return None
        os.utime(path)  # recently used: kept by prune()
        return doc

    def put(self, kind: str, key: str, doc: dict[str, Any]) -> None:
        atomic_write(self._entry(kind, key), json.dumps({**doc, "key": key}, sort_keys=True).encode())

    def prune(self, keep: dict[str, int] | None = None) -> int:
        """Keep the most recently used entries of each kind (:data:`KEEP`) and the blobs they name; returns the
        number of blobs deleted.

        Run by the image build under its per-home lock (no other build of this cache runs meanwhile)."""
        keep = KEEP if keep is None else keep
        named: set[str] = set()
        for kind_dir in sorted((self.root / "entries").glob("*")):
            limit = keep.get(kind_dir.name, 100)
            entries = sorted(kind_dir.glob("*.json"), key=lambda e: e.stat().st_mtime, reverse=True)
            for old in entries[limit:]:
                old.unlink(missing_ok=True)
            for entry in entries[:limit]:
                try:
                    doc = json.loads(entry.read_bytes())
                except (OSError, ValueError):
                    continue
                named |= {v for v in doc.values() if _is_digest(v)} if isinstance(doc, dict) else set()
        deleted = 0
        for blob in (self.root / "blobs" / "sha256").glob("*"):
            if blob.name not in named:
                blob.unlink(missing_ok=True)
                deleted += 1
        return deleted

"""The store in a local directory.

Layout::

    blobs/sha256/ab/abcd...        immutable, mode 0444
    records/<build key>.json       immutable, published with link(2): atomic put-if-absent
    index/recipe/<name>/<key>      empty marker files, written after the record
    index/commit/<sha>/<key>
    tmp/                           staging; anything left here by a crash is never visible

Everything is written to ``tmp/`` first, fsynced, then linked into place, so a crash leaves either nothing or
the complete file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, BinaryIO

from farm.errors import E, StoreError
from farm.store.base import Artifact, BuildRecord, Store
from farm.store.names import check_digest, check_record_names

CHUNK = 1 << 20
RECORD_READ = 1 << 16  # a record is read in pieces of this size (a few KiB: one read, and one to see the end)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mark(path: Path) -> None:
    """Create the empty marker ``path`` unless it exists (an existing one is left as it is, its times too)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))


def _in_its_directory(path: Path, make: Callable[[Path], None]) -> None:
    """``make(path)`` (which creates ``path``), making ``path``'s directory first if that is what it lacked. The
    directory is made only when missing: after the first few builds a fan-out directory is there, and a mkdir
    that fails with EEXIST costs as much as one that succeeds."""
    try:
        make(path)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        make(path)


def _digest_of(src: IO[bytes]) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    while chunk := src.read(CHUNK):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


def _claim_refused(expect: str, digest: str) -> StoreError:
    return StoreError(
        E.STORE_CORRUPT,
        f"a file to be stored as blob {expect} hashes to {digest}",
        hint="nothing was stored; give the store the digest of exactly the file's bytes",
    )


class LocalStore(Store):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)
        self._records = str(root / "records")
        for sub in ("blobs/sha256", "records", "index/recipe", "index/commit", "tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    # -- blobs ------------------------------------------------------------------------------------------------
    def _blob_path(self, digest: str) -> Path:
        check_digest(digest)
        return self.root / "blobs" / "sha256" / digest[:2] / digest

    @contextmanager
    def _staging(self) -> Iterator[tuple[IO[bytes], Path]]:
        fd, name = tempfile.mkstemp(dir=self.root / "tmp", prefix="put-")
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as fh:
                yield fh, tmp
        finally:
            tmp.unlink(missing_ok=True)

    def _publish(self, tmp: Path, final: Path) -> bool:
        """Link ``tmp`` to ``final`` unless it exists. True if this call published it."""
        try:
            _in_its_directory(final, lambda path: os.link(tmp, path))
        except FileExistsError:
            return False
        _fsync_dir(final.parent)
        return True

    def _put_stream(self, src: IO[bytes], expect: str | None = None) -> tuple[str, int]:
        with self._staging() as (fh, tmp):
            h = hashlib.sha256()
            size = 0
            while chunk := src.read(CHUNK):
                h.update(chunk)
                fh.write(chunk)
                size += len(chunk)
            fh.flush()
            os.fsync(fh.fileno())
            os.chmod(tmp, 0o444)
            digest = h.hexdigest()
            if expect is not None and digest != expect:
                raise _claim_refused(expect, digest)
            self._publish(tmp, self._blob_path(digest))
        return digest, size

    def put_file(self, path: Path, *, sha256: str | None = None) -> Artifact:
        """A blob already stored under the digest the caller gives is not written again (no copy, no fsync: a
        reproducible rebuild makes the same outputs), but the file is still read to check that it is that blob."""
        if sha256 is not None:
            check_digest(sha256)
        with path.open("rb") as src:
            if sha256 is not None and self.has_blob(sha256):
                digest, size = _digest_of(src)
                if digest != sha256:
                    raise _claim_refused(sha256, digest)
            else:
                digest, size = self._put_stream(src, sha256)
        return Artifact(name=path.name, digest=digest, size=size, executable=os.access(path, os.X_OK))

    def put_bytes(self, data: bytes) -> str:
        import io

        return self._put_stream(io.BytesIO(data))[0]

    def has_blob(self, digest: str) -> bool:
        return self._blob_path(digest).is_file()

    def open_blob(self, digest: str) -> BinaryIO:
        path = self._blob_path(digest)
        try:
            return path.open("rb")
        except FileNotFoundError:
            raise StoreError(
                E.STORE_MISSING,
                f"blob {digest} is not in the store {self.url}",
                hint="the artifact was never stored here; check MANGOS_FARM_STORE",
            ) from None

    def fetch_blob(self, digest: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
        tmp = Path(name)
        try:
            h = hashlib.sha256()
            with os.fdopen(fd, "wb") as out, self.open_blob(digest) as src:
                while chunk := src.read(CHUNK):
                    h.update(chunk)
                    out.write(chunk)
            if h.hexdigest() != digest:
                raise StoreError(
                    E.STORE_CORRUPT,
                    f"blob {digest} in {self.url} is corrupt (its bytes hash to {h.hexdigest()})",
                    hint="delete the blob file and rebuild with --force; investigate who wrote to the store",
                )
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    def get_bytes(self, digest: str) -> bytes:
        with self.open_blob(digest) as src:
            data = src.read()
        if hashlib.sha256(data).hexdigest() != digest:
            raise StoreError(
                E.STORE_CORRUPT,
                f"blob {digest} in {self.url} is corrupt",
                hint="delete the blob file and rebuild with --force; investigate who wrote to the store",
            )
        return data

    # -- records ----------------------------------------------------------------------------------------------
    def _record_path(self, key: str) -> Path:
        check_digest(key)
        return self.root / "records" / f"{key}.json"

    def put_record(self, record: BuildRecord) -> bool:
        check_record_names(record)
        missing = [d for d in record.blob_digests() if not self.has_blob(d)]
        if missing:
            raise StoreError(
                E.STORE_MISSING,
                f"record {record.build_key} names blobs that are not stored: {', '.join(missing)}",
                hint="store every blob before its record (this is a bug in the caller)",
            )
        final = self._record_path(record.build_key)
        with self._staging() as (fh, tmp):
            fh.write(record.to_bytes())
            fh.flush()
            os.fsync(fh.fileno())
            os.chmod(tmp, 0o444)
            published = self._publish(tmp, final)
        # Index markers are idempotent, so a crash between record and markers heals on the next put. They
        # always describe the record that won, never a losing duplicate.
        stored = record if published else self.get_record(record.build_key) or record
        for kind, value in (("recipe", stored.recipe), ("commit", stored.commit)):
            marker = self.root / "index" / kind / value / record.build_key
            _in_its_directory(marker, _mark)
        return published

    def get_record(self, build_key: str) -> BuildRecord | None:
        check_digest(build_key)
        try:  # a plain path and descriptor: a plan reads a record per recipe, thousands at a time
            fd = os.open(f"{self._records}/{build_key}.json", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            chunks = []
            while chunk := os.read(fd, RECORD_READ):
                chunks.append(chunk)
        finally:
            os.close(fd)
        raw = b"".join(chunks)
        try:
            return BuildRecord.from_bytes(raw)
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise StoreError(
                E.STORE_CORRUPT,
                f"record {build_key} in {self.url} is unreadable: {exc}",
                hint="records are immutable; restore it from a backup or rebuild with --force",
            ) from None

    def keys_present(self, build_keys: Iterable[str]) -> set[str]:
        return {k for k in build_keys if self._record_path(k).is_file()}

    def _indexed(self, kind: str, value: str) -> list[BuildRecord]:
        if not value or "/" in value or value.startswith("."):
            return []
        folder = self.root / "index" / kind / value
        if not folder.is_dir():
            return []
        records = []
        for marker in sorted(folder.iterdir()):
            rec = self.get_record(marker.name)
            if rec is not None:
                records.append(rec)
        return sorted(records, key=lambda r: (r.recipe, r.finished))

    def records_for_recipe(self, name: str) -> list[BuildRecord]:
        return self._indexed("recipe", name)

    def records_for_commit(self, commit: str) -> list[BuildRecord]:
        return self._indexed("commit", commit)

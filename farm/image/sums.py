"""The release's SHA256SUMS and its detached signature (PKCS#7 by the verity key, as ``openssl smime`` makes it)."""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from farm.trust.release_keys import ReleaseKeys, load_cert, load_key

CHUNK = 1 << 22
_ZEROS = memoryview(bytes(CHUNK))


def sparse_sha256(path: Path) -> str:
    """sha256 of a file, its holes (the disk image's empty slot B and free space) hashed from memory, not read."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        fd, size, pos = fh.fileno(), os.fstat(fh.fileno()).st_size, 0
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:  # ENXIO: only a hole is left; otherwise no SEEK_DATA here: read it all
                data = size if exc.errno == errno.ENXIO else pos
            for start in range(pos, min(data, size), CHUNK):
                h.update(_ZEROS[: min(CHUNK, data - start)])
            if data >= size:
                break
            try:
                end = min(os.lseek(fd, data, os.SEEK_HOLE), size)
            except OSError:
                end = size
            fh.seek(data)
            pos = data
            while pos < end:
                chunk = fh.read(min(CHUNK, end - pos))
                if not chunk:
                    raise OSError(f"{path} ended at {pos} of {size} bytes while it was hashed")
                h.update(chunk)
                pos += len(chunk)
    return h.hexdigest()


def sign_detached(data: bytes, keys: ReleaseKeys) -> bytes:
    return (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(data)
        .add_signer(load_cert(keys.verity_cert), load_key(keys.verity_key), hashes.SHA256())
        .sign(
            serialization.Encoding.DER,
            [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.NoAttributes, pkcs7.PKCS7Options.Binary],
        )
    )


def sha256sums(paths: Sequence[Path], known: dict[Path, str] | None = None) -> str:
    """SHA256SUMS of ``paths`` (``known``: digests computed while they were made), hashed two at a time."""
    known = known or {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        digests = dict(zip(paths, pool.map(lambda p: known.get(p) or sparse_sha256(p), paths), strict=True))
    return "".join(f"{digests[p]}  {p.name}\n" for p in sorted(paths, key=lambda p: p.name))

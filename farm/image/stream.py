"""Stream a release onto a disk: payloads or a whole image, from a file or HTTP(S), checked while it is written.

:func:`write_image` (the installer) writes a whole image by its block map (:mod:`farm.image.bmap`): only the
allocated ranges are fetched and written (holes are skipped, as bmaptool does), each range is held in memory and
its sha256 checked *before* it is written, and the GPT's ranges are written last, after everything else is on the
disk and flushed. Before the first byte, the target's own primary and backup GPT headers are zeroed, so a stream
that breaks off or a range that does not verify leaves a disk with no partition table: it does not boot, and it
does not boot a half-written image either.

:func:`write_payload` (the updater) writes one payload into a partition, hashing it while it streams; the caller
labels the slot only if this returns (a digest mismatch raises E-STREAM-CORRUPT, a short stream
E-STREAM-INCOMPLETE).

Pure Python (urllib, hashlib, os): it runs in the installer image without further tools.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from farm.errors import E, FarmError
from farm.image.bmap import GPT_BYTES, BlockMap, Range

CHUNK = 1024 * 1024
TIMEOUT = 30.0


@dataclass(frozen=True)
class Progress:
    written: int  # bytes written to the target so far
    total: int  # bytes to write in all
    seconds: float

    @property
    def rate(self) -> float:
        """Bytes per second so far."""
        return self.written / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate so far (None before the first byte)."""
        return (self.total - self.written) / self.rate if self.rate > 0 else None


Callback = Callable[[Progress], None]


@dataclass(frozen=True)
class Written:
    bytes: int
    seconds: float
    sha256: str = ""  # write_payload: the digest of what was written


def _url(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}" if base else name


@contextmanager
def open_source(url: str) -> Iterator[BinaryIO]:
    """A file path, file:// or http(s):// URL, read sequentially."""
    if url.startswith(("http://", "https://")):
        try:
            resp = urllib.request.urlopen(url, timeout=TIMEOUT)  # noqa: S310 - the scheme is checked above
        except (urllib.error.URLError, OSError) as exc:
            raise FarmError(E.STREAM_INCOMPLETE, f"cannot fetch {url}: {exc}", hint="check the channel URL") from None
        with resp:
            yield resp
        return
    path = Path(url.removeprefix("file://"))
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise FarmError(E.STREAM_INCOMPLETE, f"cannot read {url}: {exc.strerror}", hint="check the path") from None
    with fh:
        yield fh


def fetcher(base: str) -> Callable[[str], bytes]:
    """Small files (channel.json, SHA256SUMS) under ``base``, read whole: the fetch of ``verify_release``."""

    def fetch(name: str) -> bytes:
        with open_source(_url(base, name)) as src:
            try:
                return src.read()
            except (http.client.HTTPException, OSError) as exc:
                raise FarmError(E.STREAM_INCOMPLETE, f"{name}: the stream broke off: {exc}", hint="run again") from None

    return fetch


def read_exactly(src: BinaryIO, n: int, what: str) -> bytes:
    """``n`` bytes of ``src``; a stream that ends or breaks off first raises E-STREAM-INCOMPLETE."""
    parts, left = [], n
    try:
        while left > 0:
            chunk = src.read(min(left, CHUNK))
            if not chunk:
                break
            parts.append(chunk)
            left -= len(chunk)
    except (http.client.HTTPException, OSError) as exc:
        raise FarmError(
            E.STREAM_INCOMPLETE, f"{what}: the stream broke off: {exc}", hint="nothing is marked done; run again"
        ) from None
    if left:
        raise FarmError(
            E.STREAM_INCOMPLETE,
            f"{what}: the stream ended {left} bytes early",
            hint="the target has no partition table now (it does not boot); run again",
        )
    return b"".join(parts)


def fetch_block_map(base: str, name: str, sha256: str) -> BlockMap:
    """The block map ``name`` at ``base``, checked against its digest from a verified SHA256SUMS."""
    with open_source(_url(base, name)) as src:
        try:
            data = src.read()
        except (http.client.HTTPException, OSError) as exc:
            raise FarmError(E.STREAM_INCOMPLETE, f"{name}: the stream broke off: {exc}", hint="run again") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise FarmError(E.STREAM_CORRUPT, f"{name} does not match its signed digest", hint="the channel is damaged")
    return BlockMap.loads(data)


def open_target(target: Path, size: int) -> int:
    """A file descriptor to write the image to: a block device at least ``size`` bytes long, or a file (made
    sparse, ``size`` long). Its primary and backup GPT headers are zeroed first (see the module docstring)."""
    is_device = target.exists() and stat.S_ISBLK(target.stat().st_mode)
    fd = os.open(target, os.O_RDWR | (0 if is_device else os.O_CREAT), 0o644)
    try:
        if is_device:
            have = os.lseek(fd, 0, os.SEEK_END)
            if have < size:
                raise FarmError(
                    E.STREAM_INCOMPLETE,
                    f"{target} holds {have} bytes, the image needs {size}",
                    hint="choose a larger disk",
                )
            os.pwrite(fd, bytes(GPT_BYTES), 0)
            os.pwrite(fd, bytes(GPT_BYTES), have - GPT_BYTES)
        else:
            os.ftruncate(fd, 0)
            os.ftruncate(fd, size)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def write_image(
    base: str,
    block_map: BlockMap,
    target: Path,
    progress: Callback | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Written:
    """Write the image ``block_map`` describes, its files read from ``base`` (a directory or URL), to ``target``.

    Ranges are read file by file in the order of their offsets in that file (one sequential read per file, no
    HTTP ranges needed); bytes of a file that no range needs are read and dropped."""
    total = block_map.allocated
    start = clock()
    written = 0
    deferred: list[tuple[Range, bytes]] = []
    by_file: dict[str, list[Range]] = {}
    for r in block_map.ranges:
        by_file.setdefault(r.file, []).append(r)
    fd = open_target(target, block_map.size)
    try:
        for name, ranges in by_file.items():
            with open_source(_url(base, name)) as src:
                pos = 0
                for r in sorted(ranges, key=lambda r: r.at):
                    if r.at < pos:
                        raise FarmError(E.CHANNEL_INVALID, f"block map: ranges overlap in {name}", hint="republish")
                    for gap in range(pos, r.at, CHUNK):  # bytes no range needs
                        read_exactly(src, min(CHUNK, r.at - gap), name)
                    data = read_exactly(src, r.length, f"{name} at {r.at}")
                    pos = r.at + r.length
                    got = hashlib.sha256(data).hexdigest()
                    if got != r.sha256:
                        raise FarmError(
                            E.STREAM_CORRUPT,
                            f"{name}: the {r.length} bytes at {r.at} (image offset {r.offset}) hash to {got}, the "
                            f"block map says {r.sha256}",
                            hint="the download or the channel is damaged; the target has no partition table (it "
                            "does not boot); run again",
                        )
                    if r.gpt:
                        deferred.append((r, data))
                        continue
                    _pwrite_all(fd, data, r.offset)
                    written += r.length
                    if progress is not None:
                        progress(Progress(written, total, clock() - start))
        os.fsync(fd)  # everything else is on the disk before the table that makes it a disk
        for r, data in sorted(deferred, key=lambda d: -d[0].offset):  # the backup GPT, then the primary
            _pwrite_all(fd, data, r.offset)
            written += r.length
        os.fsync(fd)
    finally:
        os.close(fd)
    if progress is not None:
        progress(Progress(written, total, clock() - start))
    return Written(written, clock() - start)


def write_payload(
    url: str,
    target: Path,
    *,
    sha256: str,
    size: int,
    offset: int = 0,
    progress: Callback | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Written:
    """Stream the payload at ``url`` into ``target`` at ``offset``, hashing it on the way; raises unless exactly
    ``size`` bytes hashing to ``sha256`` (from a verified SHA256SUMS) arrived. The caller marks the slot used only
    after this returns."""
    start = clock()
    h = hashlib.sha256()
    written = 0
    fd = os.open(target, os.O_RDWR)
    try:
        with open_source(url) as src:
            while written < size:
                data = read_exactly(src, min(CHUNK, size - written), url)
                h.update(data)
                _pwrite_all(fd, data, offset + written)
                written += len(data)
                if progress is not None:
                    progress(Progress(written, size, clock() - start))
            if src.read(1):
                raise FarmError(E.STREAM_CORRUPT, f"{url} is longer than {size} bytes", hint="the channel is damaged")
        os.fsync(fd)
    finally:
        os.close(fd)
    if h.hexdigest() != sha256:
        raise FarmError(
            E.STREAM_CORRUPT,
            f"{url} hashes to {h.hexdigest()}, its signed SHA256SUMS says {sha256}",
            hint="the download or the channel is damaged; the slot stays _empty",
        )
    return Written(written, clock() - start, h.hexdigest())

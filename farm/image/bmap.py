"""The block map of a sparse disk image: its allocated ranges, each with a sha256 and where its bytes are published.

Like bmaptool's ``.bmap``: an installer writes only the allocated ranges (the holes of slot B, the headroom of the
slots and the first-boot free space are never sent nor written) and checks every range's digest before writing it.
Unlike it, a range names the published file that holds its bytes (``file`` at offset ``at``): the root, verity and
signature payloads the updater uses anyway, and one packed file (:data:`DISK_SUFFIX`) with everything else (the GPT
and the ESP), so a release stores each byte once.

Invariants: ranges are sorted, do not overlap, each lies within one partition or outside all of them, and none is
longer than :data:`MAX_RANGE` (an installer holds one range in memory to check it before writing it). The GPT's
ranges (the first and last :data:`GPT_BYTES` of the disk) are flagged, so a writer can write them last.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from farm.errors import E, FarmError

FORMAT = 1
MAX_RANGE = 4 * 1024 * 1024
SECTOR = 512
GPT_BYTES = 34 * SECTOR  # protective MBR + header + 128 entries (the backup: entries + header, 33 sectors)
DISK_SUFFIX = ".disk.raw"


@dataclass(frozen=True)
class Range:
    offset: int  # in the image
    length: int
    sha256: str
    file: str  # the published file holding these bytes
    at: int  # their offset in that file
    gpt: bool = False  # part of the primary or backup GPT: written last


@dataclass(frozen=True)
class BlockMap:
    image: str
    size: int
    ranges: tuple[Range, ...]

    @property
    def allocated(self) -> int:
        return sum(r.length for r in self.ranges)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "image": self.image,
            "size": self.size,
            "allocated": self.allocated,
            "ranges": [asdict(r) for r in self.ranges],
        }

    def dumps(self) -> bytes:
        return json.dumps(self.to_json(), indent=0, sort_keys=True).encode() + b"\n"

    @classmethod
    def loads(cls, data: bytes) -> BlockMap:
        try:
            doc = json.loads(data)
            if doc.get("format") != FORMAT:
                raise ValueError(f"format {doc.get('format')!r}, this farm reads {FORMAT}")
            bmap = cls(doc["image"], int(doc["size"]), tuple(Range(**r) for r in doc["ranges"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise FarmError(
                E.CHANNEL_INVALID, f"unreadable block map: {exc}", hint="republish the release with this farm"
            ) from None
        bmap.check()
        return bmap

    def check(self) -> None:
        end = 0
        for r in self.ranges:
            if r.offset < end or r.length <= 0 or r.length > MAX_RANGE or r.offset + r.length > self.size:
                raise FarmError(
                    E.CHANNEL_INVALID,
                    f"block map of {self.image}: range at {r.offset} (+{r.length}) overlaps, is empty, too long or "
                    "outside the image",
                    hint="republish the release with this farm",
                )
            end = r.offset + r.length


def data_extents(path: Path) -> list[tuple[int, int]]:
    """The allocated (start, end) byte ranges of a file, by SEEK_DATA/SEEK_HOLE."""
    extents: list[tuple[int, int]] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            extents.append((start, end))
            pos = end
    finally:
        os.close(fd)
    return extents


def split(extents: Sequence[tuple[int, int]], cuts: Sequence[int]) -> Iterator[tuple[int, int]]:
    """The extents cut at every offset of ``cuts`` (partition edges, the GPT's ends) and into MAX_RANGE pieces."""
    points = sorted(set(cuts))
    for start, end in extents:
        pos = start
        inner = [c for c in points if start < c < end]
        for stop in [*inner, end]:
            while pos < stop:
                piece = min(stop, pos + MAX_RANGE)
                yield pos, piece
                pos = piece


@dataclass(frozen=True)
class Payload:
    """A partition whose allocated bytes are published as a file of their own."""

    file: str
    start: int  # the partition's first byte in the image
    end: int  # its end


def merge(regions: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(r for r in regions if r[0] < r[1]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def build(
    raw: Path, payloads: Sequence[Payload], disk_file: str, packed: Path, keep: Sequence[tuple[int, int]] = ()
) -> tuple[BlockMap, str]:
    """The block map of ``raw`` and the sha256 of all of ``raw`` (its holes hashed as the zeros they read as);
    writes the bytes no payload holds into ``packed`` (named ``disk_file``).

    The GPT, the payloads and the ``keep`` regions (the ESP) are mapped whole, zeros included: on a disk that held
    something before, a skipped block would keep old bytes where a filesystem or the verity tree expects zeros.
    Elsewhere (slot B, the slots' headroom, the free tail) only allocated blocks that are not all zeros are mapped,
    so an image copied without its holes maps the same."""
    size = raw.stat().st_size
    whole_disk = [(0, GPT_BYTES), (size - GPT_BYTES, size), *keep, *((p.start, p.end) for p in payloads)]
    mandatory = merge(whole_disk)
    cuts = [GPT_BYTES, size - GPT_BYTES] + [c for r in whole_disk for c in r]
    ranges: list[Range] = []
    whole = hashlib.sha256()
    zeros = bytes(MAX_RANGE)
    pos = 0
    with raw.open("rb") as src, packed.open("wb") as out:
        for start, end in split(merge([*mandatory, *data_extents(raw)]), cuts):
            while pos < start:  # a hole
                n = min(start - pos, MAX_RANGE)
                whole.update(zeros[:n])
                pos += n
            src.seek(start)
            data = src.read(end - start)
            if len(data) != end - start:
                raise FarmError(E.IMAGE_VERIFY, f"{raw.name} is shorter than its GPT says", file=raw, hint="rebuild")
            whole.update(data)
            pos = end
            if not any(s <= start < e for s, e in mandatory) and data.count(0) == len(data):
                continue  # zeros where nothing needs them: a hole
            owner = next((p for p in payloads if p.start <= start < p.end), None)
            if owner is not None:
                file, at = owner.file, start - owner.start
            else:
                file, at = disk_file, out.tell()
                out.write(data)
            gpt = start < GPT_BYTES or end > size - GPT_BYTES
            ranges.append(Range(start, end - start, hashlib.sha256(data).hexdigest(), file, at, gpt))
    while pos < size:
        n = min(size - pos, MAX_RANGE)
        whole.update(zeros[:n])
        pos += n
    bmap = BlockMap(raw.name, size, tuple(ranges))
    bmap.check()
    return bmap, whole.hexdigest()

"""The disk: a GPT laid out per the Discoverable Partitions Specification, written to a plain file.

ESP; root A = erofs data + verity hash + verity signature; root B = the same three, empty and labelled
``_empty`` (an update writes there and renames them). Partition UUIDs of root A derive from the root hash as
systemd does (data = first 128 bits, verity = last 128 bits), so systemd-dissect and systemd-gpt-auto pair them
with the hash on the kernel command line. ``sfdisk`` writes the table on the file; the partition contents are
then copied in at their offsets (``dd`` semantics, no loop device).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm.errors import E, FarmError
from farm.run import require_tool, run

SECTOR = 512
MIB = 1024 * 1024
ALIGN = MIB

# Discoverable Partitions Specification type UUIDs (x86-64)
ESP = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
ROOT_X86_64 = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
ROOT_X86_64_VERITY = "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5"
ROOT_X86_64_VERITY_SIG = "41092b05-9fc8-4523-994f-2def0408b176"
# made on the target by first-boot systemd-repart, not at assembly: named here so tools and tests can find them
VAR = "4d21b016-b534-45c2-a9fb-5c16e091fd2d"
SWAP = "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"
TMP = "7ec6f557-3bc5-4aca-b293-16ef5df639d1"
EMPTY_LABEL = "_empty"


@dataclass(frozen=True)
class Partition:
    name: str
    type: str
    uuid: str
    size: int
    content: Path | None = None  # None: left zeroed (slot B)


@dataclass(frozen=True)
class Placed:
    partition: Partition
    start: int  # bytes

    @property
    def end(self) -> int:
        return self.start + self.partition.size


def root_uuids(root_hash: str) -> tuple[str, str]:
    """(data, verity) partition UUIDs from the root hash: its first and last 128 bits, as systemd-repart does."""
    raw = bytes.fromhex(root_hash)
    return str(uuid.UUID(bytes=raw[:16])), str(uuid.UUID(bytes=raw[-16:]))


def derived_uuid(seed: str, what: str) -> str:
    return str(uuid.UUID(bytes=hashlib.sha256(f"mangos-gpt\0{seed}\0{what}".encode()).digest()[:16], version=4))


def align(n: int, to: int = ALIGN) -> int:
    return -(-n // to) * to


def slot_size(n: int) -> int:
    """Slots get 50% headroom so the next version's root fits into slot B."""
    return align(n + n // 2)


def root_slots(root: int, verity: int, slot: int = 0) -> tuple[int, int]:
    """(data, verity) slot sizes of image build: ``slot`` bytes of data (``--slot-size``; default twice the root, so
    a next release up to twice as large fits the other slot), and a verity slot that holds a full data slot's hash
    tree (dm-verity, 4 KiB blocks, sha256: 1/128 of the data per level, the superblock and a block per level more)."""
    data = align(slot or 2 * root)
    if data < root:
        raise FarmError(
            E.IMAGE_INPUT,
            f"--slot-size {slot} is smaller than the root ({root} bytes)",
            field="--slot-size",
            hint="leave it out (twice the root) or give at least the root's size",
        )
    return data, max(align(data // 127 + 8 * 4096), slot_size(verity))


def layout(partitions: Sequence[Partition]) -> list[Placed]:
    placed, pos = [], ALIGN
    for part in partitions:
        placed.append(Placed(part, pos))
        pos = align(pos + part.size)
    return placed


def disk_size(placed: Sequence[Placed], free: int = 0) -> int:
    """The partitions, then ``free`` bytes left unpartitioned (first-boot systemd-repart grows into them), then room
    for the backup GPT."""
    return align(placed[-1].end) + align(free) + ALIGN


def sfdisk_script(placed: Sequence[Placed], label_id: str) -> str:
    lines = ["label: gpt", f"label-id: {label_id}", "unit: sectors", "first-lba: 2048", "sector-size: 512", ""]
    for p in placed:
        part = p.partition
        lines.append(
            f"start={p.start // SECTOR}, size={part.size // SECTOR}, type={part.type}, "
            f'uuid={part.uuid}, name="{part.name}"'
        )
    return "\n".join(lines) + "\n"


def write_disk(out: Path, partitions: Sequence[Partition], *, label_id: str, free: int = 0) -> list[Placed]:
    """Write the table and the contents; the file is sparse (``free`` and empty slots cost no disk)."""
    require_tool("sfdisk")
    for part in partitions:
        if part.size % SECTOR:
            raise FarmError(E.IMAGE_BUILD, f"partition {part.name} size {part.size} is not whole sectors")
        if part.content is not None and part.content.stat().st_size > part.size:
            raise FarmError(E.IMAGE_BUILD, f"{part.content.name} does not fit partition {part.name}")
    placed = layout(partitions)
    out.unlink(missing_ok=True)
    with out.open("wb") as fh:
        fh.truncate(disk_size(placed, free))
    run(
        ["sfdisk", "--no-reread", "--no-tell-kernel", "--quiet", str(out)],
        input=sfdisk_script(placed, label_id).encode(),
    )
    with out.open("r+b") as disk:
        for p in placed:
            if p.partition.content is None:
                continue
            disk.seek(p.start)
            with p.partition.content.open("rb") as src:
                while chunk := src.read(MIB):
                    disk.write(chunk)
    return placed


@dataclass(frozen=True)
class TableEntry:
    name: str
    type: str
    uuid: str
    start: int
    size: int


def read_table(disk: Path) -> list[TableEntry]:
    """The partitions of a GPT disk image, as sfdisk reads them."""
    require_tool("sfdisk")
    result = run(["sfdisk", "--json", str(disk)], check=False)
    if result.returncode != 0:
        raise FarmError(E.IMAGE_VERIFY, "no partition table readable", file=disk, hint="is this a MANGOS .raw image?")
    data: dict[str, Any] = json.loads(result.stdout)
    table = data["partitiontable"]
    unit = int(table.get("sectorsize", SECTOR))
    return [
        TableEntry(
            name=p.get("name", ""),
            type=p["type"].lower(),
            uuid=p["uuid"].lower(),
            start=int(p["start"]) * unit,
            size=int(p["size"]) * unit,
        )
        for p in table["partitions"]
    ]


def sparse_copy(src: Path, dest: Path) -> Path:
    """Copy a disk image keeping its holes (``cp --sparse``-like, via SEEK_DATA/SEEK_HOLE): a writable copy of an
    image with gigabytes of free space to boot costs only the bytes actually written."""
    size = src.stat().st_size
    dest.unlink(missing_ok=True)
    with src.open("rb") as fin, dest.open("wb") as fout:
        fout.truncate(size)
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fin.fileno(), pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            end = os.lseek(fin.fileno(), start, os.SEEK_HOLE)
            fin.seek(start)
            fout.seek(start)
            left = end - start
            while left > 0:
                chunk = fin.read(min(left, 4 * MIB))
                if not chunk:
                    break
                fout.write(chunk)
                left -= len(chunk)
            pos = end
    return dest


def read_partition(disk: Path, entry: TableEntry, limit: int | None = None) -> bytes:
    with disk.open("rb") as fh:
        fh.seek(entry.start)
        return fh.read(entry.size if limit is None else min(limit, entry.size))

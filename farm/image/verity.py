"""dm-verity hash trees on plain files: ``veritysetup format`` with a fixed salt and UUID, plus a pure-Python tree.

``veritysetup format`` needs no device-mapper, so it works on image files; a fixed ``--salt`` and ``--uuid``
make its output reproducible. The pure-Python tree (the kernel's dm-verity format 1, sha256, 4 KiB blocks) gives
the same root hash and lets ``image verify`` recompute it without trusting the tool that made it.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from farm.errors import E, FarmError
from farm.run import require_tool, run

BLOCK = 4096
DIGEST = 32


@dataclass(frozen=True)
class Verity:
    root_hash: str
    salt: str
    uuid: str
    data_blocks: int


def derive_salt(seed: str) -> str:
    """A fixed salt derived from what identifies the data (reproducible, different per image/extension)."""
    return hashlib.sha256(b"mangos-verity-salt\0" + seed.encode()).hexdigest()


def derive_uuid(seed: str) -> str:
    return str(uuid.UUID(bytes=hashlib.sha256(b"mangos-verity-uuid\0" + seed.encode()).digest()[:16], version=4))


def format_argv(data: Path, hash_file: Path, *, salt: str, uuid_: str) -> list[str]:
    return [
        "veritysetup",
        "format",
        "--hash=sha256",
        "--format=1",
        f"--data-block-size={BLOCK}",
        f"--hash-block-size={BLOCK}",
        f"--salt={salt}",
        f"--uuid={uuid_}",
        str(data),
        str(hash_file),
    ]


def verify_argv(data: Path, hash_file: Path, root_hash: str) -> list[str]:
    return ["veritysetup", "verify", str(data), str(hash_file), root_hash]


def parse_format_output(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def format_file(data: Path, hash_file: Path, *, seed: str) -> Verity:
    """Write ``hash_file`` (verity superblock + tree) for ``data``; ``data`` must be a multiple of 4 KiB."""
    require_tool("veritysetup")
    size = data.stat().st_size
    if size % BLOCK:
        raise FarmError(E.IMAGE_BUILD, f"{data.name} is {size} bytes, not a multiple of {BLOCK}", file=data)
    hash_file.unlink(missing_ok=True)
    salt, uuid_ = derive_salt(seed), derive_uuid(seed)
    out = run(format_argv(data, hash_file, salt=salt, uuid_=uuid_)).text
    hash_file.chmod(0o644)  # veritysetup creates it 0600; it is public data like the image
    root = parse_format_output(out).get("Root hash", "")
    if not re.fullmatch(r"[0-9a-f]{64}", root):
        raise FarmError(E.IMAGE_BUILD, f"veritysetup printed no root hash:\n{out}", hint="run with --debug")
    return Verity(root, salt, uuid_, size // BLOCK)


def _hash_level(blocks: list[bytes], salt: bytes) -> bytes:
    """Hash each block (salt first, as format 1 does) and pack the digests into zero-padded 4 KiB blocks."""
    per_block = BLOCK // DIGEST
    out = bytearray()
    for i in range(0, len(blocks), per_block):
        chunk = b"".join(hashlib.sha256(salt + b).digest() for b in blocks[i : i + per_block])
        out += chunk + b"\0" * (BLOCK - len(chunk))
    return bytes(out)


def root_hash(data: bytes, salt_hex: str) -> str:
    """The dm-verity (format 1, sha256, 4 KiB) root hash of ``data``, computed from scratch.

    Level 0 hashes the data blocks; each level above hashes the one below until one block remains; the root hash
    is the salted hash of that block. A single data block has no hash level at all (cryptsetup's ``hash_levels``
    gives 0 levels for one block): the root hash is then the salted hash of the data block itself.
    """
    if len(data) % BLOCK or not data:
        raise ValueError("data must be a non-empty multiple of 4096 bytes")
    salt = bytes.fromhex(salt_hex)
    if len(data) == BLOCK:
        return hashlib.sha256(salt + data).hexdigest()
    blocks = [data[i : i + BLOCK] for i in range(0, len(data), BLOCK)]
    level = _hash_level(blocks, salt)
    while len(level) > BLOCK:
        level = _hash_level([level[i : i + BLOCK] for i in range(0, len(level), BLOCK)], salt)
    return hashlib.sha256(salt + level).hexdigest()


def root_hash_stream(fh: BinaryIO, blocks: int, salt_hex: str) -> str:
    """:func:`root_hash` of ``blocks`` 4 KiB blocks read from ``fh`` at its position, without holding them all."""
    if blocks < 1:
        raise ValueError("no data blocks")
    salt = bytes.fromhex(salt_hex)
    if blocks == 1:  # no hash level: the root hash is the data block's own (see root_hash)
        data = fh.read(BLOCK)
        if len(data) != BLOCK:
            raise ValueError("the data ends before the verity superblock's block count")
        return hashlib.sha256(salt + data).hexdigest()
    per_block = BLOCK // DIGEST
    level = bytearray()
    left = blocks
    while left:
        n = min(left, per_block)
        data = fh.read(n * BLOCK)
        if len(data) != n * BLOCK:
            raise ValueError("the data ends before the verity superblock's block count")
        level += _hash_level([data[i : i + BLOCK] for i in range(0, len(data), BLOCK)], salt)
        left -= n
    while len(level) > BLOCK:
        level = bytearray(_hash_level([bytes(level[i : i + BLOCK]) for i in range(0, len(level), BLOCK)], salt))
    return hashlib.sha256(salt + bytes(level)).hexdigest()


def read_superblock(hash_data: bytes) -> dict[str, str | int]:
    """The fields of a verity superblock (the first 512 bytes veritysetup writes before the tree)."""
    if hash_data[:8] != b"verity\0\0":
        raise FarmError(E.IMAGE_VERIFY, "the hash partition has no verity superblock", hint="rebuild the image")
    salt_size = int.from_bytes(hash_data[80:82], "little")
    return {
        "version": int.from_bytes(hash_data[8:12], "little"),
        "hash_type": int.from_bytes(hash_data[12:16], "little"),
        "uuid": str(uuid.UUID(bytes=hash_data[16:32])),
        "algorithm": hash_data[32:64].rstrip(b"\0").decode(),
        "data_block_size": int.from_bytes(hash_data[64:68], "little"),
        "hash_block_size": int.from_bytes(hash_data[68:72], "little"),
        "data_blocks": int.from_bytes(hash_data[72:80], "little"),
        "salt": hash_data[88 : 88 + salt_size].hex(),
    }

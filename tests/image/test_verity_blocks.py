"""The pure-Python dm-verity root hash against ``veritysetup format`` at every tree shape: one data block (no hash
level: the root is the block's own hash, as for a tiny confext), one hash block (2..128 data blocks), two levels
(129..16384) and three (16385). In memory and streamed, each must print exactly veritysetup's root hash."""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path

import pytest

from farm.image import verity
from tests.lib.tools import require

pytestmark = pytest.mark.integration

# 128 digests fit in a 4 KiB hash block: the tree gains a level past 1, 128 and 128 * 128 data blocks.
SHAPES = [1, 2, 127, 128, 129, 130, 128 * 128, 128 * 128 + 1]


@pytest.mark.parametrize("blocks", SHAPES)
def test_root_hash_equals_veritysetup_format(blocks: int, tmp_path: Path) -> None:
    require("veritysetup")
    data = random.Random(blocks).randbytes(blocks * verity.BLOCK)
    (tmp_path / "data").write_bytes(data)
    made = verity.format_file(tmp_path / "data", tmp_path / "hash", seed=f"blocks-{blocks}")
    assert made.data_blocks == blocks
    assert verity.root_hash(data, made.salt) == made.root_hash
    assert verity.root_hash_stream(io.BytesIO(data), blocks, made.salt) == made.root_hash
    # and it depends on every block: one flipped byte in the last block changes it
    flipped = data[:-1] + bytes([data[-1] ^ 1])
    assert verity.root_hash(flipped, made.salt) != made.root_hash


def test_a_single_block_is_its_own_root(tmp_path: Path) -> None:
    """The shape the old code got wrong: it hashed a zero-padded hash block above the lone data block."""
    require("veritysetup")
    block = b"\x5a" * verity.BLOCK
    (tmp_path / "data").write_bytes(block)
    made = verity.format_file(tmp_path / "data", tmp_path / "hash", seed="one")
    assert made.root_hash == hashlib.sha256(bytes.fromhex(made.salt) + block).hexdigest()
    with pytest.raises(ValueError):
        verity.root_hash_stream(io.BytesIO(block[:100]), 1, made.salt)

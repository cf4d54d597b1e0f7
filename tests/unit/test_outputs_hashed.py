"""Outputs are hashed as they are written (farm.build.outputs.collect_outputs): the digest handed to the store is
that of the bytes on disk, for a copied file and for a packed directory, so the store reads each output once; a
store given a digest that is not the file's stores nothing."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from farm.build.outputs import collect_outputs
from farm.errors import FarmError
from farm.recipes import Recipe
from farm.recipes.load import load_file
from farm.store.local import LocalStore
from tests.lib.recipes import write_recipe

pytestmark = pytest.mark.unit

MTIME = 1_700_000_000


def _recipe(tmp_path: Path, outputs: list[str]) -> Recipe:
    path = write_recipe(tmp_path / "recipes", "r", git_url="/nowhere", commit="0" * 40, steps=["true"], outputs=outputs)
    return load_file(path)


def test_each_output_comes_with_the_digest_and_size_of_its_bytes(tmp_path: Path) -> None:
    out, dest = tmp_path / "out", tmp_path / "arts"
    (out / "tree" / "sub").mkdir(parents=True)
    (out / "tree" / "sub" / "f").write_bytes(b"inside")
    (out / "tool").write_bytes(os.urandom(3 << 20))  # more than one copy chunk
    (out / "tool").chmod(0o755)
    dest.mkdir()
    got = collect_outputs(_recipe(tmp_path, ["tool", "tree"]), out, dest, MTIME)
    assert [o.path.name for o in got] == ["tool", "tree.tar"]
    for o in got:
        data = o.path.read_bytes()
        assert o.sha256 == hashlib.sha256(data).hexdigest()
        assert o.size == len(data)
    assert os.access(got[0].path, os.X_OK)
    assert got[0].path.read_bytes() == (out / "tool").read_bytes()


def test_the_store_refuses_a_digest_that_is_not_the_files(tmp_path: Path) -> None:
    out, dest = tmp_path / "out", tmp_path / "arts"
    out.mkdir()
    dest.mkdir()
    (out / "a.deb").write_bytes(b"deb")
    [o] = collect_outputs(_recipe(tmp_path, ["a.deb"]), out, dest, MTIME)
    store = LocalStore(tmp_path / "store")
    assert store.put_file(o.path, sha256=o.sha256).digest == o.sha256
    o.path.write_bytes(b"changed after hashing")
    with pytest.raises(FarmError) as info:
        LocalStore(tmp_path / "store2").put_file(o.path, sha256=o.sha256)
    assert info.value.code == "E-STORE-CORRUPT"

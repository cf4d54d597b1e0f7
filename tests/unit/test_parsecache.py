"""The parsed-recipe cache (farm.recipes.parsecache): used while a file is unchanged, never when it changed, never
for what it may not keep, and never trusted beyond the recipe classes."""

from __future__ import annotations

import dataclasses
import os
import pickle
import time
from pathlib import Path

import pytest

from farm.errors import ErrorGroup
from farm.recipes import load_dir
from farm.recipes.parsecache import ParseCache
from tests.lib.recipes import write_recipe

pytestmark = pytest.mark.unit
COMMIT = "a" * 40
OLD = time.time() - 3600  # an hour ago: past the racy window


def recipe(directory: Path, name: str, *, version: str = "1.0", age: float | None = OLD) -> Path:
    path = write_recipe(directory, name, git_url="https://example.org/x.git", commit=COMMIT, steps=["true"])
    path.write_text(path.read_text().replace('version = "1.0"', f'version = "{version}"'))
    if age is not None:
        os.utime(path, (age, age))
    return path


def cache_file(cache: Path, directory: Path) -> Path:
    return ParseCache(cache, directory).path


def forge(cache: Path, directory: Path, name: str, version: str) -> None:
    """Rewrite the cached recipe ``name`` with another version (its file's stamp unchanged)."""
    path = cache_file(cache, directory)
    data = pickle.loads(path.read_bytes())
    key = str(directory / f"{name}.toml")
    st, kept = data["entries"][key]
    data["entries"][key] = (st, dataclasses.replace(kept, version=version))
    path.write_bytes(pickle.dumps(data))


def test_an_unchanged_file_is_taken_from_the_cache(tmp_path: Path) -> None:
    d, cache = tmp_path / "r", tmp_path / "cache"
    recipe(d, "a")
    recipe(d, "b")
    first = load_dir(d, cache)
    assert dict(load_dir(d, cache).recipes) == dict(first.recipes) == dict(load_dir(d).recipes)
    forge(cache, d, "a", "9.9")
    assert load_dir(d, cache).recipes["a"].version == "9.9", "the entry was used: the file was not parsed"
    assert load_dir(d).recipes["a"].version == "1.0"
    assert oct(cache_file(cache, d).stat().st_mode & 0o777) == "0o600"


def test_a_changed_file_is_parsed_again_even_with_the_same_size_and_mtime(tmp_path: Path) -> None:
    d, cache = tmp_path / "r", tmp_path / "cache"
    path = recipe(d, "a", version="1.0")
    load_dir(d, cache)
    recipe(d, "a", version="2.0")  # same size, mtime set back to the same second: only the ctime tells
    assert path.stat().st_mtime == OLD
    assert load_dir(d, cache).recipes["a"].version == "2.0"


def test_a_file_just_written_is_not_kept(tmp_path: Path) -> None:
    d, cache = tmp_path / "r", tmp_path / "cache"
    recipe(d, "fresh", age=None)
    recipe(d, "old")
    load_dir(d, cache)
    kept = pickle.loads(cache_file(cache, d).read_bytes())["entries"]
    assert set(kept) == {str(d / "old.toml")}, "a file changed within the racy window could change again unseen"


def test_recipes_reading_other_files_are_not_kept(tmp_path: Path) -> None:
    d, cache = tmp_path / "r", tmp_path / "cache"
    path = recipe(d, "patched")
    (d / "fix.patch").write_text("--- a/x\n+++ b/x\n@@ -0,0 +1 @@\n+x\n")
    path.write_text(path.read_text().replace("[source]", 'patches = ["fix.patch"]\n\n[source]'))
    os.utime(path, (OLD, OLD))
    assert load_dir(d, cache).recipes["patched"].patches
    assert not pickle.loads(cache_file(cache, d).read_bytes())["entries"], "the patch's bytes are digested"


def test_errors_are_found_on_every_load(tmp_path: Path) -> None:
    d, cache = tmp_path / "r", tmp_path / "cache"
    path = recipe(d, "a")
    path.write_text(path.read_text().replace('version = "1.0"', "version = 1"))
    os.utime(path, (OLD, OLD))
    for _ in range(2):
        with pytest.raises(ErrorGroup) as info:
            load_dir(d, cache)
        assert "version" in info.value.render()


def test_a_damaged_or_foreign_cache_is_ignored_and_never_run(tmp_path: Path) -> None:
    d, cache = tmp_path / "r", tmp_path / "cache"
    recipe(d, "a")
    load_dir(d, cache)
    target = cache_file(cache, d)
    target.write_bytes(b"\x80\x05garbage")
    assert load_dir(d, cache).recipes["a"].version == "1.0"
    canary = tmp_path / "ran"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {canary}",))

    target.write_bytes(pickle.dumps({"version": 1, "entries": Evil()}))
    assert load_dir(d, cache).recipes["a"].version == "1.0"
    assert not canary.exists(), "the unpickler built something that is not a recipe class"


def test_another_parser_drops_every_entry(tmp_path: Path) -> None:
    d, cache = tmp_path / "r", tmp_path / "cache"
    recipe(d, "a")
    load_dir(d, cache)
    forge(cache, d, "a", "9.9")
    data = pickle.loads(cache_file(cache, d).read_bytes())
    data["code"] = "another parser"
    cache_file(cache, d).write_bytes(pickle.dumps(data))
    assert load_dir(d, cache).recipes["a"].version == "1.0"

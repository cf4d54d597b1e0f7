"""The worker's tree cache (farm.build.trees) against real git exports: a cached checkout is byte for byte, mode for
mode and mtime for mtime the export itself; a commit built again neither resolves nor exports; the planned tree is
still checked; a recipe with a ref is always resolved; only small trees, and only so many, are kept."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from farm.build import BuildFailure, trees
from farm.build.trees import META, TreeCache
from farm.errors import E
from farm.recipes import Source
from farm.sources.git import SourceCache
from tests.conftest import MakeRepo, git
from tests.lib.recipes import build_request

pytestmark = pytest.mark.integration

FILES = {"README": "hello\n", "src/tool.sh": "#!/bin/sh\necho hi\n", "src/deep/data.txt": "x" * 5000}


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``root`` (itself included): kind, mode, mtime and content or link target."""
    out: dict[str, tuple[Any, ...]] = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = path.lstat()
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path), st.st_mtime)
        elif path.is_dir():
            out[rel] = ("dir", st.st_mode, st.st_mtime)
        else:
            out[rel] = ("file", st.st_mode, st.st_mtime, path.read_bytes())
    return out


class CountingSources(SourceCache):
    """A real source cache that counts what it is asked to do."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.calls: list[str] = []

    def resolve(self, *a: Any, **kw: Any) -> Any:
        self.calls.append("resolve")
        return super().resolve(*a, **kw)

    def export(self, *a: Any, **kw: Any) -> None:
        self.calls.append("export")
        super().export(*a, **kw)


@pytest.fixture
def repo(make_repo: MakeRepo) -> tuple[Path, str]:
    path, _ = make_repo("src", FILES, executable=("src/tool.sh",))
    os.symlink("src/tool.sh", path / "run")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "a link")
    return path, git(path, "rev-parse", "HEAD")


def test_a_cached_checkout_is_the_export_itself(repo: tuple[Path, str], tmp_path: Path) -> None:
    path, commit = repo
    sources, cache = SourceCache(tmp_path / "git"), TreeCache(tmp_path / "trees")
    resolved = sources.resolve(str(path), commit)
    sources.export(str(path), commit, tmp_path / "exported", resolved.commit_time)
    cache.keep(str(path), resolved, tmp_path / "exported")
    assert cache.checkout(str(path), commit, tmp_path / "copied") == resolved
    exported, copied = snapshot(tmp_path / "exported"), snapshot(tmp_path / "copied")
    assert exported == copied
    assert exported["run"][0] == "link" and exported["src/tool.sh"][1] & 0o111  # what is compared is there
    assert cache.checkout(str(path), "0" * 40, tmp_path / "other") is None
    assert cache.checkout("/elsewhere", commit, tmp_path / "other") is None  # keyed by the URL too
    assert not (tmp_path / "other").exists()


def test_a_commit_built_again_is_neither_resolved_nor_exported(repo: tuple[Path, str], tmp_path: Path) -> None:
    path, commit = repo
    req = build_request(path, commit, ["true"], ["x"])
    sources, cache = CountingSources(tmp_path / "git"), TreeCache(tmp_path / "trees")
    first = trees.checkout(sources, cache, req, Source(git=str(path), commit=commit), tmp_path / "a")
    assert sources.calls == ["resolve", "export"]
    second = trees.checkout(sources, cache, req, Source(git=str(path), commit=commit), tmp_path / "b")
    assert sources.calls == ["resolve", "export"], "the second checkout came from the cache"
    assert first == second and first.tree == req.tree
    assert snapshot(tmp_path / "a") == snapshot(tmp_path / "b")


def test_the_planned_tree_is_still_checked(repo: tuple[Path, str], tmp_path: Path) -> None:
    path, commit = repo
    req = build_request(path, commit, ["true"], ["x"])
    sources, cache = CountingSources(tmp_path / "git"), TreeCache(tmp_path / "trees")
    source = Source(git=str(path), commit=commit)
    trees.checkout(sources, cache, req, source, tmp_path / "a")
    entry = next(p for p in (tmp_path / "trees").iterdir() if not p.name.startswith("."))
    meta = json.loads((entry / META).read_text())
    (entry / META).write_text(json.dumps(meta | {"tree": "f" * 40}))  # a cache that disagrees with the plan
    again = trees.checkout(sources, cache, req, source, tmp_path / "b")
    assert again.tree == req.tree and sources.calls == ["resolve", "export", "resolve", "export"]
    (entry / META).write_text(json.dumps(meta))
    rewritten = replace(req, tree="e" * 40)  # planned from a repository rewritten under the same commit id
    with pytest.raises(BuildFailure) as err:
        trees.checkout(sources, cache, rewritten, source, tmp_path / "c")
    assert err.value.code == E.SOURCE_COMMIT


def test_a_recipe_that_names_a_ref_is_always_resolved(repo: tuple[Path, str], tmp_path: Path) -> None:
    path, commit = repo
    req = build_request(path, commit, ["true"], ["x"])
    sources, cache = CountingSources(tmp_path / "git"), TreeCache(tmp_path / "trees")
    source = Source(git=str(path), commit=commit, ref="main")
    for dest in ("a", "b"):
        trees.checkout(sources, cache, req, source, tmp_path / dest)
    assert sources.calls == ["resolve", "export", "resolve", "export"]


def test_only_small_trees_and_only_so_many_are_kept(make_repo: MakeRepo, tmp_path: Path) -> None:
    sources = SourceCache(tmp_path / "git")
    commits = [make_repo("many", {"f": f"version {i}\n"})[1] for i in range(3)]
    path = tmp_path / "repos" / "many"
    small = TreeCache(tmp_path / "small", max_bytes=5)
    cache = TreeCache(tmp_path / "trees", max_entries=2)
    for i, commit in enumerate(commits):
        resolved = sources.resolve(str(path), commit)
        sources.export(str(path), commit, tmp_path / f"e{i}", resolved.commit_time)
        small.keep(str(path), resolved, tmp_path / f"e{i}")
        cache.keep(str(path), resolved, tmp_path / f"e{i}")
        for j, entry in enumerate(sorted(cache.root.iterdir(), key=lambda p: p.stat().st_mtime)):
            os.utime(entry, (1000 + j, 1000 + j))  # the order they were kept in, whatever the clock's resolution
    assert not small.root.exists() or not list(small.root.iterdir()), "a tree over max_bytes is not kept"
    kept = [c for c in commits if cache.checkout(str(path), c, tmp_path / f"out-{c[:8]}") is not None]
    assert kept == commits[1:], "the least recently used entry went first"

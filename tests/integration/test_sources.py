from __future__ import annotations

import os
from pathlib import Path

import pytest

from farm.errors import E, FarmError
from farm.sources.git import SourceCache
from farm.sources.resolved import ResolvedCommits
from tests.conftest import MakeRepo, git

pytestmark = pytest.mark.integration


def test_resolve_records_commit_tree_and_time(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo, commit = make_repo("lib", {"a.c": "int a;\n"}, tag="v1")
    cache = SourceCache(tmp_path / "cache")
    resolved = cache.resolve(str(repo), commit, "v1")
    assert resolved.commit == commit
    assert resolved.tree == git(repo, "rev-parse", f"{commit}^{{tree}}")
    assert resolved.commit_time == int(git(repo, "show", "-s", "--format=%ct", commit))


def test_missing_commit_is_a_clear_error(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo, _ = make_repo("lib", {"a.c": "int a;\n"})
    with pytest.raises(FarmError) as err:
        SourceCache(tmp_path / "c").resolve(str(repo), "1" * 40, origin="recipes/lib.toml")
    assert err.value.code == E.SOURCE_COMMIT
    assert err.value.field == "source.commit"
    assert err.value.file == "recipes/lib.toml"


def test_unreachable_repository(tmp_path: Path) -> None:
    with pytest.raises(FarmError) as err:
        SourceCache(tmp_path / "c").resolve(str(tmp_path / "nope"), "1" * 40)
    assert err.value.code == E.SOURCE_FETCH
    assert "source.git" in err.value.hint


def test_new_commit_is_fetched_into_an_existing_cache(make_repo: MakeRepo, tmp_path: Path) -> None:
    cache = SourceCache(tmp_path / "c")
    repo, first = make_repo("lib", {"a.c": "1\n"})
    cache.resolve(str(repo), first)
    _, second = make_repo("lib", {"a.c": "2\n"})
    assert cache.resolve(str(repo), second).commit == second


def test_ref_is_checked_not_followed(make_repo: MakeRepo, tmp_path: Path) -> None:
    cache = SourceCache(tmp_path / "c")
    repo, old = make_repo("lib", {"a.c": "1\n"}, tag="v1")
    _, new = make_repo("lib", {"a.c": "2\n"})
    # a branch that moved on still contains the pinned commit: accepted, and the pinned commit is built
    assert cache.resolve(str(repo), old, "main").commit == old
    # a tag naming another commit is refused
    with pytest.raises(FarmError) as err:
        cache.resolve(str(repo), new, "v1")
    assert err.value.code == E.SOURCE_REF
    with pytest.raises(FarmError) as err:
        cache.resolve(str(repo), old, "no-such-tag")
    assert err.value.code == E.SOURCE_REF


def test_export_is_the_exact_tree_with_fixed_mtimes(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo, commit = make_repo("lib", {"a.c": "x\n", "sub/run.sh": "#!/bin/sh\n"}, executable=("sub/run.sh",))
    cache = SourceCache(tmp_path / "c")
    cache.resolve(str(repo), commit)
    dest = tmp_path / "src"
    cache.export(str(repo), commit, dest, 1_000_000)
    assert (dest / "a.c").read_text() == "x\n"
    assert os.access(dest / "sub" / "run.sh", os.X_OK)
    assert not (dest / ".git").exists()
    assert {p.lstat().st_mtime for p in dest.rglob("*")} == {1_000_000}


def test_resolved_commits_memo_needs_no_git_the_second_time(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo, commit = make_repo("lib", {"a.c": "x\n"})
    memo = ResolvedCommits(SourceCache(tmp_path / "c"))
    first = memo.resolve(str(repo), commit)
    memo.save()
    # the repository disappears: the memo still answers, because a commit id fixes its tree for ever
    os.rename(repo, tmp_path / "gone")
    again = ResolvedCommits(SourceCache(tmp_path / "c")).resolve(str(repo), commit)
    assert again == first

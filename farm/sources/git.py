"""Git sources at pinned commits, through a per-machine cache of bare mirrors (GitPython).

A commit is immutable, so once it is in the cache nothing is fetched again; the cache is only updated when a
recipe names a commit it does not hold. Concurrent builds on one machine share the cache under a file lock.
GitPython is imported where it is used: it costs ~50 ms, and a plan whose commits are all remembered never needs it.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from farm.errors import E, FarmError
from farm.log import step
from farm.pack import safe_extract

if TYPE_CHECKING:
    import git

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedSource:
    url: str
    commit: str
    tree: str
    commit_time: int


def _fetch_failed(what: str, exc: git.GitCommandError, hint: str, **where: str) -> FarmError:
    """E-SOURCE-FETCH for a clone or fetch that git refused, with git's own complaint."""
    return FarmError(E.SOURCE_FETCH, f"{what}: {exc.stderr.strip() or exc}", hint=hint, **where)


def _cache_name(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:24]


class SourceCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _locked(self, url: str) -> Iterator[Path]:
        path = self.root / f"{_cache_name(url)}.git"
        with (self.root / f"{path.name}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield path

    def _mirror(self, url: str, path: Path) -> git.Repo:
        import git

        try:
            if not path.exists():
                with step("clone", log, url=url):
                    tmp = path.with_suffix(".tmp")
                    if tmp.exists():
                        shutil.rmtree(tmp)
                    git.Repo.clone_from(url, tmp, mirror=True)
                    os.replace(tmp, path)
            return git.Repo(path)
        except git.GitCommandError as exc:
            hint = "check source.git: the URL or path must be a reachable git repository"
            raise _fetch_failed(f"cannot fetch {url}", exc, hint) from None

    def _has_commit(self, repo: git.Repo, commit: str) -> bool:
        import git

        try:
            return repo.commit(commit).hexsha == commit
        except (ValueError, git.BadName, git.GitCommandError):
            return False

    def _local_url(self, url: str) -> str:
        """``dsc:NAME=VERSION`` sources are imported from the archive into a local repository first (the import is
        deterministic, so every machine gets the commit the recipe pins); everything else is fetched as is."""
        if not url.startswith("dsc:"):
            return url
        from farm.sources.dsc import import_dsc

        name, _, version = url[len("dsc:") :].partition("=")
        return str(import_dsc(name, version, self.root.parent).repo)

    def resolve(self, url: str, commit: str, ref: str | None = None, *, origin: str = "") -> ResolvedSource:
        """Make sure ``commit`` is cached; check ``ref`` against it; return its tree and time."""
        import git

        url = self._local_url(url)
        where = origin or url
        with self._locked(url) as path:
            repo = self._mirror(url, path)
            if not self._has_commit(repo, commit):
                with step("fetch", log, url=url):
                    try:
                        repo.git.fetch("--prune", "origin", "+refs/*:refs/*")
                    except git.GitCommandError as exc:
                        hint = "check that the repository is reachable"
                        raise _fetch_failed(f"cannot update {url}", exc, hint, file=where, field="source.git") from None
            if not self._has_commit(repo, commit):
                raise FarmError(
                    E.SOURCE_COMMIT,
                    f"commit {commit} does not exist in {url}",
                    file=where,
                    field="source.commit",
                    hint="pin a commit that is in the repository (git log / git rev-parse <tag>)",
                )
            c = repo.commit(commit)
            if ref:
                self._check_ref(repo, ref, commit, where)
            return ResolvedSource(url, commit, c.tree.hexsha, int(c.committed_date))

    def _check_ref(self, repo: git.Repo, ref: str, commit: str, where: str) -> None:
        import git

        try:
            target = repo.commit(ref).hexsha
        except (ValueError, git.BadName, git.GitCommandError):
            raise FarmError(
                E.SOURCE_REF,
                f"ref '{ref}' does not exist in the repository",
                file=where,
                field="source.ref",
                hint="fix the ref name or remove it (the commit alone is authoritative)",
            ) from None
        if target == commit:
            return
        if repo.is_ancestor(repo.commit(commit), repo.commit(target)):
            return  # a branch that moved on since the commit was pinned: the commit is still on it
        raise FarmError(
            E.SOURCE_REF,
            f"ref '{ref}' points at {target}, which does not contain the pinned commit {commit}",
            file=where,
            field="source.ref",
            hint="the ref and the commit disagree: pin the commit the ref names, or correct the ref",
        )

    def export(self, url: str, commit: str, dest: Path, mtime: int) -> None:
        """Write the commit's tree to ``dest`` (no .git), with every mtime set to ``mtime``. The archive goes
        through a temporary file beside ``dest``, not memory: a kernel tree is 1.5 GB."""
        import git

        url = self._local_url(url)
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=dest.parent, prefix=".export-") as data:
            with self._locked(url) as path:
                git.Repo(path).archive(data, commit, format="tar")
            data.seek(0)
            with tarfile.open(fileobj=data) as tar:
                safe_extract(tar, dest, "source file")
        for p in [dest, *dest.rglob("*")]:
            os.utime(p, (mtime, mtime), follow_symlinks=False)

"""Exported source trees kept on a worker machine, so that a commit built again is copied from local disk instead
of being resolved and exported by git each time.

An entry is keyed by (fetch URL, pinned commit). A commit id names immutable content: its tree and its time, hence
exactly the files, modes and mtimes that :meth:`farm.sources.git.SourceCache.export` writes for it. The entry holds
that export and the :class:`ResolvedSource`; the caller still checks the tree against the planned one. Entries are
written under a temporary name and renamed into place, so concurrent builds on one machine see a complete entry or
none, and an entry is removed by renaming it away first. Only small trees are kept (a large one costs about as much
to copy as to export), at most :attr:`TreeCache.max_entries` of them, the least recently used going first.

The cache lives beside the git mirrors, never under the work root nor inside a sandbox: a build only ever gets a
copy, so nothing a build does reaches an entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from farm.build import BuildFailure, BuildRequest
from farm.errors import E
from farm.recipes import Source
from farm.sources.git import ResolvedSource, SourceCache

log = logging.getLogger(__name__)

META = "source.json"
TREE = "tree"


def _tree_bytes(root: Path, limit: int) -> int | None:
    """The bytes of the regular files under ``root``, or None once they exceed ``limit``."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            total += os.lstat(os.path.join(dirpath, name)).st_size
            if total > limit:
                return None
    return total


class TreeCache:
    """Exported trees under ``root``, one directory per (URL, commit): ``source.json`` and ``tree/``."""

    def __init__(self, root: Path, *, max_entries: int = 64, max_bytes: int = 16 * 1024 * 1024) -> None:
        self.root = root
        self.max_entries = max_entries
        self.max_bytes = max_bytes

    def _entry(self, url: str, commit: str) -> Path:
        return self.root / hashlib.sha256(f"{url}\0{commit}".encode()).hexdigest()[:32]

    def checkout(self, url: str, commit: str, dest: Path) -> ResolvedSource | None:
        """Copy the cached export of ``commit`` to ``dest`` (which must not exist); its resolution, or None when
        there is no usable entry (then ``dest`` does not exist either)."""
        entry = self._entry(url, commit)
        try:
            meta = json.loads((entry / META).read_bytes())
            resolved = ResolvedSource(meta["url"], meta["commit"], meta["tree"], int(meta["commit_time"]))
            if resolved.commit != commit or meta.get("fetch_url") != url:
                return None
            shutil.copytree(entry / TREE, dest, symlinks=True)
            os.utime(entry)  # recently used
        except (OSError, ValueError, KeyError, TypeError):  # absent, or removed while copied: export afresh
            shutil.rmtree(dest, ignore_errors=True)
            return None
        return resolved

    def keep(self, url: str, resolved: ResolvedSource, exported: Path) -> None:
        """Keep a copy of ``exported``, the fresh export of ``resolved`` (nothing has touched it since), if small."""
        if _tree_bytes(exported, self.max_bytes) is None:
            return
        entry = self._entry(url, resolved.commit)
        if entry.exists():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=".new-"))
        try:
            shutil.copytree(exported, tmp / TREE, symlinks=True)
            meta = {"fetch_url": url, "url": resolved.url, "commit": resolved.commit, "tree": resolved.tree,
                    "commit_time": resolved.commit_time}  # fmt: skip
            (tmp / META).write_text(json.dumps(meta, sort_keys=True))
            os.rename(tmp, entry)
        except OSError as exc:  # another build kept it first (the rename found it), or the disk is full
            if not entry.exists():
                log.info("cannot keep the source tree of %s: %s", resolved.commit[:12], exc)
            shutil.rmtree(tmp, ignore_errors=True)
            return
        self._evict()

    def _evict(self) -> None:
        """Remove the least recently used entries beyond :attr:`max_entries`, and what an interrupted put or
        eviction left behind (an hour old)."""
        entries = []
        stale = time.time() - 3600
        for p in self.root.iterdir():
            with contextlib.suppress(OSError):
                mtime = p.stat().st_mtime
                if not p.name.startswith("."):
                    entries.append((mtime, p))
                elif mtime < stale:
                    shutil.rmtree(p, ignore_errors=True)
        entries.sort()
        for _mtime, old in entries[: max(0, len(entries) - self.max_entries)]:
            gone = self.root / f".old-{old.name}-{os.getpid()}"
            try:
                os.rename(old, gone)
            except OSError:  # another process evicted it already
                continue
            shutil.rmtree(gone, ignore_errors=True)


def checkout(
    sources: SourceCache, trees: TreeCache | None, req: BuildRequest, source: Source, src: Path
) -> ResolvedSource:
    """The source at the pinned commit, written to ``src``: copied from the worker's tree cache when this machine
    exported that commit before and it has the planned tree, else resolved and exported by git (and kept). A recipe
    that names a ref is always resolved: only the mirror as it is now can say whether the ref holds the commit."""
    commit, ref = source.commit, source.ref
    cache = trees if not ref else None
    cached = cache.checkout(req.fetch_url, commit, src) if cache is not None else None
    if cached is not None and cached.tree == req.tree:
        return cached
    if cached is not None:  # a tree other than the planned one: let git say what the commit holds
        shutil.rmtree(src)
    resolved = sources.resolve(req.fetch_url, commit, ref, origin=req.recipe_path)
    if resolved.tree != req.tree:
        raise BuildFailure(
            E.SOURCE_COMMIT,
            f"commit {resolved.commit} has tree {resolved.tree}, but {req.tree} was planned",
            hint="the repository was rewritten under the same commit id; investigate before building",
        )
    sources.export(req.fetch_url, commit, src, resolved.commit_time)
    if cache is not None:
        cache.keep(req.fetch_url, resolved, src)
    return resolved

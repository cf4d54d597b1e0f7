"""A persistent memo of (repository, commit) -> (tree, commit time).

A commit id names its tree for ever, so once resolved it never needs git again. Planning a thousand cached
recipes then costs a dictionary lookup each instead of a git process each.
"""

from __future__ import annotations

import json
import os
import tempfile

from farm.sources.git import ResolvedSource, SourceCache


class ResolvedCommits:
    def __init__(self, sources: SourceCache) -> None:
        self.sources = sources
        self.path = sources.root / "resolved.json"
        self._memo: dict[str, list[str | int]] = {}
        self._dirty = False
        try:
            self._memo = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            self._memo = {}

    def resolve(self, url: str, commit: str, ref: str | None = None, *, origin: str = "") -> ResolvedSource:
        memo_key = f"{url}\n{commit}\n{ref or ''}"
        hit = self._memo.get(memo_key)
        if hit is not None:
            return ResolvedSource(url, commit, str(hit[0]), int(hit[1]))
        resolved = self.sources.resolve(url, commit, ref, origin=origin)
        self._memo[memo_key] = [resolved.tree, resolved.commit_time]
        self._dirty = True
        return resolved

    def save(self) -> None:
        if not self._dirty:
            return
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".resolved-")
        with os.fdopen(fd, "w") as fh:
            json.dump(self._memo, fh, sort_keys=True)
        os.replace(tmp, self.path)
        self._dirty = False

"""A cache of parsed recipes, so that planning a large unchanged set does not parse and validate every file again.

One file per recipe directory in the farm's cache (``recipes/<digest of the directory>.pickle``, mode 0600) maps
each recipe file to the :class:`~farm.recipes.model.Recipe` parsed from it. Invariants:

- an entry is used only while its file's device, inode, size, mtime and ctime are what they were when it was
  parsed, and while the recipe code itself (the files of this package and farm/tomlfile.py) is unchanged;
- a file changed within :data:`RACY_SECONDS` of being cached is not cached (its timestamp could hide a second
  change of the same size: git's "racily clean" entries);
- only recipes that read nothing but their own file are cached (none with patches or inputs, whose bytes they
  digest), and only recipes that parsed without error: every problem is found again on every load;
- the file is read with an unpickler that builds only the recipe classes and paths, and a missing, damaged or
  foreign file means parsing, never failing. It is as trustworthy as the farm home that holds it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import time
from pathlib import Path, PosixPath
from typing import Any

from farm.fsutil import atomic_write
from farm.recipes.inputs import Input
from farm.recipes.model import Recipe, Source
from farm.recipes.patches import Patch

VERSION = 1
RACY_SECONDS = 2.0
_CLASSES = {(c.__module__, c.__qualname__): c for c in (Recipe, Source, Patch, Input, PosixPath)}

Stamp = tuple[int, int, int, int, int]


def stamp(st: os.stat_result) -> Stamp:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def code_stamp() -> str:
    """What the parser is: the stamps of the files that define it (a changed parser drops every entry)."""
    here = os.path.dirname(__file__)
    names = sorted(n for n in os.listdir(here) if n.endswith(".py"))  # no glob: its pattern is compiled per process
    files = [*(os.path.join(here, n) for n in names), os.path.join(os.path.dirname(here), "tomlfile.py")]
    return hashlib.sha256(repr([(os.path.basename(f), stamp(os.stat(f))) for f in files]).encode()).hexdigest()


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _CLASSES[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"{module}.{name} is not a recipe class") from None


class ParseCache:
    """The cached recipes of one directory: :meth:`get` before parsing a file, :meth:`put` after, :meth:`save`."""

    def __init__(self, cache_dir: Path, directory: Path) -> None:
        key = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:32]
        self.path = cache_dir / "recipes" / f"{key}.pickle"
        self.code = code_stamp()
        self.kept: dict[str, tuple[Stamp, Recipe]] = {}
        self.now: dict[str, tuple[Stamp, Recipe]] = {}
        self.changed = False
        with contextlib.suppress(OSError, pickle.UnpicklingError, ValueError, TypeError, EOFError, AttributeError):
            data = _Unpickler(io.BytesIO(self.path.read_bytes())).load()
            if isinstance(data, dict) and data.get("version") == VERSION and data.get("code") == self.code:
                self.kept = data["entries"]

    def get(self, path: Path | str, st: os.stat_result) -> Recipe | None:
        entry = self.kept.get(str(path))
        if entry is None or entry[0] != stamp(st) or not isinstance(entry[1], Recipe):
            return None
        self.now[str(path)] = entry
        return entry[1]

    def put(self, path: Path | str, st: os.stat_result, recipe: Recipe) -> None:
        """Keep ``recipe``, parsed from ``path`` as it was at ``st``, if it may be kept (see the invariants)."""
        self.changed = True
        if recipe.patches or recipe.inputs or time.time() - st.st_mtime < RACY_SECONDS:
            return
        self.now[str(path)] = (stamp(st), recipe)

    def save(self) -> None:
        """Write what this load used and parsed, when it differs from what was read; a failure only costs speed."""
        if not self.changed and len(self.now) == len(self.kept):
            return
        data = {"version": VERSION, "code": self.code, "entries": self.now}
        with contextlib.suppress(OSError, pickle.PicklingError):
            atomic_write(self.path, pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL), mode=0o600)

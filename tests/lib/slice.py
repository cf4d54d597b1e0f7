"""Issue #12's CI slice: ``hello``, ``zlib`` and ``file`` from recipes/debian, zlib with a bootstrap edge to file.

The slice must hold one recipe with a bootstrap edge, and zlib and file make a true cycle: file build-depends on
zlib (a farm edge in file.toml), and zlib's own build closure holds file (debhelper depends on it), which
recipes/debian/zlib.toml pins from the archive. That pin is exactly what a bootstrap edge stands for ("zlib builds
against the archive's file, not the farm's"), so the slice's zlib.toml is recipes/debian/zlib.toml with that edge
written in; ``rebuild --stage 1`` then builds zlib again against the farm's file. The edge is derived here, at test
time, rather than kept as a second copy of the recipe in the repository (a copy would go stale at the next import).
"""

from __future__ import annotations

import re
import shutil
import tomllib
from pathlib import Path

from tests.lib.cli import REPO

SLICE = ("hello", "zlib", "file")
SLICE_DIR = "slice"  # beside the session farm's recipes/ (tests/e2e/image_fixtures.py)
BOOTSTRAP_FROM, BOOTSTRAP_TO = "zlib", "file"


def archive_pin(recipe: dict[str, object], package: str) -> str:
    """The version ``recipe`` (parsed TOML) pins ``package`` at in its ``build.archive``."""
    build = recipe["build"]
    assert isinstance(build, dict)
    (version,) = [p["version"] for p in build["archive"] if p["package"] == package]
    return str(version)


def with_bootstrap_edge(text: str, to: str, version: str) -> str:
    """A recipe's TOML text with ``bootstrap = [{ recipe = TO, version = VERSION }]`` among its top-level keys (just
    before its first ``[table]``); every other line is kept as it is."""
    first_table = re.search(r"^\[", text, re.MULTILINE)
    assert first_table is not None and "bootstrap" not in tomllib.loads(text), "a recipe with tables, no edge yet"
    edge = f'bootstrap = [{{ recipe = "{to}", version = "{version}" }}]\n\n'
    return text[: first_table.start()] + edge + text[first_table.start() :]


def write_slice(dest: Path, debian: Path = REPO / "recipes" / "debian") -> tuple[str, str, str]:
    """Write the slice's recipes into ``dest``: hello and file copied, zlib with its bootstrap edge to file.

    Returns the edge as ``plan --json`` lists it, ``(zlib, file, VERSION)``: VERSION is zlib.toml's own archive pin
    of file, which must be the version file.toml builds (else the edge would name a file the farm never built)."""
    dest.mkdir(parents=True, exist_ok=True)
    text = (debian / f"{BOOTSTRAP_FROM}.toml").read_text()
    version = archive_pin(tomllib.loads(text), BOOTSTRAP_TO)
    built = tomllib.loads((debian / f"{BOOTSTRAP_TO}.toml").read_text())["version"]
    assert version == built, f"{BOOTSTRAP_FROM}.toml pins {BOOTSTRAP_TO} {version}, {BOOTSTRAP_TO}.toml is {built}"
    for name in SLICE:
        if name != BOOTSTRAP_FROM:
            shutil.copy(debian / f"{name}.toml", dest / f"{name}.toml")
    derived = with_bootstrap_edge(text, BOOTSTRAP_TO, version)
    (dest / f"{BOOTSTRAP_FROM}.toml").write_text(derived)
    original, edged = tomllib.loads(text), tomllib.loads(derived)
    assert edged.pop("bootstrap") == [{"recipe": BOOTSTRAP_TO, "version": version}] and edged == original
    return BOOTSTRAP_FROM, BOOTSTRAP_TO, version

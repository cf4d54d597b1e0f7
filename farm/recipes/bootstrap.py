"""A recipe's bootstrap edges: recipes of its set it builds against as the archive's pinned binaries, not the farm's.

A set imported from the archive has dependency cycles (gcc-12 and glibc need each other). ``recipes import`` cuts
each cycle deterministically (:func:`farm.graph.bootstrap_split`): the cut edges leave ``build-depends`` and are
written here, ``bootstrap = [{ recipe = "glibc", version = "2.36-9+deb12u7" }]``, the version being that of the
archive's binaries the recipe's ``build.archive`` pins in their place. They are part of the recipe's content only
when present (a recipe without them keeps its build key), and ``plan`` lists every one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from farm.errors import E, FarmError
from farm.recipes.schema import NAME_RE, err

HINT = 'a list of { recipe = "NAME", version = "ARCHIVE VERSION" } (written by \'recipes import\')'


def parse_bootstrap(
    value: Any, name: str, depends: tuple[str, ...], path: Path, errors: list[FarmError]
) -> tuple[tuple[str, str], ...]:
    """``(recipe, version)`` of each bootstrap edge, sorted; a recipe is never both a build-depend and a bootstrap."""
    if not isinstance(value, list):
        errors.append(err(E.RECIPE_TYPE, path, "bootstrap", "must be a list of tables", HINT))
        return ()
    edges: list[tuple[str, str]] = []
    for i, item in enumerate(value):
        ok = isinstance(item, dict) and set(item) == {"recipe", "version"}
        if not ok or not all(isinstance(v, str) and v for v in item.values()) or not NAME_RE.match(item["recipe"]):
            errors.append(
                err(E.RECIPE_VALUE, path, f"bootstrap[{i}]", "a bootstrap edge needs recipe and version", HINT)
            )
            continue
        edges.append((item["recipe"], item["version"]))
    names = [r for r, _ in edges]
    for recipe in sorted({r for r in names if names.count(r) > 1 or r in depends or r == name}):
        errors.append(
            err(
                E.RECIPE_VALUE,
                path,
                "bootstrap",
                f"'{recipe}' is listed twice, is the recipe itself, or is also in build-depends",
                "a dependency is either a farm edge (build-depends) or a bootstrap edge, once",
            )
        )
    return tuple(sorted(edges))

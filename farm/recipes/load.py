"""Loading recipes: one file, or a whole directory checked as a set (duplicates, unknown dependencies, cycles).

Loading reads no source: :func:`check_patches` is the one check that fetches the pinned sources (of the recipes
that carry patches only) to apply their patches, as ``recipes check`` does."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from farm.errors import E, ErrorGroup, FarmError, RecipeError
from farm.graph import find_cycle
from farm.recipes.model import Recipe, parse
from farm.recipes.parsecache import ParseCache
from farm.recipes.patches import apply, read_local
from farm.recipes.schema import err

if TYPE_CHECKING:
    from farm.sources.git import SourceCache


def load_file(path: Path) -> Recipe:
    from farm.tomlfile import SYNTAX_HINT, load_toml  # only when a file is parsed (a cached plan parses none)

    data = load_toml(path, E.RECIPE_SYNTAX, read_code=E.RECIPE_DIR, hint=f"{SYNTAX_HINT} (https://toml.io)")
    return parse(data, path)


# A subdirectory holding this file is a recipe set of its own: built when named (``rebuild recipes/kernel``), left out
# when a parent directory is loaded (``rebuild recipes``).
SEPARATE_SET = ".recipe-set"


def recipe_files(directory: Path) -> list[Path]:
    """The ``*.toml`` recipes of ``directory`` and its subdirectories (a set may be grouped in them, as
    ``recipes/debian/``), sorted as paths sort, leaving out every subdirectory that holds a :data:`SEPARATE_SET`
    file. What ``directory.rglob("*.toml")`` finds (any entry so named; symbolic links to directories are not
    followed; a directory that cannot be listed is skipped)."""
    return [Path(p) for p in _recipe_names(directory)]


def _recipe_names(directory: Path) -> list[str]:
    """:func:`recipe_files` as the strings of those paths (each ``str()`` of its Path), in one walk of plain
    names: a set of thousands of recipes is listed on every plan, most of them then found in the parse cache."""
    top = str(directory)
    found: list[tuple[tuple[str, ...], str]] = []  # (parts below directory, path): sorted as the paths would sort
    _walk("" if top == "." else top.rstrip("/") + "/", (), found, top=True)
    found.sort()
    return [path for _, path in found]


def _walk(prefix: str, parts: tuple[str, ...], found: list[tuple[tuple[str, ...], str]], *, top: bool) -> None:
    try:
        with os.scandir(prefix or ".") as listing:
            entries = list(listing)
    except PermissionError:
        return
    if not top and any(e.name == SEPARATE_SET for e in entries) and os.path.exists(prefix + SEPARATE_SET):
        return  # a recipe set of its own
    for entry in entries:
        name = entry.name
        if name.endswith(".toml"):
            found.append(((*parts, name), prefix + name))
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            continue
        if is_dir:
            _walk(prefix + name + "/", (*parts, name), found, top=False)


@dataclass(frozen=True)
class RecipeSet:
    """All recipes of a directory, by name, checked as a whole (duplicates, dependencies, cycles)."""

    recipes: Mapping[str, Recipe]
    directory: Path

    def __iter__(self) -> Iterator[Recipe]:
        return iter(self.recipes.values())

    def __len__(self) -> int:
        return len(self.recipes)


def load_dir(directory: Path, cache_dir: Path | None = None) -> RecipeSet:
    """The recipe set of ``directory``, checked as a whole; with ``cache_dir``, files unchanged since a previous load
    are not parsed again (:mod:`farm.recipes.parsecache`)."""
    if not directory.is_dir():
        raise RecipeError(
            E.RECIPE_DIR,
            "not a directory of recipes",
            file=directory,
            hint="pass the directory holding the *.toml recipes, e.g. 'recipes/'",
        )
    files = _recipe_names(directory)
    if not files:
        raise RecipeError(
            E.RECIPE_DIR,
            "holds no *.toml recipes",
            file=directory,
            hint="add recipes or pass another directory",
        )
    errors: list[FarmError] = []
    by_name: dict[str, Recipe] = {}
    cache = ParseCache(cache_dir, directory) if cache_dir is not None else None
    for name in files:
        try:
            recipe = _load_cached(name, cache) if cache is not None else load_file(Path(name))
        except ErrorGroup as group:
            errors.extend(group.errors)
            continue
        except FarmError as exc:
            errors.append(exc)
            continue
        if recipe.name in by_name:
            other = by_name[recipe.name].path
            errors.append(
                err(
                    E.RECIPE_DUPLICATE,
                    Path(name),
                    "name",
                    f"recipe '{recipe.name}' is also defined in {other}",
                    "rename one of them or delete the duplicate",
                )
            )
            continue
        by_name[recipe.name] = recipe
    errors += _set_errors(by_name, directory) if not errors else _unknown_deps(by_name, directory)
    if cache is not None:
        cache.save()
    if errors:
        raise ErrorGroup(errors)
    return RecipeSet(recipes=dict(sorted(by_name.items())), directory=directory)


def _unknown_deps(by_name: Mapping[str, Recipe], directory: Path) -> list[FarmError]:
    errors: list[FarmError] = []
    for recipe in by_name.values():
        for dep in recipe.build_depends:
            if dep not in by_name:
                import difflib  # only to name a likely intended recipe

                close = difflib.get_close_matches(dep, list(by_name), n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"add a recipe named '{dep}' to {directory}"
                errors.append(
                    err(
                        E.RECIPE_UNKNOWN_DEP,
                        recipe.path,
                        "build-depends",
                        f"depends on '{dep}', which no recipe defines",
                        hint,
                    )
                )
    return errors


def _set_errors(by_name: Mapping[str, Recipe], directory: Path) -> list[FarmError]:
    """Unknown dependencies; when there are none, a dependency cycle."""
    errors = _unknown_deps(by_name, directory)
    if not errors:
        cycle = find_cycle({n: r.build_depends for n, r in by_name.items()})
        if cycle:
            errors.append(
                err(
                    E.RECIPE_CYCLE,
                    by_name[cycle[0]].path,
                    "build-depends",
                    "dependency cycle: " + " -> ".join(cycle),
                    "break the cycle by removing one of these build-depends",
                )
            )
    return errors


def _load_cached(name: str, cache: ParseCache) -> Recipe:
    """The recipe in file ``name`` (a path's string), from the cache while the file is unchanged."""
    try:
        st = os.stat(name)
    except OSError:
        return load_file(Path(name))  # which says what is wrong with it
    recipe = cache.get(name, st)
    if recipe is None:
        recipe = load_file(Path(name))
        cache.put(name, st, recipe)
    return recipe


def check_patches(recipes: Iterable[Recipe], sources: SourceCache) -> int:
    """Apply each recipe's patches to its pinned source (fetched through ``sources``) in a scratch directory, as a
    build would. Returns how many patches applied; raises an ErrorGroup naming every recipe whose source cannot be
    fetched or whose patch does not apply (E-RECIPE-PATCH: the patch file and the failing hunk)."""
    errors: list[FarmError] = []
    applied = 0
    for recipe in recipes:
        if not recipe.patches:
            continue
        try:
            url, commit = recipe.git_location, recipe.source.commit
            resolved = sources.resolve(url, commit, recipe.source.ref, origin=str(recipe.path))
            with tempfile.TemporaryDirectory(prefix=f"mangos-check-{recipe.name}-") as tmp:
                tree = Path(tmp) / "src"
                sources.export(url, commit, tree, resolved.commit_time)
                data = [(p, read_local(p, recipe.path) or b"") for p in recipe.patches]
                apply(data, tree, mtime=resolved.commit_time, recipe_path=recipe.path)
            applied += len(recipe.patches)
        except ErrorGroup as group:
            errors.extend(group.errors)
        except FarmError as exc:
            errors.append(exc)
    if errors:
        raise ErrorGroup(errors)
    return applied

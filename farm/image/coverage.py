"""Coverage: how many of an image's binary packages the farm built, and why each of the others is the archive's.

Counted by binary package (one per name in the image). Every archive package gets one reason, the first that holds:

- ``older``: it stands in for a farm build older than the archive's version (``--allow-archive-fallback``,
  :mod:`farm.image.admission`); the package carries that reason into the SBOM, the manifest and the lock;
- ``kernel``: Debian's signed kernel; the farm's kernel is the ``linux`` recipes' (``image build --kernel``);
- ``unavailable``: its source is listed in the recipe set's ``unavailable.json`` (no suite serves its files);
- ``not-built``: the set has a recipe for its source, but the farm has no build of it at the recipe's commit;
- ``not-produced``: the recipe has a build, but the build yields no such binary (a trimmed build, another version);
- ``no-recipe``: the set has no recipe for its source.

A binary's source is the one ``unavailable.json`` names for it, else the ``Source`` field of the archive's Packages
entry (apt's lists), else its own name. ``--require-farm`` refuses an image with any archive package, ``--min-farm
PERCENT`` one below that share: one error naming every archive package and its reason.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm.archive.closure import UNAVAILABLE_FILE
from farm.archive.versions import ArchiveVersions
from farm.errors import E, FarmError
from farm.image.inputs import debian_recipe_digests
from farm.image.packages import FARM, Package
from farm.store import Store

REQUIRE_FLAG = "--require-farm"
MIN_FLAG = "--min-farm"
KERNEL_SOURCES = frozenset({"linux-signed-amd64", "linux"})  # Debian's kernel: the farm's is the `linux` recipes'


@dataclass(frozen=True)
class Entry:
    """One binary package of the image: its origin, its source, and for an archive package why it is one."""

    package: str
    version: str
    arch: str
    origin: str  # farm | archive
    source: str
    recipe: str = ""
    commit: str = ""
    kind: str = ""  # for an archive package: older | kernel | unavailable | not-built | not-produced | no-recipe
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "package": self.package,
            "version": self.version,
            "arch": self.arch,
            "origin": self.origin,
            "source": self.source,
        }
        if self.recipe:
            data |= {"recipe": self.recipe, "commit": self.commit}
        if self.origin != FARM:
            data |= {"kind": self.kind, "reason": self.reason}
        return data


@dataclass(frozen=True)
class Coverage:
    entries: tuple[Entry, ...]

    @property
    def farm_packages(self) -> int:
        return sum(1 for e in self.entries if e.origin == FARM)

    @property
    def total(self) -> int:
        return len(self.entries)

    @property
    def archive_packages(self) -> int:
        return self.total - self.farm_packages

    @property
    def percent(self) -> float:
        return round(100 * self.farm_packages / self.total, 1) if self.total else 0.0

    def archive(self) -> list[Entry]:
        return [e for e in self.entries if e.origin != FARM]

    def by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for e in self.archive():
            counts[e.kind] = counts.get(e.kind, 0) + 1
        return dict(sorted(counts.items()))

    def line(self) -> str:
        kinds = ", ".join(f"{n} {k}" for k, n in self.by_kind().items())
        return (
            f"coverage: {self.farm_packages} of {self.total} binary packages farm-built ({self.percent}%), "
            f"{self.archive_packages} from the archive" + (f" ({kinds})" if kinds else "")
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "farm_packages": self.farm_packages,
            "archive_packages": self.archive_packages,
            "total": self.total,
            "percent": self.percent,
            "archive_by_kind": self.by_kind(),
            "packages": [e.to_json() for e in self.entries],
        }


def unavailable(recipes_dir: Path) -> dict[str, tuple[str, str, str]]:
    """binary package -> (source, version, reason) of every source the set lists as unavailable."""
    path = recipes_dir / UNAVAILABLE_FILE
    if not path.is_file():
        return {}
    try:
        rows = json.loads(path.read_text())["unavailable"]
        return {
            b: (str(r["name"]), str(r.get("version", "")), str(r.get("reason", "")))
            for r in rows
            for b in r["binaries"]
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FarmError(
            E.IMAGE_INPUT,
            f"unreadable list of unavailable sources: {exc}",
            file=path,
            hint="regenerate it with 'mangos-farm recipes import --image --dir DIR'",
        ) from None


def sources(packages: Iterable[Package], lists_dir: Path | None) -> dict[str, str]:
    """binary package -> its source, from the Packages entry of its version (any version of it when the lists no
    longer have that one); packages the lists do not know are left out."""
    wanted = {p.name: p for p in packages}
    if lists_dir is None:
        from farm.sources.apt import configured_lists

        lists_dir = configured_lists()
    index = ArchiveVersions.load(wanted, lists_dir)
    found = {}
    for name, p in wanted.items():
        entries = index.by_package.get(name, [])
        exact = [e for e in entries if (e.version, e.arch) == (p.version, p.arch)]
        if exact or entries:
            found[name] = (exact or entries)[0].source
    return found


def of(
    packages: Sequence[Package],
    *,
    recipes: Mapping[str, str],
    built: Collection[str],
    recipes_dir: Path,
    lists_dir: Path | None = None,
) -> Coverage:
    """The coverage of ``packages`` (one per name). ``recipes``: the set's Debian recipes by name -> pinned commit;
    ``built``: those of them the farm has a build of at that commit."""
    missing = unavailable(recipes_dir)
    archive = [p for p in packages if p.origin != FARM]
    source_of = sources([p for p in archive if p.name not in missing], lists_dir) if archive else {}
    entries = []
    for p in sorted(packages, key=lambda p: (p.name, p.arch)):
        if p.origin == FARM:
            entries.append(Entry(p.name, p.version, p.arch, FARM, p.recipe, p.recipe, p.commit))
            continue
        source = missing[p.name][0] if p.name in missing else source_of.get(p.name, p.name)
        kind, reason = _why(p, source, missing.get(p.name), recipes, built, recipes_dir)
        recipe = source if source in recipes else ""
        entries.append(
            Entry(p.name, p.version, p.arch, p.origin, source, recipe, recipes.get(recipe, ""), kind, reason)
        )
    return Coverage(tuple(entries))


def _why(  # noqa: PLR0917 (one decision over the package and what is known of its source)
    p: Package,
    source: str,
    listed: tuple[str, str, str] | None,
    recipes: Mapping[str, str],
    built: Collection[str],
    recipes_dir: Path,
) -> tuple[str, str]:
    if p.reason:
        return "older", p.reason
    if source in KERNEL_SOURCES or p.name.startswith("linux-image-"):
        return "kernel", "Debian's signed kernel: the farm's own kernel goes in with 'image build --kernel'"
    if listed is not None:
        why = listed[2].split(": http", 1)[0]  # the URLs tried and their statuses stay in the file
        return "unavailable", f"source {listed[0]} {listed[1]} unavailable ({why}; see {UNAVAILABLE_FILE})"
    if source in recipes:
        commit = recipes[source][:12]
        if source in built:
            return "not-produced", f"the farm build of recipe {source} at {commit} yields no {p.name}"
        return "not-built", f"recipe {source} has no farm build at {commit} yet"
    return "no-recipe", f"no recipe for source {source} in {recipes_dir}"


def built_recipes(store: Store, recipes: Mapping[str, str], digests: Mapping[str, str] | None = None) -> set[str]:
    """The recipes the store has a build of at their pinned commit; with ``digests`` (name -> recipe digest), of
    the recipe as written (not a stage-1 variant, other trims or another set's recipe of the name)."""
    digests = digests or {}

    def built(name: str, commit: str) -> bool:
        want = digests.get(name)
        return any(b.commit == commit and want in (None, b.recipe_digest) for b in store.records_for_recipe(name))

    return {r for r, commit in recipes.items() if built(r, commit)}


def measure(
    packages: Sequence[Package],
    *,
    recipes: Mapping[str, str],
    recipes_dir: Path,
    store: Store,
    lists_dir: Path | None = None,
) -> Coverage:
    """:func:`of`, with the built recipes (as written in ``recipes_dir``) looked up in ``store``."""
    digests = debian_recipe_digests(recipes_dir) if recipes_dir.is_dir() else {}
    built = built_recipes(store, recipes, digests)
    return of(packages, recipes=recipes, built=built, recipes_dir=recipes_dir, lists_dir=lists_dir)


def manifest_packages(manifest: Path) -> list[Package]:
    """The packages an image's manifest (``mangos_V.manifest.json``) lists, with their origin and reason."""
    data = json.loads(manifest.read_text())
    return [
        Package(
            p["name"],
            p["version"],
            p["arch"],
            p["sha256"],
            p["origin"],
            Path(p["file"]),
            p.get("recipe", ""),
            p.get("commit", ""),
            p.get("build_key", ""),
            reason=p.get("reason", ""),
        )
        for p in data["packages"]
    ]


def check(cov: Coverage, *, require_all: bool = False, min_percent: float | None = None, what: str = "image") -> None:
    """Refuse the coverage below what was asked: every archive package named, with its reason, in one error."""
    if require_all and cov.archive_packages:
        wanted = f"{REQUIRE_FLAG} wants all {cov.total}"
    elif min_percent is not None and 100 * cov.farm_packages < min_percent * cov.total:  # unrounded
        wanted = f"{MIN_FLAG} {min_percent:g} wants at least {min_percent:g}%"
    else:
        return
    lines = "\n".join(f"  {e.package} {e.version} [{e.kind}]: {e.reason}" for e in cov.archive())
    raise FarmError(
        E.IMAGE_COVERAGE,
        f"the {what} has {cov.farm_packages} of {cov.total} binary packages farm-built ({cov.percent}%); "
        f"{wanted}. {cov.archive_packages} come from the archive:\n{lines}",
        hint="build the missing recipes ('mangos-farm rebuild DIR'), import the missing sources ('mangos-farm "
        "recipes import --image --dir DIR'), or build without the flag to take the archive's binaries",
    )


__all__ = [
    "MIN_FLAG",
    "REQUIRE_FLAG",
    "Coverage",
    "Entry",
    "built_recipes",
    "check",
    "manifest_packages",
    "measure",
    "of",
    "sources",
    "unavailable",
]

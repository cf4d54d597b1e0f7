"""``mangos-farm recipes update``: every Debian recipe compared with the version the archive would install, and
what moved re-imported.

The archive's version of a recipe is the source version of the binaries an image would install
(:meth:`~farm.archive.versions.ArchiveVersions.source_candidate` over the source's binaries); a source none of
whose binaries is in a Packages index falls back to the newest version any Sources index lists. A recipe is
*behind* when its version is older (Debian ordering), or the same with the archive's binaries a later binNMU
(``build.binnmu``: ``bash 5.2.15-2+b13`` of a recipe ``5.2.15-2`` without one). The moves are re-imported through
``recipes import``'s code, the security updates in a batch before the others, so that nothing delays a security
fix; a source that cannot be had stops no other. Each recipe ends ``up to date``, ``updated``, ``unavailable``
(the archive installs that version, its source cannot be downloaded) or ``failed``. An update shows the
``debian/changelog`` entries between the two versions, read from the newly imported source.

Nothing here queues a build: the caller decides (``--queue`` submits :func:`rebuild_set` on the security lane).
"""

from __future__ import annotations

import enum
import logging
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from debian import changelog

from farm import graph
from farm.archive.import_ import import_recipes
from farm.archive.index import SourcesIndex
from farm.archive.versions import ArchiveVersions, choose_source, compare
from farm.errors import E, FarmError
from farm.run import run
from farm.sources.apt import configured_lists
from farm.sources.dsc_git import repo_path
from farm.store import Store

log = logging.getLogger(__name__)


class Status(enum.StrEnum):
    UP_TO_DATE = "up to date"
    UPDATED = "updated"
    UNAVAILABLE = "unavailable"
    FAILED = "failed"


@dataclass(frozen=True)
class RecipeEntry:
    """What ``recipes update`` needs of a recipe file: read as plain TOML, so one broken recipe stops nothing."""

    name: str
    version: str
    path: Path
    kind: str
    depends: tuple[str, ...]
    binnmu: int = 0  # build.binnmu: the binNMU of the source version the recipe builds (0: none)


def read_recipes(recipes_dir: Path) -> dict[str, RecipeEntry]:
    """Every recipe of the directory (every kind: the dependents of a Debian recipe may be git recipes)."""
    found: dict[str, RecipeEntry] = {}
    for path in sorted(recipes_dir.glob("*.toml")) if recipes_dir.is_dir() else []:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            log.warning("skipping %s: %s", path, exc)
            continue
        name, build = data.get("name"), data.get("build")
        if not isinstance(name, str):
            continue
        kind = str(build.get("kind", "script")) if isinstance(build, dict) else "script"
        depends = data.get("build-depends", [])
        deps = tuple(str(d) for d in depends) if isinstance(depends, list) else ()
        number = build.get("binnmu", 0) if isinstance(build, dict) else 0
        binnmu = number if isinstance(number, int) and not isinstance(number, bool) else 0
        found[name] = RecipeEntry(name, str(data.get("version", "")), path, kind, deps, binnmu)
    return found


@dataclass(frozen=True)
class Target:
    """The archive's version of a source: what an image would install, and from which archive (suite)."""

    version: str
    archive: str = ""  # 'Origin Codename' of the Packages index, '' when only a Sources index lists it
    security: bool = False
    binnmu: int = 0  # the binNMU number of the archive's binaries of ``version`` (0: none)


def binary_version(version: str, binnmu: int) -> str:
    """The version of the binaries of source ``version`` built as binNMU ``binnmu`` (0: the source version)."""
    return f"{version}+b{binnmu}" if binnmu else version


def archive_targets(names: Iterable[str], lists_dir: Path, arch: str | None = None) -> dict[str, Target]:
    """The archive's version of each named source, by ``recipes import``'s rule
    (:func:`~farm.archive.versions.choose_source`); sources the archive does not have are left out."""
    wanted = set(names)
    index = SourcesIndex.load(wanted, lists_dir)
    binaries = {n: sorted({b for e in index.by_name.get(n, []) for b in e.binaries}) for n in wanted}
    versions = ArchiveVersions.load({b for bs in binaries.values() for b in bs}, lists_dir)
    targets: dict[str, Target] = {}
    for name in sorted(wanted):
        indexed = [e.version for e in index.by_name.get(name, [])]
        if indexed:
            choice = choose_source(name, None, indexed, binaries[name], archive=versions, arch=arch)
            targets[name] = Target(choice.candidate, choice.archive, "security" in choice.archive, choice.binnmu)
    return targets


@dataclass(frozen=True)
class Move:
    """A Debian recipe behind the archive."""

    name: str
    current: str
    target: Target
    current_binnmu: int = 0

    @property
    def kind(self) -> str:
        return "security" if self.target.security else "update"

    @property
    def reason(self) -> str:
        """e.g. ``security update zlib 1:1.2.13.dfsg-1 → 1:1.2.13.dfsg-1+deb12u1``."""
        what = "security update" if self.target.security else "update"
        if compare(self.current, self.target.version) == 0:  # the same source, a later binNMU of it
            what = "binNMU"
        current = binary_version(self.current, self.current_binnmu)
        return f"{what} {self.name} {current} → {binary_version(self.target.version, self.target.binnmu)}"


def find_moves(recipes: Mapping[str, RecipeEntry], targets: Mapping[str, Target]) -> list[Move]:
    """The Debian recipes older than the archive's version, security updates first, then by name. A recipe of the
    archive's source version is behind when the archive's binaries of it are a later binNMU than the recipe's."""
    moves = [
        Move(r.name, r.version, targets[r.name], r.binnmu)
        for r in recipes.values()
        if r.kind == "debian" and r.name in targets and behind(r.version, r.binnmu, targets[r.name])
    ]
    return sorted(moves, key=lambda m: (not m.target.security, m.name))


def behind(version: str, binnmu: int, target: Target) -> bool:
    """Whether a recipe of source ``version`` built as binNMU ``binnmu`` is older than the archive's binaries."""
    return compare(binary_version(version, binnmu), binary_version(target.version, target.binnmu)) < 0


def changelog_between(text: str, old: str, new: str) -> list[dict[str, Any]]:
    """The ``debian/changelog`` entries newer than ``old`` up to and including ``new``, newest first."""
    entries = []
    for block in changelog.Changelog(text, strict=False):
        version = str(block.version)
        if compare(version, old) > 0 and compare(version, new) <= 0:
            entries.append(
                {
                    "version": version,
                    "distributions": block.distributions,
                    "urgency": block.urgency,
                    "author": block.author,
                    "date": block.date,
                    "changes": [line for line in block.changes() if line.strip()],
                }
            )
    return entries


@dataclass
class Outcome:
    """What ``recipes update`` did with one Debian recipe."""

    name: str
    path: Path
    status: Status
    current: str  # the recipe's version before the update
    archive: str | None = None  # the archive's version (None: the archive has no such source)
    suite: str = ""
    security: bool = False
    changelog: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None
    current_binnmu: int = 0  # the recipe's build.binnmu before the update
    archive_binnmu: int = 0  # the archive's binNMU of ``archive``

    @property
    def behind(self) -> bool:
        return self.archive is not None and behind(self.current, self.current_binnmu, self._target())

    def _target(self) -> Target:
        return Target(self.archive or "", self.suite, self.security, self.archive_binnmu)

    @property
    def kind(self) -> str:
        return "security" if self.security else "update"

    @property
    def reason(self) -> str:
        if self.archive is None:
            return ""
        return Move(self.name, self.current, self._target(), self.current_binnmu).reason

    def to_json(self) -> dict[str, Any]:
        return {
            "recipe": self.name,
            "path": str(self.path),
            "status": self.status.value,
            "from": self.current,
            "to": self.archive,
            "from_binnmu": self.current_binnmu,
            "to_binnmu": self.archive_binnmu,
            "archive": self.suite,
            "kind": self.kind if self.behind else None,
            "reason": self.reason if self.behind else None,
            "changelog": self.changelog,
            "error": self.error,
        }


@dataclass(frozen=True)
class Reimport:
    """What the import did with one recipe: the version it took, and the error when it took none."""

    name: str
    version: str
    error: FarmError | None = None
    unavailable: bool = False  # the error says the source cannot be had at that version (not a broken import)
    changelog: str | None = None  # the newly imported source's debian/changelog


Importer = Callable[[Sequence[str]], list[Reimport]]
"""Re-import the named sources at the archive's version, writing their recipes; one :class:`Reimport` each. May
raise :class:`FarmError` for the whole batch."""


def archive_importer(
    recipes_dir: Path,
    *,
    env_name: str,
    env_digest: str,
    store: Store,
    cache_dir: Path,
    lists_dir: Path | None = None,
    arch: str | None = None,
) -> Importer:
    """An :data:`Importer` through ``recipes import``'s code (:func:`farm.archive.import_.import_recipes`)."""

    def _import(names: Sequence[str]) -> list[Reimport]:
        report = import_recipes(
            list(names),
            recipes_dir,
            env_name=env_name,
            env_digest=env_digest,
            store=store,
            cache_dir=cache_dir,
            lists_dir=lists_dir,
            arch=arch,
        )
        done = [
            Reimport(i.name, i.version, changelog=source_changelog(cache_dir, i.name, i.version, i.commit))
            for i in report.imported
        ]
        failed = [Reimport(f.name, f.version, f.error, f.status == "unavailable") for f in report.failed]
        return done + failed

    return _import


def source_changelog(cache_dir: Path, name: str, version: str, commit: str) -> str | None:
    """``debian/changelog`` of an imported source (its git import in the source cache), or None."""
    result = run(
        ["git", "--git-dir", str(repo_path(cache_dir, name, version)), "show", f"{commit}:debian/changelog"],
        check=False,
    )
    return result.text if result.returncode == 0 else None


def update_recipes(
    recipes_dir: Path,
    importer: Importer,
    *,
    lists_dir: Path | None = None,
    arch: str | None = None,
    targets: Mapping[str, Target] | None = None,
) -> list[Outcome]:
    """Compare every Debian recipe of ``recipes_dir`` with the archive and re-import what moved: the security
    updates in a first batch, the others in a second, so that nothing delays a security fix. One
    :class:`Outcome` per Debian recipe: the moves first (security first, then by name), then the others by name."""
    recipes = read_recipes(recipes_dir)
    debian = {n: r for n, r in recipes.items() if r.kind == "debian"}
    if targets is None:  # apt's lists: by default the ones the apt this process runs uses (APT_CONFIG included)
        targets = archive_targets(debian, lists_dir or configured_lists(), arch) if debian else {}
    moves = find_moves(debian, targets)
    outcomes = {m.name: _moved(m, debian[m.name].path) for m in moves}
    for batch in ([m for m in moves if m.target.security], [m for m in moves if not m.target.security]):
        if batch:
            _reimport(batch, importer, outcomes)
    moved = [outcomes[m.name] for m in moves]
    for name in sorted(set(debian) - set(outcomes)):
        recipe, target = debian[name], targets.get(name)
        out = Outcome(name, recipe.path, Status.UP_TO_DATE, recipe.version, *_target_fields(target))
        out.current_binnmu, out.archive_binnmu = recipe.binnmu, target.binnmu if target else 0
        if target is None:
            out.status = Status.FAILED
            out.error = FarmError(
                E.DSC_UNKNOWN,
                f"the archive has no source package {name}",
                file=str(recipe.path),
                hint=f"check 'apt-cache showsrc {name}' (after 'apt-get update')",
            ).to_json()
        moved.append(out)
    return moved


def _reimport(batch: Sequence[Move], importer: Importer, outcomes: dict[str, Outcome]) -> None:
    try:
        results = {r.name: r for r in importer([m.name for m in batch])}
    except FarmError as exc:
        results = {m.name: Reimport(m.name, m.target.version, exc) for m in batch}
    for move in batch:
        out = outcomes[move.name]
        result = results.get(move.name)
        if result is None:
            result = Reimport(move.name, move.target.version, FarmError(E.INTERNAL, "the import did not report it"))
        if result.error is not None:
            out.status = Status.UNAVAILABLE if result.unavailable else Status.FAILED
            out.archive = result.version
            out.error = result.error.to_json()
            log.warning("%s: %s at %s: %s", move.name, out.status.value, result.version, result.error.message)
            continue
        out.archive = result.version  # what was imported (the archive's version, by the same rule)
        out.changelog = changelog_between(result.changelog, move.current, result.version) if result.changelog else []


def _moved(move: Move, path: Path) -> Outcome:
    out = Outcome(move.name, path, Status.UPDATED, move.current, *_target_fields(move.target))
    out.current_binnmu, out.archive_binnmu = move.current_binnmu, move.target.binnmu
    return out


def _target_fields(target: Target | None) -> tuple[str | None, str, bool]:
    return (None, "", False) if target is None else (target.version, target.archive, target.security)


def rebuild_set(recipes: Mapping[str, RecipeEntry], changed: Sequence[str]) -> dict[str, list[str]]:
    """What a rebuild of ``changed`` must build: each changed recipe and every recipe of the set that depends on it,
    directly or not (the reverse closure), each mapped to the changed recipes it rebuilds for."""
    deps = {n: [d for d in r.depends if d in recipes] for n, r in recipes.items()}
    found: dict[str, list[str]] = {}
    for name in changed:
        if name not in recipes:
            continue
        for member in {name} | graph.transitive_dependents(deps, name):
            found.setdefault(member, []).append(name)
    return {n: sorted(v) for n, v in sorted(found.items())}


def build_reasons(outcomes: Sequence[Outcome], recipes: Mapping[str, RecipeEntry]) -> dict[str, str]:
    """Why each build of the rebuild set is queued: the changed recipe's own reason, or for a dependent the
    reasons of the changed recipes it depends on (``depends on zlib: security update zlib 1 → 2``)."""
    changed = {o.name: o for o in outcomes if o.status is Status.UPDATED}
    reasons = {}
    for name, because in rebuild_set(recipes, sorted(changed, key=lambda n: order_key(changed[n]))).items():
        if name in changed:
            reasons[name] = changed[name].reason
        else:
            reasons[name] = "; ".join(f"depends on {c}: {changed[c].reason}" for c in because)
    return reasons


def order_key(outcome: Outcome) -> tuple[bool, str]:
    """Security updates first, then by name."""
    return (not outcome.security, outcome.name)


def run_reason(outcomes: Sequence[Outcome]) -> str:
    """The reason of a run that rebuilds the updated recipes: their reasons, security first."""
    return "; ".join(o.reason for o in sorted(outcomes, key=order_key) if o.status is Status.UPDATED)


__all__ = [
    "Importer",
    "Move",
    "Outcome",
    "RecipeEntry",
    "Reimport",
    "Status",
    "Target",
    "archive_importer",
    "archive_targets",
    "build_reasons",
    "changelog_between",
    "find_moves",
    "read_recipes",
    "rebuild_set",
    "run_reason",
    "source_changelog",
    "update_recipes",
]

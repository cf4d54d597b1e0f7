"""No downgrade at admission: a farm build older than the archive's version of the same package stays out.

The archive a machine installs from is every suite apt knows (bookworm, bookworm-updates, bookworm-security); apt
would install the highest version any of them offers (:meth:`farm.archive.versions.ArchiveVersions.candidate`). A
farm-built package whose version is older *code* than that candidate (Debian version ordering, a binNMU ``+bN`` of
the same source set aside) would take a fix out of the image, typically a security update. Such a build is refused,
every one of them reported at once; only with ``--allow-archive-fallback`` is the archive's binary taken instead,
and the SBOM, the in-image manifest and the image lock carry the reason for that package.

A package the archive does not have (or has only for another architecture) is admitted: there is nothing to fall
below.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from farm.archive.versions import ArchiveVersions, is_older_code
from farm.errors import E, FarmError
from farm.image.packages import Package
from farm.log import step
from farm.sources.apt import configured_lists

log = logging.getLogger(__name__)
ALLOW_FLAG = "--allow-archive-fallback"


@dataclass(frozen=True, order=True)
class Downgrade:
    """A farm-built package older than what the archive offers for it."""

    package: str
    arch: str
    farm_version: str
    archive_version: str
    archive: str = ""  # the suite that offers it, e.g. 'Debian bookworm-security'
    recipe: str = ""

    @property
    def reason(self) -> str:
        """Why the archive's binary is in the image instead of the farm's (the SBOM and the lock carry it)."""
        return f"farm build {self.farm_version} older than archive {self.archive_version}"

    def describe(self) -> str:
        made = f" (recipe {self.recipe})" if self.recipe else ""
        suite = f" ({self.archive})" if self.archive else ""
        return (
            f"{self.package}: the farm build{made} is {self.farm_version}, older than the archive's "
            f"{self.archive_version}{suite}"
        )


@dataclass(frozen=True)
class FarmBuild:
    """What admission needs to know about one farm-built package."""

    package: str
    version: str
    arch: str
    recipe: str = ""


def downgrades(builds: Iterable[FarmBuild], archive: ArchiveVersions) -> list[Downgrade]:
    """Every farm build that is older code than the archive's candidate for its package and architecture, sorted."""
    found = []
    for b in builds:
        candidate = archive.candidate(b.package, b.arch)
        if candidate is not None and is_older_code(b.version, candidate.version):
            found.append(Downgrade(b.package, b.arch, b.version, candidate.version, candidate.archive, b.recipe))
    return sorted(found)


def check(
    builds: Sequence[FarmBuild], *, allow_fallback: bool, lists_dir: Path | None = None, locked_in: str = ""
) -> dict[str, Downgrade]:
    """The downgrades among ``builds`` (by package name) when ``allow_fallback``; otherwise refuse them all at once.

    ``locked_in`` names an image lock whose farm entries are being checked: a lock cannot fall back by itself (its
    archive pins do not hold the newer version), so there the fix is to lock again."""
    if not builds:
        return {}
    lists = lists_dir if lists_dir is not None else configured_lists()
    found = downgrades(builds, ArchiveVersions.load({b.package for b in builds}, lists))
    if found and (not allow_fallback or locked_in):
        raise refusal(found, locked_in=locked_in)
    return {d.package: d for d in found}


def admit_farm(
    farm: Sequence[Package], *, allow_fallback: bool, lists_dir: Path | None = None, locked_in: str = ""
) -> dict[str, Downgrade]:
    """:func:`check` for the image's verified farm packages, logged as a step; the fallbacks by package name."""
    builds = [FarmBuild(p.name, p.version, p.arch, p.recipe) for p in farm]
    with step("checking farm builds against the archive's versions", log, count=len(builds)):
        found = check(builds, allow_fallback=allow_fallback, lists_dir=lists_dir, locked_in=locked_in)
    for d in found.values():
        log.warning("%s: the archive's %s goes in instead (%s)", d.package, d.archive_version, d.reason)
    return found


def refusal(found: Sequence[Downgrade], *, locked_in: str = "") -> FarmError:
    """One error naming every downgraded package with both versions, and the two ways out."""
    names = ", ".join(sorted({d.recipe or d.package for d in found}))
    lines = "\n".join(f"  {d.describe()}" for d in found)
    if locked_in:
        hint = (
            f"the archive moved on since the lock was made: rebuild {names} from the newer source ('mangos-farm "
            f"recipes update --queue') and lock again, or lock again with 'mangos-farm image lock {ALLOW_FLAG}' "
            "to take the archive's binaries"
        )
    else:
        hint = (
            f"rebuild {names} from the newer source ('mangos-farm recipes update --queue'), or pass {ALLOW_FLAG} "
            "to take the archive's binary for each of these instead (the SBOM and the lock say so)"
        )
    return FarmError(
        E.IMAGE_DOWNGRADE,
        f"{len(found)} farm-built package(s) older than the archive's version would downgrade the image:\n{lines}",
        file=locked_in or None,
        hint=hint,
    )


__all__ = ["ALLOW_FLAG", "Downgrade", "FarmBuild", "admit_farm", "check", "downgrades", "refusal"]

"""Which version of a package the archive offers, across every suite apt knows, and whether a build is older.

The archive a machine installs from is several suites at once (bookworm, bookworm-updates, bookworm-security): apt
installs the highest version any of them offers. A farm build is a *downgrade* when its version is older than that.
Versions compare by Debian's rules (``dpkg --compare-versions``), on source versions: a binNMU (``+b1``) rebuilds
the same source, so ``1.0-1+b1`` in the archive is not newer code than a farm build of ``1.0-1``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from debian import deb822
from debian.debian_support import Version

from farm.sources.apt import APT_LISTS, archive_label, packages_lists, read_list

_BINNMU_RE = re.compile(r"\+b[0-9]+$")
_SOURCE_FIELD_RE = re.compile(r"^(?P<name>\S+)(?:\s+\((?P<version>[^)]+)\))?$")


def without_binnmu(version: str) -> str:
    """The source version a binary version was built from when the binary carries a binNMU suffix (``+bN``)."""
    return _BINNMU_RE.sub("", version)


def binnmu_number(version: str, source_version: str) -> int:
    """N when binary ``version`` is binNMU N of ``source_version`` (``1.0-1+b2`` of ``1.0-1``: 2), else 0."""
    m = _BINNMU_RE.search(version)
    return int(m.group(0)[2:]) if m and version[: m.start()] == source_version else 0


def compare(a: str, b: str) -> int:
    """Debian version ordering: negative, zero or positive as ``a`` is older than, equal to or newer than ``b``."""
    va, vb = Version(a), Version(b)
    return -1 if va < vb else (1 if va > vb else 0)


def is_older_code(ours: str, theirs: str) -> bool:
    """True when ``ours`` is older code than ``theirs``: source versions compared, binNMU suffixes set aside."""
    return compare(without_binnmu(ours), without_binnmu(theirs)) < 0


BACKPORTS = "-backports_"  # in the name of a backports suite's apt list


@dataclass(frozen=True)
class BinaryVersion:
    """One binary package version in one suite's Packages index, with the source version that produced it."""

    package: str
    version: str
    arch: str
    source: str
    source_version: str
    archive: str  # 'Origin Codename' of the index, e.g. 'Debian bookworm-security'

    @property
    def security(self) -> bool:
        return "security" in self.archive


def parse_packages(text: str, archive: str, names: set[str] | None = None) -> list[BinaryVersion]:
    """The entries of one Packages index (only ``names`` when given), each with its source and source version."""
    found = []
    for para_text in text.split("\n\n"):
        first, _, _ = para_text.lstrip("\n").partition("\n")
        if not first.startswith("Package: ") or (names is not None and first[9:].strip() not in names):
            continue
        para = deb822.Packages(para_text)
        package, version = str(para["Package"]), str(para["Version"])
        source, source_version = package, without_binnmu(version)
        m = _SOURCE_FIELD_RE.match(str(para.get("Source", "")).strip())
        if m and para.get("Source"):
            source = m["name"]
            source_version = m["version"] or source_version
        arch = str(para.get("Architecture", ""))
        found.append(BinaryVersion(package, version, arch, source, source_version, archive))
    return found


@dataclass
class ArchiveVersions:
    """Every version of the wanted binary packages in every Packages index apt holds, by package name."""

    by_package: dict[str, list[BinaryVersion]] = field(default_factory=dict)

    @classmethod
    def load(cls, names: Iterable[str] | None = None, lists_dir: Path = APT_LISTS) -> ArchiveVersions:
        wanted = set(names) if names is not None else None
        index = cls()
        for path in packages_lists(lists_dir):
            if BACKPORTS in path.name:  # NotAutomatic: apt installs from it only by name, never as the candidate
                continue
            for entry in parse_packages(read_list(path), archive_label(path), wanted):
                index.by_package.setdefault(entry.package, []).append(entry)
        return index

    def candidate(self, package: str, arch: str | None = None) -> BinaryVersion | None:
        """What apt would install: the highest version of ``package`` any suite offers (for ``arch`` or ``all``)."""
        entries = [e for e in self.by_package.get(package, []) if arch is None or e.arch in (arch, "all")]
        return max(entries, key=lambda e: Version(e.version)) if entries else None

    def binnmu(self, source: str, version: str, binaries: Iterable[str], arch: str | None = None) -> int:
        """The binNMU number of the archive's binaries of ``source`` at source ``version`` (0: none). Only the
        architecture's own binaries are rebuilt by a binNMU (``all`` ones keep the source version): the highest N
        among the binaries of that source version any suite offers."""
        return max(
            (
                binnmu_number(e.version, version)
                for b in binaries
                for e in self.by_package.get(b, [])
                if e.source == source and e.source_version == version and (arch is None or e.arch == arch)
            ),
            default=0,
        )

    def source_candidate(self, source: str, binaries: Iterable[str], arch: str | None = None) -> BinaryVersion | None:
        """The newest candidate among ``source``'s binaries: the source version an image would install code from."""
        found = [c for b in binaries if (c := self.candidate(b, arch)) is not None and c.source == source]
        return max(found, key=lambda e: Version(e.source_version)) if found else None


@dataclass(frozen=True)
class SourceChoice:
    """The source version an import takes, and the archive's own choice next to it.

    ``candidate`` is the source version of what the image would install (the newest candidate among the source's
    binaries for the build architecture); without any such binary, the newest version the Sources indexes list;
    ``archive`` names the suite the candidate comes from ('' when it came from Sources alone)."""

    name: str
    version: str
    candidate: str
    archive: str = ""
    explicit: bool = False
    binnmu: int = 0  # the binNMU number of the archive's binaries of ``version`` (0: none)

    @property
    def older_than_candidate(self) -> bool:
        return bool(self.candidate) and is_older_code(self.version, self.candidate)


def choose_source(
    name: str,
    requested: str | None,
    indexed: Iterable[str],
    binaries: Iterable[str],
    *,
    archive: ArchiveVersions,
    arch: str | None = None,
) -> SourceChoice:
    """Which version of source package ``name`` to import: ``requested`` when given, else the candidate.

    ``indexed``: the versions the Sources indexes list (not empty). The candidate need not be among them (a suite
    installed from without a deb-src entry): the caller then has nothing to import at that version, and must say
    so rather than take an older one."""
    versions = sorted(set(indexed), key=Version)
    binaries = list(binaries)
    found = archive.source_candidate(name, binaries, arch)
    if found is not None:
        candidate, label = found.source_version, found.archive
    else:
        candidate, label = versions[-1], ""
    if requested is not None:
        return SourceChoice(
            name, requested, candidate, label, explicit=True, binnmu=archive.binnmu(name, requested, binaries, arch)
        )
    return SourceChoice(name, candidate, candidate, label, binnmu=archive.binnmu(name, candidate, binaries, arch))


__all__ = [
    "ArchiveVersions",
    "BinaryVersion",
    "SourceChoice",
    "binnmu_number",
    "choose_source",
    "compare",
    "is_older_code",
    "parse_packages",
    "without_binnmu",
]

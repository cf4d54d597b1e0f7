"""The archive's indexes as apt holds them: Packages (the sha256 of every binary) and Sources (every source's
binaries and build-dependencies). apt verified each against its signed InRelease when it updated its lists.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from debian import deb822
from debian.debian_support import Version

from farm.archive.pin import Pin
from farm.errors import E, FarmError
from farm.sources.apt import APT_LISTS, packages_lists, read_list, source_lists
from farm.store import Store

BUILD_DEP_FIELDS = ("Build-Depends", "Build-Depends-Arch", "Build-Depends-Indep")


# -- Packages -------------------------------------------------------------------------------------------------------
def packages_entries(text: str, wanted: set[tuple[str, str]]) -> dict[tuple[str, str, str], str]:
    """sha256 of each (package, version, arch) in one Packages index (its text) whose (package, version) is wanted."""
    names = {n for n, _ in wanted}
    found: dict[tuple[str, str, str], str] = {}
    for para in text.split("\n\n"):
        first, _, _ = para.lstrip("\n").partition("\n")
        if not first.startswith("Package: ") or first[9:].strip() not in names:
            continue
        entry = deb822.Packages(para)
        key = (str(entry.get("Package")), str(entry.get("Version")))
        if key in wanted and entry.get("SHA256"):
            found[(key[0], key[1], str(entry.get("Architecture")))] = str(entry["SHA256"])
    return found


def archive_checksums(pins: Sequence[Pin], lists_dir: Path = APT_LISTS) -> dict[tuple[str, str, str], set[str]]:
    """Every sha256 the archive's Packages indexes (verified by apt against InRelease) give for these pins."""
    wanted = {(p.package, p.version) for p in pins}
    sums: dict[tuple[str, str, str], set[str]] = {}
    for path in packages_lists(lists_dir):
        for key, sha in packages_entries(read_list(path), wanted).items():
            sums.setdefault(key, set()).add(sha)
    return sums


def not_indexed(pin: Pin) -> FarmError:
    return FarmError(
        E.ARCHIVE_UNKNOWN,
        f"{pin.spec} ({pin.arch}) is in no Packages index apt holds",
        hint="run 'apt-get update' and check 'apt-cache policy " + pin.package + "'",
    )


def essential_packages(lists_dir: Path = APT_LISTS) -> list[str]:
    """Every ``Essential: yes`` package of the archive's Packages indexes (what a Debian system cannot lack)."""
    names: set[str] = set()
    for path in packages_lists(lists_dir):
        current = ""
        for line in read_list(path).splitlines():
            if line.startswith("Package: "):
                current = line[9:].strip()
            elif line.strip() == "Essential: yes" and current:
                names.add(current)
    if not names:
        raise FarmError(
            E.ARCHIVE_UNKNOWN,
            f"no Packages index with Essential packages in {lists_dir}",
            hint="run 'apt-get update' (make apt sets up the archive)",
        )
    return sorted(names)


def pin_from_index(pins: Sequence[Pin], store: Store) -> list[Pin]:
    """Give each resolved pin its sha256 from the archive's Packages index (apt verified it against InRelease).

    Nothing is downloaded. Should two indexes list different bytes for one version, the one already stored wins,
    else the lowest digest: the download check (:func:`farm.archive.download.ensure_pins`) holds the bytes to
    whichever is pinned."""
    sums = archive_checksums(pins)
    out = []
    for pin in pins:
        candidates = sorted(sums.get((pin.package, pin.version, pin.arch), set()))
        if not candidates:
            raise not_indexed(pin)
        known = [s for s in candidates if store.has_blob(s)]
        out.append(Pin(pin.package, pin.version, pin.arch, (known or candidates)[0]))
    return sorted(out)


# -- Sources --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SourceEntry:
    name: str
    version: str
    binaries: tuple[str, ...]
    build_depends: tuple[str, ...]  # every package name any Build-Depends* relation mentions (all alternatives)


def relation_names(para: Mapping[str, str]) -> tuple[str, ...]:
    names: set[str] = set()
    for key in BUILD_DEP_FIELDS:
        value = para.get(key)
        if not value:
            continue
        for alternatives in deb822.PkgRelation.parse_relations(value):
            for rel in alternatives:
                names.add(str(rel["name"]))
    return tuple(sorted(names))


_PACKAGE_RE = re.compile(r"^Package:[ \t]*(\S+)[ \t]*$", re.MULTILINE)


def parse_sources(text: str, names: set[str] | None = None) -> list[SourceEntry]:
    """The entries of one Sources index (only ``names`` when given). ``Package`` need not be the first field
    (dpkg-scansources writes ``Format`` first)."""
    entries = []
    for para_text in text.split("\n\n"):
        m = _PACKAGE_RE.search(para_text)
        if m is None or (names is not None and m[1] not in names):
            continue
        para = deb822.Sources(para_text)
        binaries = tuple(b.strip() for b in str(para.get("Binary", "")).replace("\n", " ").split(",") if b.strip())
        entries.append(SourceEntry(str(para["Package"]), str(para["Version"]), binaries, relation_names(para)))
    return entries


@dataclass
class SourcesIndex:
    """The source packages apt knows (every *_source_Sources* list), by name."""

    by_name: dict[str, list[SourceEntry]] = field(default_factory=dict)

    @classmethod
    def load(cls, names: set[str], lists_dir: Path = APT_LISTS) -> SourcesIndex:
        lists = source_lists(lists_dir)
        index = cls()
        for path in lists:
            for entry in parse_sources(read_list(path), names):
                index.by_name.setdefault(entry.name, []).append(entry)
        return index

    def pick(self, name: str, version: str | None) -> SourceEntry:
        entries = self.by_name.get(name, [])
        if version is not None:
            entries = [e for e in entries if e.version == version]
        if not entries:
            known = sorted({e.version for e in self.by_name.get(name, [])}, key=Version)
            what = f"{name}={version}" if version else name
            raise FarmError(
                E.DSC_UNKNOWN,
                f"the archive has no source package {what}" + (f" (it has {', '.join(known)})" if known else ""),
                hint=f"check the name and versions with 'apt-cache showsrc {name}' (after 'apt-get update'); "
                "source package names, not binary ones (zlib, not zlib1g)",
            )
        return max(entries, key=lambda e: Version(e.version))

"""Build-dependencies from the archive, pinned: which .debs a Debian source needs on top of a build environment.

A debian recipe names its source (an imported .dsc) and the exact archive packages its build installs beyond the
base environment, each by name, version, architecture and sha256. The worker puts those .debs (fetched from the farm
store by sha256) and the dependency recipes' .debs into a read-only local repository and runs ``apt-get build-dep``
offline against it.

1. **Resolve**: the host's apt (same archive) in simulate mode, with the environment's own dpkg status file in place
   of the host's: ``apt-get -s build-dep SOURCE_DIR`` lists the packages it would install (``Inst`` lines). Binary
   packages that other recipes of the set build are left out of the pins (the local repository carries the
   farm-built ones instead); their own dependencies stay, since they were resolved with them included.
2. **Download and verify**: ``apt-get download NAME=VERSION``; each file's sha256 is checked against the archive's
   Packages index entry (which apt checked against the signed InRelease when it updated its lists), then stored.
3. **Import** (``mangos-farm recipes import``): the source version from the Sources index, the .dsc imported with
   :func:`farm.sources.dsc.import_dsc`, recipe build-depends found through the Sources ``Binary`` fields, the closure
   resolved and pinned, and ``DIR/NAME.toml`` written.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import tempfile
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from debian import deb822
from debian.debian_support import Version

from farm.errors import E, FarmError
from farm.fsutil import atomic_write
from farm.log import step
from farm.run import CommandFailed, run
from farm.sources.dsc import APT_LISTS, apt_cat_argv, check_spec, import_dsc, sha256_file, source_lists
from farm.store import Store

log = logging.getLogger(__name__)

BUILD_DEP_FIELDS = ("Build-Depends", "Build-Depends-Arch", "Build-Depends-Indep")
DEFAULT_OUTPUTS = ("*.deb", "*.buildinfo")
APT_TIMEOUT = 600

# "Inst NAME [OLD] (VERSION ARCHIVE[, ARCHIVE...] [ARCH])" as apt-get -s prints it.
_INST_RE = re.compile(r"^Inst (?P<name>\S+)(?: \[[^\]]*\])? \((?P<version>\S+) .*\[(?P<arch>[^\]\s]+)\]\)")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, order=True)
class Pin:
    """One archive package a build installs: exact version and architecture; sha256 once downloaded."""

    package: str
    version: str
    arch: str
    sha256: str = ""

    @property
    def spec(self) -> str:
        return f"{self.package}={self.version}"

    def to_toml(self) -> dict[str, str]:
        return {"package": self.package, "version": self.version, "arch": self.arch, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Pin:
        try:
            pin = cls(str(data["package"]), str(data["version"]), str(data["arch"]), str(data.get("sha256", "")))
        except KeyError as exc:
            raise FarmError(
                E.RECIPE_MISSING,
                f"an archive pin has no {exc.args[0]!r}",
                field="build.archive",
                hint='each pin is { package = "...", version = "...", arch = "...", sha256 = "<64 hex>" }',
            ) from None
        if pin.sha256 and not _SHA_RE.match(pin.sha256):
            raise FarmError(
                E.RECIPE_VALUE,
                f"the pin {pin.spec} has a sha256 that is not 64 lowercase hex digits",
                field="build.archive",
                hint="regenerate the recipe with 'mangos-farm recipes import'",
            )
        return pin


# ---------------------------------------------------------------------------------------------------------------
# Resolving the closure
# ---------------------------------------------------------------------------------------------------------------


def build_dep_argv(status: Path, source_dir: Path) -> list[str]:
    """apt in simulate mode against the environment's dpkg status, no lock, no recommends."""
    return [
        "apt-get",
        "-s",
        "-q",
        "--no-install-recommends",
        "-o",
        f"Dir::State::status={status}",
        "-o",
        "Debug::NoLocking=1",
        "-o",
        "APT::Get::Show-User-Simulation-Note=false",
        "build-dep",
        str(source_dir),
    ]


def parse_simulation(text: str) -> list[Pin]:
    """The ``Inst`` lines of ``apt-get -s`` output, as pins without sha256, sorted by package."""
    pins = {}
    for line in text.splitlines():
        m = _INST_RE.match(line)
        if m:
            pins[(m["name"], m["arch"])] = Pin(m["name"], m["version"], m["arch"])
    return sorted(pins.values())


def exclude_pins(pins: Iterable[Pin], exclude: Iterable[str]) -> list[Pin]:
    """Drop the packages that the farm builds itself (their dependencies, resolved with them, stay)."""
    names = set(exclude)
    return sorted(p for p in pins if p.package not in names)


def resolve_closure(env_status: Path, source_dir: Path, exclude: set[str]) -> list[Pin]:
    """What apt would install to satisfy ``source_dir``'s Build-Depends on top of the environment, minus ``exclude``."""
    source_dir = source_dir.resolve()
    with step("resolve build-depends", log, source=source_dir.name):
        try:
            result = run(build_dep_argv(env_status, source_dir), env=os.environ | {"LC_ALL": "C"}, timeout=APT_TIMEOUT)
        except CommandFailed as exc:
            detail = exc.result.stdout.decode("utf-8", "replace") + exc.result.stderr.decode("utf-8", "replace")
            lines = [ln for ln in detail.splitlines() if ln.strip()][-12:]
            raise FarmError(
                E.ARCHIVE_UNSATISFIABLE,
                f"the Build-Depends of {source_dir.name} cannot be satisfied from the archive:\n" + "\n".join(lines),
                hint="run 'apt-get update'; if it persists, the package needs a build-dependency the archive lacks",
            ) from None
    return exclude_pins(parse_simulation(result.text), exclude)


def env_status_file(store: Store, digest: str, dest_dir: Path) -> Path:
    """The environment's /var/lib/dpkg/status, from its tarball in the store (verified on the way out)."""
    tar = dest_dir / "env.tar"
    store.fetch_blob(digest, tar)
    status = dest_dir / "status"
    with status.open("wb") as out:
        run(["tar", "-xOf", str(tar), "./var/lib/dpkg/status"], stdout=out)
    tar.unlink()
    return status


# ---------------------------------------------------------------------------------------------------------------
# Downloading and verifying
# ---------------------------------------------------------------------------------------------------------------


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
    for path in sorted(Path(p) for p in glob.glob(str(lists_dir / "*_Packages*"))):
        for key, sha in packages_entries(run(apt_cat_argv(path)).text, wanted).items():
            sums.setdefault(key, set()).add(sha)
    return sums


def deb_name(pin: Pin) -> str:
    """The file name 'apt-get download' writes (':' of an epoch escaped as %3a)."""
    return f"{pin.package}_{pin.version.replace(':', '%3a')}_{pin.arch}.deb"


def _download(pins: Sequence[Pin], dest: Path) -> dict[Pin, Path]:
    if not pins:
        return {}
    with step("apt-get download", log, packages=len(pins)):
        try:
            run(
                ["apt-get", "download", "-q", *(p.spec for p in pins)],
                cwd=dest,
                env=os.environ | {"LC_ALL": "C"},
                timeout=APT_TIMEOUT,
            )
        except CommandFailed as exc:
            raise FarmError(
                E.ARCHIVE_UNKNOWN,
                "cannot download the pinned build-dependencies: "
                + exc.result.stderr.decode("utf-8", "replace").strip()[-2000:],
                hint="the archive no longer has a pinned version (a point release replaced it) or apt's lists are "
                "stale: run 'apt-get update', then 'mangos-farm recipes import' again",
            ) from None
    files = {}
    for pin in pins:
        path = dest / deb_name(pin)
        if not path.is_file():
            raise FarmError(
                E.ARCHIVE_UNKNOWN,
                f"apt-get download did not write {path.name} for {pin.spec} ({pin.arch})",
                hint="check 'apt-cache policy " + pin.package + "'",
            )
        files[pin] = path
    return files


def _checksum_error(pin: Pin, expected: str, actual: str, what: str) -> FarmError:
    return FarmError(
        E.ARCHIVE_CHECKSUM,
        f"sha256 mismatch for {pin.spec} ({pin.arch}): expected {expected} ({what}), got {actual}",
        hint="the download or the pin is wrong: if the recipe was edited by hand, regenerate it with "
        "'mangos-farm recipes import'; otherwise the mirror serves bad data ('apt-get update' and retry)",
    )


def download_pins(pins: Sequence[Pin], store: Store, lists_dir: Path = APT_LISTS) -> list[Pin]:
    """Download each pin, check it against the archive's Packages index, store it; the pins with their sha256."""
    sums = archive_checksums(pins, lists_dir)
    out = []
    with tempfile.TemporaryDirectory(prefix="mangos-debs-") as tmp:
        for pin, path in _download(pins, Path(tmp)).items():
            actual = sha256_file(path)
            allowed = sums.get((pin.package, pin.version, pin.arch), set())
            if not allowed:
                raise FarmError(
                    E.ARCHIVE_UNKNOWN,
                    f"{pin.spec} ({pin.arch}) is in no Packages index apt holds",
                    hint="run 'apt-get update' and check 'apt-cache policy " + pin.package + "'",
                )
            if actual not in allowed:
                raise _checksum_error(pin, " or ".join(sorted(allowed)), actual, "the archive's Packages index")
            artifact = store.put_file(path)
            out.append(Pin(pin.package, pin.version, pin.arch, artifact.digest))
    return sorted(out)


def ensure_pins(pins: Sequence[Pin], store: Store, pinned_in: str = "the recipe") -> list[Pin]:
    """Make sure every pinned .deb is in the store: download the missing ones and check they hash as pinned.

    Returns the pins that had to be downloaded.
    """
    missing = [p for p in pins if not (p.sha256 and store.has_blob(p.sha256))]
    if not missing:
        return []
    with tempfile.TemporaryDirectory(prefix="mangos-debs-") as tmp:
        files = _download(missing, Path(tmp))
        for pin, path in files.items():
            actual = sha256_file(path)
            if actual != pin.sha256:
                raise _checksum_error(pin, pin.sha256 or "(no sha256 pinned)", actual, f"pinned in {pinned_in}")
        for path in files.values():
            store.put_file(path)
    return missing


# ---------------------------------------------------------------------------------------------------------------
# The Sources index
# ---------------------------------------------------------------------------------------------------------------


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


def parse_sources(text: str, names: set[str] | None = None) -> list[SourceEntry]:
    entries = []
    for para_text in text.split("\n\n"):
        first, _, _ = para_text.lstrip("\n").partition("\n")
        if not first.startswith("Package: ") or (names is not None and first[9:].strip() not in names):
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
            for entry in parse_sources(run(apt_cat_argv(path)).text, names):
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


# ---------------------------------------------------------------------------------------------------------------
# Recipes
# ---------------------------------------------------------------------------------------------------------------


def _toml_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def recipe_toml(
    *,
    name: str,
    version: str,
    description: str,
    build_depends: Sequence[str],
    outputs: Sequence[str],
    dsc: str,
    commit: str,
    environment: str,
    archive: Sequence[Pin],
) -> str:
    def strings(values: Sequence[str]) -> str:
        return "[" + ", ".join(_toml_str(v) for v in values) + "]"

    lines = [
        "# Generated by `mangos-farm recipes import`: the source is imported from the archive, the archive",
        "# build-dependencies are pinned by version and sha256. Regenerate rather than edit by hand.",
        f"name = {_toml_str(name)}",
        f"version = {_toml_str(version)}",
        f"description = {_toml_str(description)}",
        f"build-depends = {strings(build_depends)}",
        f"outputs = {strings(outputs)}",
        "",
        "[source]",
        f"dsc = {_toml_str(dsc)}",
        f"commit = {_toml_str(commit)}",
        "",
        "[build]",
        'kind = "debian"',
        f"environment = {_toml_str(environment)}",
    ]
    if archive:
        lines.append("archive = [")
        for p in archive:
            fields = ", ".join(f"{k} = {_toml_str(v)}" for k, v in p.to_toml().items())
            lines.append(f"  {{ {fields} }},")
        lines.append("]")
    else:
        lines.append("archive = []")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Imported:
    name: str
    version: str
    commit: str
    path: Path
    build_depends: tuple[str, ...]
    pins: tuple[Pin, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "commit": self.commit,
            "path": str(self.path),
            "build_depends": list(self.build_depends),
            "archive": [p.to_toml() for p in self.pins],
        }


def recipe_dependencies(entry: SourceEntry, closure: Sequence[Pin], produced_by: Mapping[str, str]) -> list[str]:
    """The other recipes whose binaries this source names in its own Build-Depends* (any alternative).

    Only direct build-dependencies become recipe dependencies: a tool that is merely in the closure (debhelper
    needs ``file``) comes pinned from the archive, otherwise every package would depend on the recipes of its
    tool chain and the set would have cycles (file needs zlib, zlib's debhelper needs file).
    ``closure`` is accepted for the callers' symmetry and not used. ``produced_by``: binary -> recipe."""
    del closure
    needed = set(entry.build_depends)
    return sorted({produced_by[b] for b in needed if b in produced_by and produced_by[b] != entry.name})


def split_spec(spec: str) -> tuple[str, str | None]:
    name, sep, version = spec.partition("=")
    if sep:
        check_spec(name, version)
        return name, version
    check_spec(name, "0")
    return name, None


def existing_debian_recipes(recipes_dir: Path) -> dict[str, str]:
    """name -> version of the debian recipes already in the directory (read as plain TOML)."""
    found = {}
    for path in sorted(recipes_dir.glob("*.toml")) if recipes_dir.is_dir() else []:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError):
            continue
        build = data.get("build")
        if isinstance(build, dict) and build.get("kind") == "debian" and isinstance(data.get("name"), str):
            found[data["name"]] = str(data.get("version", ""))
    return found


def import_recipes(
    specs: Sequence[str],
    recipes_dir: Path,
    *,
    env_name: str,
    env_digest: str,
    store: Store,
    cache_dir: Path,
    lists_dir: Path = APT_LISTS,
) -> list[Imported]:
    """Write ``recipes_dir/NAME.toml`` for each ``NAME`` or ``NAME=VERSION``; see the module docstring."""
    wanted = [split_spec(s) for s in specs]
    existing = {n: v for n, v in existing_debian_recipes(recipes_dir).items() if n not in {w[0] for w in wanted}}
    index = SourcesIndex.load({n for n, _ in wanted} | set(existing), lists_dir)
    chosen = {name: index.pick(name, version) for name, version in wanted}
    # Existing recipes whose version the index no longer has still count by name (their binaries unknown: skip).
    set_members: dict[str, SourceEntry] = dict(chosen)
    for name, version in existing.items():
        matches = [e for e in index.by_name.get(name, []) if e.version == version]
        if matches:
            set_members[name] = matches[0]
    produced_by = {b: n for n, e in set_members.items() for b in e.binaries}
    results = []
    with tempfile.TemporaryDirectory(prefix="mangos-import-") as tmp_str:
        tmp = Path(tmp_str)
        status = env_status_file(store, env_digest, tmp)
        for name, entry in chosen.items():
            with step("import recipe", log, package=f"{name}={entry.version}"):
                imported = import_dsc(name, entry.version, cache_dir, lists_dir=lists_dir)
                deps = recipe_dependencies(entry, (), produced_by)
                exclude = {b for b, n in produced_by.items() if n in deps}  # farm-built by its dependencies
                src = tmp / f"{name}-src"
                src.mkdir()
                with (tmp / f"{name}.tar").open("wb") as fh:
                    run(["git", "--git-dir", str(imported.repo), "archive", imported.commit], stdout=fh)
                run(["tar", "-xf", str(tmp / f"{name}.tar"), "-C", str(src)])
                full = resolve_closure(status, src, set())
                pins = exclude_pins(full, exclude)
                stored = download_pins(pins, store, lists_dir)
                text = recipe_toml(
                    name=name,
                    version=entry.version,
                    description=f"Debian source package {name} {entry.version} (binaries: {', '.join(entry.binaries)})",
                    build_depends=deps,
                    outputs=DEFAULT_OUTPUTS,
                    dsc=f"{name}={entry.version}",
                    commit=imported.commit,
                    environment=env_name,
                    archive=stored,
                )
                path = recipes_dir / f"{name}.toml"
                atomic_write(path, text.encode())
                results.append(Imported(name, entry.version, imported.commit, path, tuple(deps), tuple(stored)))
    return results


__all__ = [
    "Imported",
    "Pin",
    "SourcesIndex",
    "download_pins",
    "ensure_pins",
    "exclude_pins",
    "import_recipes",
    "parse_simulation",
    "recipe_dependencies",
    "recipe_toml",
    "resolve_closure",
]

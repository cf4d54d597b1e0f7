"""``mangos-farm recipes import``: Debian recipes written from the archive, their source and build closure pinned.

For each ``NAME[=VERSION]``:

- **Which version**: ``VERSION`` when given (the result says when it is older than the archive's candidate);
  otherwise the source version that produced the binary version the image would install: the highest version,
  across every suite apt installs from, of the binaries the Sources ``Binary`` field names, for the build
  architecture (:func:`farm.archive.versions.choose_source`); without any binary for it, the newest Sources version.
- **Never an older one in its place**: when that version is in no Sources index (E-SOURCE-UNINDEXED) or its files
  cannot be downloaded (E-SOURCE-UNAVAILABLE), the item is reported failed, its recipe file is neither written nor
  overwritten, and the other items go on. Unknown names and versions fail the whole batch before any download.
- **The recipe**: the .dsc imported with :func:`farm.sources.dsc.import_dsc`, recipe build-depends found through
  the Sources ``Binary`` fields, the closure resolved on top of the environment and pinned (binaries that recipes
  of the set build are left out, their own dependencies stay), each pin downloaded and stored, ``DIR/NAME.toml``
  written (:mod:`farm.archive.recipe_text`). When the archive's binaries of that source version are a binNMU
  (``libbz2-1.0 1.0.8-5+b1``, ``Source: bzip2 (1.0.8-5)``), the recipe says so (``build.binnmu``), so that the farm's
  .debs carry the same version and are never older than the archive's.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from debian.debian_support import Version

from farm.archive.download import download_pins
from farm.archive.index import SourceEntry, SourcesIndex
from farm.archive.pin import Pin
from farm.archive.recipe_text import binnmu_message, recipe_toml
from farm.archive.resolve import env_status_file, exclude_pins, resolve_closure
from farm.archive.trims import existing_trims
from farm.archive.versions import ArchiveVersions, SourceChoice, choose_source, is_older_code
from farm.errors import E, FarmError
from farm.fsutil import atomic_write
from farm.log import step
from farm.run import run
from farm.sources.apt import configured_lists
from farm.sources.dsc import ImportedSource, check_spec, import_dsc
from farm.store import Store

log = logging.getLogger(__name__)

DEFAULT_OUTPUTS = ("*.deb", "*.buildinfo")


@dataclass(frozen=True)
class Imported:
    """One recipe written: the source version taken, and the archive's candidate next to it."""

    name: str
    version: str
    commit: str
    path: Path
    build_depends: tuple[str, ...]
    pins: tuple[Pin, ...]
    candidate: str = ""
    explicit: bool = False
    bootstrap: tuple[tuple[str, str], ...] = ()
    binnmu: int = 0  # the archive's binaries of this version are binNMU N: the recipe builds them as such

    @property
    def older_than_candidate(self) -> bool:
        return bool(self.candidate) and is_older_code(self.version, self.candidate)

    def to_json(self) -> dict[str, Any]:
        return {
            "status": "imported",
            "name": self.name,
            "version": self.version,
            "candidate": self.candidate,
            "older_than_candidate": self.older_than_candidate,
            "commit": self.commit,
            "path": str(self.path),
            "build_depends": list(self.build_depends),
            "archive": [p.to_toml() for p in self.pins],
            "binnmu": self.binnmu,
        }


UNAVAILABLE = frozenset({E.SOURCE_UNAVAILABLE, E.SOURCE_UNINDEXED})


@dataclass(frozen=True)
class ImportFailure:
    """One item not imported (no recipe written or overwritten for it), with the error that stopped it."""

    name: str
    version: str
    error: FarmError

    @property
    def status(self) -> str:
        return "unavailable" if self.error.code in UNAVAILABLE else "failed"

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "name": self.name, "version": self.version, "error": self.error.to_json()}


@dataclass(frozen=True)
class ImportReport:
    """Every item of one ``recipes import``, in the order asked: imported, or failed with its error."""

    imported: tuple[Imported, ...]
    failed: tuple[ImportFailure, ...]

    @property
    def ok(self) -> bool:
        return not self.failed


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


def existing_patches(path: Path) -> list[str]:
    """The ``patches`` of the recipe at ``path`` (none when there is no readable recipe there)."""
    try:
        patches = tomllib.loads(path.read_text()).get("patches", [])
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []
    return [p for p in patches if isinstance(p, str)] if isinstance(patches, list) else []


def existing_bootstrap(path: Path) -> dict[str, str]:
    """recipe -> version of the bootstrap edges of the recipe at ``path`` (none without a readable recipe)."""
    try:
        edges = tomllib.loads(path.read_text()).get("bootstrap", [])
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}
    ok = isinstance(edges, list) and all(isinstance(e, dict) for e in edges)
    return {str(e.get("recipe")): str(e.get("version")) for e in edges if "recipe" in e} if ok else {}


def existing_binnmu(path: Path) -> int:
    """The ``build.binnmu`` of the recipe at ``path`` (0 without one, or without a readable recipe): a recipe at the
    archive's source version but another binNMU is not the archive's build, and is imported again."""
    try:
        build = tomllib.loads(path.read_text()).get("build", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return 0
    number = build.get("binnmu", 0) if isinstance(build, dict) else 0
    return number if isinstance(number, int) and not isinstance(number, bool) else 0


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


def choose_sources(
    wanted: Sequence[tuple[str, str | None]], index: SourcesIndex, lists_dir: Path, arch: str | None
) -> dict[str, SourceChoice]:
    """Each wanted source's version (see :func:`farm.archive.versions.choose_source`); unknown names and versions
    fail the whole batch here, before anything is downloaded."""
    for name, version in wanted:
        index.pick(name, version)
    binaries = {n: sorted({b for e in index.by_name[n] for b in e.binaries}) for n, _ in wanted}
    archive = ArchiveVersions.load({b for bs in binaries.values() for b in bs}, lists_dir)
    return {
        name: choose_source(
            name, version, [e.version for e in index.by_name[name]], binaries[name], archive=archive, arch=arch
        )
        for name, version in wanted
    }


def unindexed(choice: SourceChoice) -> FarmError:
    return FarmError(
        E.SOURCE_UNINDEXED,
        f"the archive installs {choice.name}'s binaries from source version {choice.version} ({choice.archive}), "
        "but no Sources index apt holds lists that version",
        hint="add a deb-src entry for every suite the machine installs from ('make apt' writes them) and run "
        f"'apt-get update'; an older version only by asking for it explicitly ({choice.name}=VERSION)",
    )


def import_recipes(
    specs: Sequence[str],
    recipes_dir: Path,
    *,
    env_name: str,
    env_digest: str,
    store: Store,
    cache_dir: Path,
    lists_dir: Path | None = None,
    arch: str | None = None,
) -> ImportReport:
    """Write ``recipes_dir/NAME.toml`` for each ``NAME`` or ``NAME=VERSION``; see the module docstring.

    ``lists_dir``: apt's lists (default: the ones the apt it runs uses, ``APT_CONFIG`` included); ``arch``: the
    build architecture (None: any). An item whose source cannot be had at the chosen version is reported failed
    and its recipe file left as it was; the other items go on."""
    lists_dir = lists_dir or configured_lists()
    wanted = [split_spec(s) for s in specs]
    on_disk = existing_debian_recipes(recipes_dir)
    index = SourcesIndex.load({n for n, _ in wanted} | set(on_disk), lists_dir)
    choices = choose_sources(wanted, index, lists_dir, arch)
    failed: dict[str, ImportFailure] = {}
    sources: dict[str, tuple[SourceEntry, ImportedSource]] = {}
    for name, choice in choices.items():
        try:
            if choice.version not in {e.version for e in index.by_name[name]}:
                raise unindexed(choice)
            with step("import source", log, package=f"{name}={choice.version}"):
                sources[name] = (
                    index.pick(name, choice.version),
                    import_dsc(name, choice.version, cache_dir, lists_dir=lists_dir),
                )
        except FarmError as exc:
            log.warning("%s", exc.render())
            failed[name] = ImportFailure(name, choice.version, exc)
    # The set: what was imported now, and the recipes already on disk that were not (their binaries from the index).
    set_members: dict[str, SourceEntry] = {name: entry for name, (entry, _) in sources.items()}
    for name, version in on_disk.items():
        matches = [e for e in index.by_name.get(name, []) if e.version == version]
        if name not in set_members and matches:
            set_members[name] = matches[0]
    produced_by = {b: n for n, e in set_members.items() for b in e.binaries}
    imported: dict[str, Imported] = {}
    with tempfile.TemporaryDirectory(prefix="mangos-import-") as tmp_str:
        tmp = Path(tmp_str)
        status = env_status_file(store, env_digest, tmp)
        for name, (entry, source) in sources.items():
            try:
                with step("import recipe", log, package=f"{name}={entry.version}"):
                    imported[name] = write_recipe(
                        entry,
                        source,
                        choices[name],
                        recipes_dir=recipes_dir,
                        tmp=tmp,
                        status=status,
                        produced_by=produced_by,
                        env_name=env_name,
                        store=store,
                        lists_dir=lists_dir,
                    )
            except FarmError as exc:
                log.warning("%s", exc.render())
                failed[name] = ImportFailure(name, entry.version, exc)
    return ImportReport(
        tuple(imported[n] for n in choices if n in imported), tuple(failed[n] for n in choices if n in failed)
    )


def write_recipe(
    entry: SourceEntry,
    source: ImportedSource,
    choice: SourceChoice,
    *,
    recipes_dir: Path,
    tmp: Path,
    status: Path,
    produced_by: Mapping[str, str],
    env_name: str,
    store: Store,
    lists_dir: Path,
    farm_deps: Sequence[str] | None = None,
    bootstrap: Mapping[str, str] | None = None,
    closure: Sequence[Pin] | None = None,
) -> Imported:
    """Resolve and pin the build closure of one imported source on top of the environment, then write its recipe.

    ``farm_deps``: the recipes it builds against (default: every recipe its Build-Depends name); ``bootstrap``:
    recipe -> source version of the ones it builds against as archive binaries instead (their binaries stay pinned;
    each edge records the highest pinned version of them, or the given version when none is pinned); ``closure``:
    its :func:`build_closure` when already resolved."""
    name = entry.name
    deps = list(farm_deps) if farm_deps is not None else recipe_dependencies(entry, (), produced_by)
    if farm_deps is None and bootstrap is None:  # a re-import keeps the cycles cut where they were
        bootstrap = {r: v for r, v in existing_bootstrap(recipes_dir / f"{name}.toml").items() if r in deps}
        deps = [d for d in deps if d not in bootstrap]
    exclude = {b for b, n in produced_by.items() if n in deps}  # farm-built by its dependencies
    pins = exclude_pins(closure if closure is not None else build_closure(source, tmp, status), exclude)
    stored = download_pins(pins, store, lists_dir)
    edges = tuple(
        (to, max((p.version for p in stored if produced_by.get(p.package) == to), key=Version, default=version))
        for to, version in sorted((bootstrap or {}).items())
    )
    path = recipes_dir / f"{name}.toml"
    text = recipe_toml(
        name=name,
        version=entry.version,
        description=f"Debian source package {name} {entry.version} (binaries: {', '.join(entry.binaries)})",
        build_depends=deps,
        outputs=DEFAULT_OUTPUTS,
        dsc=f"{name}={entry.version}",
        commit=source.commit,
        environment=env_name,
        archive=stored,
        patches=existing_patches(path),
        bootstrap=edges,
        trims=existing_trims(path),
        binnmu=choice.binnmu,
        binnmu_message=binnmu_message(entry.version, choice.binnmu),
    )
    atomic_write(path, text.encode())
    return Imported(
        name,
        entry.version,
        source.commit,
        path,
        tuple(deps),
        tuple(stored),
        choice.candidate,
        choice.explicit,
        edges,
        choice.binnmu,
    )


def build_closure(source: ImportedSource, tmp: Path, status: Path) -> list[Pin]:
    """Everything the source's Build-Depends take on top of the environment (dpkg status ``status``), every recipe's
    binaries included: what a recipe leaves out of it depends on the set."""
    src = tmp / f"{source.name}-src"
    src.mkdir()
    with (tmp / f"{source.name}.tar").open("wb") as fh:
        run(["git", "--git-dir", str(source.repo), "archive", source.commit], stdout=fh)
    run(["tar", "-xf", str(tmp / f"{source.name}.tar"), "-C", str(src)])
    (tmp / f"{source.name}.tar").unlink()
    try:
        return resolve_closure(status, src, set())
    finally:
        shutil.rmtree(src)  # only debian/control was needed; big sources (gcc) must not pile up

"""The closure import itself (see :mod:`farm.archive.closure` for what it promises): sources chosen, fetched from
every suite, imported, their build closures resolved, the set's cycles cut, the recipes and the unavailable list
written."""

from __future__ import annotations

import logging
import os
import tempfile
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

from farm.archive.closure import (
    UNAVAILABLE_FILE,
    Attempt,
    ClosureReport,
    Listing,
    Outcome,
    Split,
    elsewhere,
    fetch_from_suites,
    image_sources,
    listings,
    source_roots,
    unavailable_text,
)
from farm.archive.import_ import (
    UNAVAILABLE,
    build_closure,
    existing_binnmu,
    existing_debian_recipes,
    recipe_dependencies,
    write_recipe,
)
from farm.archive.index import SourceEntry, SourcesIndex
from farm.archive.pin import Pin
from farm.archive.resolve import env_status_file
from farm.archive.versions import SourceChoice, binnmu_number
from farm.errors import FarmError
from farm.fsutil import atomic_write
from farm.log import step
from farm.sources.apt import configured_lists
from farm.sources.dsc import ImportedSource, import_dsc
from farm.sources.dsc_git import repo_path
from farm.store import Store

log = logging.getLogger(__name__)


def _file_edges(path: Path) -> list[str]:
    """The build-depends and bootstrap recipes a recipe file names (a kept recipe keeps its edges)."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []
    deps = [d for d in data.get("build-depends", []) if isinstance(d, str)]
    return deps + [b["recipe"] for b in data.get("bootstrap", []) if isinstance(b, dict) and "recipe" in b]


def image_binnmus(pins: Sequence[Pin], wanted: Mapping[str, tuple[str, tuple[str, ...]]]) -> dict[str, int]:
    """source -> the binNMU number of the image's binaries of it (``libbz2-1.0 1.0.8-5+b1`` of bzip2 1.0.8-5: 1),
    for the sources whose binaries the image installs as a binNMU: their recipes build them as one."""
    installed = {p.package: p.version for p in pins}
    found = {
        name: max((binnmu_number(installed[b], version) for b in binaries if b in installed), default=0)
        for name, (version, binaries) in wanted.items()
    }
    return {name: n for name, n in found.items() if n}


def is_the_build(path: Path, recorded: str | None, version: str, binnmu: int) -> bool:
    """Whether the recipe at ``path``, of version ``recorded`` (None: no recipe), builds what the image installs:
    source ``version`` as binNMU ``binnmu`` (0: none). One of another binNMU is imported again, so that the farm's
    .debs are versioned as the image's (never older)."""
    return recorded == version and existing_binnmu(path) == binnmu


def _fetch_and_import(
    name: str, version: str, found: Sequence[Listing], *, roots: Sequence[str], cache_dir: Path, lists_dir: Path
) -> tuple[ImportedSource | None, list[Attempt]]:
    if repo_path(cache_dir, name, version).exists():  # imported before: nothing to download
        return import_dsc(name, version, cache_dir, lists_dir=lists_dir), []
    with tempfile.TemporaryDirectory(prefix=f"mangos-src-{name}-") as tmp:
        got, attempts = fetch_from_suites(found, roots, Path(tmp))
        if not got:
            return None, attempts
        return import_dsc(name, version, cache_dir, downloaded=Path(tmp), lists_dir=lists_dir), attempts


def import_image(
    pins: Sequence[Pin],
    recipes_dir: Path,
    *,
    env_name: str,
    env_digest: str,
    store: Store,
    cache_dir: Path,
    split: Split,
    lists_dir: Path | None = None,
    reuse_from: Path | None = None,
) -> ClosureReport:
    """A recipe in ``recipes_dir`` for the source of every pin, or a reason why not (see :mod:`~farm.archive.closure`).

    ``reuse_from``: a recipes tree whose debian recipes (outside ``recipes_dir``) are linked rather than imported
    again; ``split``: cuts the set's cycles into farm and bootstrap edges."""
    lists_dir = lists_dir or configured_lists()
    recipes_dir.mkdir(parents=True, exist_ok=True)
    wanted = image_sources(pins, lists_dir)
    on_disk, others = existing_debian_recipes(recipes_dir), elsewhere(recipes_dir, reuse_from)
    index, binnmus = SourcesIndex.load(set(wanted), lists_dir), image_binnmus(pins, wanted)
    where = listings({(n, v) for n, (v, _) in wanted.items()}, lists_dir)
    roots = sorted(set(source_roots().values()))
    outcomes: dict[str, Outcome] = {}
    kept: dict[str, SourceEntry] = {}
    fresh: dict[str, tuple[SourceEntry, ImportedSource, list[Attempt]]] = {}
    for name, (version, binaries) in wanted.items():
        path = recipes_dir / f"{name}.toml"
        entries = [e for e in index.by_name.get(name, []) if e.version == version]
        if not entries or (name, version) not in where:
            reason = f"{name} {version} is in no Sources index apt holds (a suite without a deb-src entry?)"
            outcomes[name] = Outcome(name, version, "unavailable", binaries, reason=reason)
            continue
        if is_the_build(path, on_disk.get(name), version, binnmus.get(name, 0)):
            kept[name] = entries[0]
            outcomes[name] = Outcome(name, version, "kept", binaries, str(path), "already in the directory")
            continue
        if (name, version) in others and is_the_build(others[(name, version)], version, version, binnmus.get(name, 0)):
            if path.is_symlink() or path.exists():
                path.unlink()
            path.symlink_to(os.path.relpath(others[(name, version)], recipes_dir))
            kept[name] = entries[0]
            outcomes[name] = Outcome(name, version, "kept", binaries, str(path), f"reused {others[(name, version)]}")
            continue
        try:
            with step("import source", log, package=f"{name}={version}"):
                source, attempts = _fetch_and_import(
                    name, version, where[(name, version)], roots=roots, cache_dir=cache_dir, lists_dir=lists_dir
                )
        except FarmError as exc:
            status = "unavailable" if exc.code in UNAVAILABLE else "failed"
            outcomes[name] = Outcome(name, version, status, binaries, reason=exc.message, error=exc)
            continue
        if source is None:
            reason = "no suite serves its files: " + "; ".join(f"{a.url}: {a.status}" for a in attempts)
            outcomes[name] = Outcome(name, version, "unavailable", binaries, reason=reason, attempts=tuple(attempts))
            log.warning("%s %s unavailable: %s", name, version, reason)
            continue
        fresh[name] = (entries[0], source, attempts)
    with tempfile.TemporaryDirectory(prefix="mangos-import-") as tmp_str:
        tmp = Path(tmp_str)
        status_file = env_status_file(store, env_digest, tmp)
        closures = _closures(fresh, outcomes, wanted, tmp, status_file)
        edges = _write_set(
            {n: fresh[n] for n in closures}, kept, closures, outcomes, wanted, recipes_dir=recipes_dir, split=split,
            tmp=tmp, status=status_file, env_name=env_name, store=store, lists_dir=lists_dir,
            binnmus=binnmus,
        )  # fmt: skip
    ordered = tuple(outcomes[n] for n in wanted)
    atomic_write(recipes_dir / UNAVAILABLE_FILE, unavailable_text(ordered).encode())
    counts: dict[str, int] = {}
    for o in ordered:
        counts[o.status] = counts.get(o.status, 0) + 1
    return ClosureReport(ordered, tuple(edges), dict(sorted(counts.items())))


def _closures(
    fresh: dict[str, tuple[SourceEntry, ImportedSource, list[Attempt]]],
    outcomes: dict[str, Outcome],
    wanted: dict[str, tuple[str, tuple[str, ...]]],
    tmp: Path,
    status: Path,
) -> dict[str, list[Pin]]:
    """Each fresh source's build closure; one that cannot be resolved is reported failed and left out of the set."""
    closures: dict[str, list[Pin]] = {}
    for name, (entry, source, attempts) in sorted(fresh.items()):
        try:
            with step("resolve build closure", log, package=f"{name}={entry.version}"):
                closures[name] = build_closure(source, tmp, status)
        except FarmError as exc:
            outcomes[name] = Outcome(
                name, entry.version, "failed", wanted[name][1], reason=exc.message, attempts=tuple(attempts), error=exc
            )
    return closures


def _write_set(
    fresh: dict[str, tuple[SourceEntry, ImportedSource, list[Attempt]]],
    kept: dict[str, SourceEntry],
    closures: dict[str, list[Pin]],
    outcomes: dict[str, Outcome],
    wanted: dict[str, tuple[str, tuple[str, ...]]],
    *,
    recipes_dir: Path,
    split: Split,
    tmp: Path,
    status: Path,
    env_name: str,
    store: Store,
    lists_dir: Path,
    binnmus: Mapping[str, int],
) -> list[tuple[str, str, str]]:
    """Write the fresh recipes with the set's cycles cut. Should one fail (a pin that cannot be downloaded), the set
    is cut again without it and written again, so that no recipe names one that was not written."""
    while True:
        members = {**kept, **{n: e for n, (e, _, _) in fresh.items()}}
        produced_by = {b: n for n, e in sorted(members.items()) for b in e.binaries}
        graph = {n: recipe_dependencies(e, (), produced_by) for n, (e, _, _) in fresh.items()}
        graph |= {n: [d for d in _file_edges(recipes_dir / f"{n}.toml") if d in members] for n in kept}
        farm, cut = split(graph)
        bootstrap: dict[str, dict[str, str]] = {}
        for origin, to in cut:
            bootstrap.setdefault(origin, {})[to] = members[to].version
        failed = []
        edges: list[tuple[str, str, str]] = []
        for name, (entry, source, attempts) in sorted(fresh.items()):
            try:
                with step("write recipe", log, package=f"{name}={entry.version}"):
                    done = write_recipe(
                        entry, source, SourceChoice(name, entry.version, entry.version, binnmu=binnmus.get(name, 0)),
                        recipes_dir=recipes_dir,
                        tmp=tmp, status=status, produced_by=produced_by, env_name=env_name, store=store,
                        lists_dir=lists_dir, farm_deps=farm[name], bootstrap=bootstrap.get(name, {}),
                        closure=closures[name],
                    )  # fmt: skip
            except FarmError as exc:
                log.warning("%s", exc.render())
                outcomes[name] = Outcome(
                    name, entry.version, "failed", wanted[name][1], reason=exc.message, attempts=tuple(attempts),
                    error=exc,
                )  # fmt: skip
                failed.append(name)
                continue
            edges += [(name, to, version) for to, version in done.bootstrap]
            outcomes[name] = Outcome(
                name, entry.version, "imported", wanted[name][1], str(done.path), f"commit {done.commit}",
                tuple(attempts), done.build_depends, done.bootstrap,
            )  # fmt: skip
        if not failed:
            return sorted(edges)
        for name in failed:
            (recipes_dir / f"{name}.toml").unlink(missing_ok=True)
            del fresh[name]

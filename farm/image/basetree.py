"""The package trees image roots are made from, kept between builds, and the few packages a build changes on one.

A stored tree is what :func:`farm.image.rootfs.build_tree` made for one package set, under ``CACHE/trees/KEY/tree``
with ``meta.json`` naming its packages. **Invariant: a stored tree is never written again.** A build mounts it as the
read-only lower layer of an overlay (:mod:`farm.image.overlay`) and writes only into its own upper layer, so the
payload, the manifest and the kernel a build adds never reach the next build's tree.

A build takes a stored tree of exactly its package set when there is one. Otherwise one that differs from its set
by at most :data:`MAX_DELTA` **plain** packages (:func:`not_plain`): no maintainer scripts and no triggers control
file, not Essential, no Conflicts, Breaks or Replaces naming a package of either set, no file at or under a path a
package of the tree watches with a file trigger, and requested (or not) alike in both. Installing, upgrading or
purging such a package runs no code and fires no trigger, so dpkg (the tree's own, in a chroot of the overlay)
leaves the files, modes and dpkg database mmdebstrap makes for the new set; the installed set is then checked
against the wanted one, name by name and version by version. Any other change makes the tree afresh with
mmdebstrap (without sync calls: :mod:`farm.image.rootfs`) and stores it once one ``syncfs`` has put it on disk
whole (the build reads it meanwhile): a crash never leaves a half-written tree under a key. The least recently used
trees beyond :data:`KEEP` are deleted. tests/image/test_cache.py
builds one image both ways and compares the bytes.

Trees are kept for builds as root only: a build without root makes its tree each time (:mod:`farm.image.rootless`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import tarfile
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from debian.deb822 import Deb822

from farm.errors import E, FarmError
from farm.fsutil import atomic_write
from farm.image import overlay, rootfs, rootless
from farm.image.cache import ImageCache
from farm.image.closure import wish_name
from farm.image.inputs import Inputs, Package
from farm.log import step
from farm.run import require_tool, run

log = logging.getLogger(__name__)

VERSION = 1
KEEP = 2  # stored trees (about 620 MB each for the default image)
MAX_DELTA = 16  # packages installed or purged on a stored tree; more, and mmdebstrap makes the tree afresh
SCRIPTS = ("preinst", "postinst", "prerm", "postrm", "config", "triggers")
RELATIONS = ("Conflicts", "Breaks", "Replaces")
DELTA_DIR = "tmp/mangos-delta"  # where the changed .debs wait in the tree while dpkg installs them
DPKG = "var/lib/dpkg"


def tree_key(got: Inputs, sde: int) -> str:
    """What a tree is made from: the package set and wishes, SOURCE_DATE_EPOCH, and the code that makes it."""
    code = hashlib.sha256(Path(str(rootfs.__file__)).read_bytes() + Path(__file__).read_bytes()).hexdigest()
    doc = ["mangos-tree", VERSION, rootfs.RECIPE_VERSION, got.digest, sde, code]
    return hashlib.sha256(json.dumps(doc).encode()).hexdigest()


@dataclass(frozen=True)
class Stored:
    key: str
    dir: Path
    sde: int
    packages: Mapping[str, tuple[str, str]]  # name -> (version, sha256)
    requested: frozenset[str]  # the names the tree's wishes installed

    @property
    def tree(self) -> Path:
        return self.dir / "tree"


@dataclass(frozen=True)
class Delta:
    """What turns ``base``'s tree into the wanted one: ``install`` (new or changed .debs), ``purge`` (names gone)."""

    base: Stored
    install: tuple[Package, ...]
    purge: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.install) + len(self.purge)

    def describe(self) -> str:
        parts = [f"{p.name} {p.version}" for p in self.install] + [f"-{name}" for name in self.purge]
        return ", ".join(parts) or "nothing"


def _requested(got: Inputs) -> frozenset[str]:
    return frozenset(wish_name(w) for w in got.requested)


def meta_doc(got: Inputs, key: str, sde: int) -> dict[str, object]:
    packages = {p.name: [p.version, p.sha256] for p in got.packages}
    return {"key": key, "sde": sde, "packages": packages, "requested": sorted(_requested(got))}


def load(directory: Path) -> Stored | None:
    """A stored tree, or None for a half-made or unreadable one."""
    try:
        doc = json.loads((directory / "meta.json").read_bytes())
        packages = {str(n): (str(v[0]), str(v[1])) for n, v in doc["packages"].items()}
        stored = Stored(str(doc["key"]), directory, int(doc["sde"]), packages, frozenset(doc["requested"]))
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
    return stored if stored.key == directory.name and stored.tree.is_dir() else None


def stored_trees(trees: Path) -> list[Stored]:
    """Every whole stored tree, the most recently used first."""
    found = [s for d in trees.glob("*") if not d.name.startswith(".") and (s := load(d)) is not None]
    return sorted(found, key=lambda s: (s.dir / "meta.json").stat().st_mtime, reverse=True)


def delta(got: Inputs, base: Stored) -> Delta:
    wanted = {p.name: p for p in got.packages}
    install = tuple(p for n, p in sorted(wanted.items()) if base.packages.get(n, ("", ""))[1] != p.sha256)
    return Delta(base, install, tuple(sorted(set(base.packages) - set(wanted))))


# -- what makes a package plain -----------------------------------------------------------------------------------
def relation_names(value: str) -> set[str]:
    """The package names a Depends-style field names (``a (>= 1) | b:any, c [amd64]`` -> a, b, c)."""
    names = set()
    for alternative in re.split(r"[,|]", value):
        name = re.split(r"[\s(\[:<]", alternative.strip(), maxsplit=1)[0]
        if name:
            names.add(name)
    return names


def file_triggers(tree: Path) -> list[str]:
    """The paths packages of ``tree`` watch with file triggers (``var/lib/dpkg/triggers/File``)."""
    index = tree / DPKG / "triggers" / "File"
    if not index.exists():
        return []
    return [line.split(" ", 1)[0].rstrip("/") for line in index.read_text().splitlines() if line.strip()]


def _watched(files: Sequence[str], interests: Sequence[str]) -> str | None:
    for f in files:
        path = "/" + f.lstrip("./").rstrip("/")
        for watched in interests:
            if path == watched or path.startswith(watched + "/"):
                return path
    return None


def _tar_members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getmembers()


def deb_facts(deb: Path) -> tuple[Deb822, set[str], list[str]]:
    """A .deb's control fields, control member names and file paths."""
    require_tool("dpkg-deb")
    with tarfile.open(fileobj=io.BytesIO(run(["dpkg-deb", "--ctrl-tarfile", str(deb)]).stdout)) as tar:
        names = {m.name.lstrip("./") for m in tar.getmembers()}
        member = tar.extractfile("./control")
        fields = Deb822(member.read().decode()) if member else Deb822()
    files = [m.name for m in _tar_members(run(["dpkg-deb", "--fsys-tarfile", str(deb)]).stdout)]
    return fields, names, files


def installed_facts(tree: Path, name: str, status: Sequence[Deb822]) -> tuple[Deb822, set[str], list[str]]:
    """The same facts of a package installed in ``tree``, from its dpkg database (``status``: its paragraphs)."""
    fields = next((s for s in status if s.get("Package") == name), Deb822())
    info = tree / DPKG / "info"
    stems = (name, f"{name}:{fields.get('Architecture', '')}")
    scripts = {s for s in SCRIPTS for stem in stems if (info / f"{stem}.{s}").exists()}
    listing = next((info / f"{stem}.list" for stem in stems if (info / f"{stem}.list").exists()), None)
    return fields, scripts, listing.read_text().splitlines() if listing else []


def not_plain(
    name: str, facts: tuple[Deb822, set[str], list[str]], *, others: set[str], interests: Sequence[str]
) -> str | None:
    """Why installing or removing this package could depend on order or run code; None when it cannot."""
    fields, members, files = facts
    scripts = sorted(set(SCRIPTS) & members)
    if scripts:
        return f"{name} has {', '.join(scripts)}"
    if fields.get("Essential", "no") == "yes":
        return f"{name} is Essential"
    for rel in RELATIONS:
        named = relation_names(fields.get(rel, "")) & (others - {name})
        if named:
            return f"{name} {rel} {', '.join(sorted(named))}"
    watched = _watched(files, interests)
    return f"{name} ships {watched}, which a file trigger watches" if watched else None


def check(d: Delta, got: Inputs) -> str | None:
    """Why ``d`` cannot be applied to its base (None: it can)."""
    if d.size > MAX_DELTA:
        return f"{d.size} packages differ (more than {MAX_DELTA})"
    wanted = _requested(got)
    both = set(d.base.packages) & {p.name for p in got.packages}
    for name in sorted(both):
        if (name in wanted) != (name in d.base.requested):
            return f"{name} is requested in one set and not in the other"
    others = set(d.base.packages) | {p.name for p in got.packages}
    interests, status = file_triggers(d.base.tree), _status(d.base.tree)
    old = [p.name for p in d.install if p.name in d.base.packages] + list(d.purge)
    for name in old:
        why = not_plain(name, installed_facts(d.base.tree, name, status), others=others, interests=interests)
        if why is None and name not in d.base.requested and name in d.purge:
            why = f"{name} was installed as a dependency"
        if why:
            return why
    for p in d.install:
        why = not_plain(p.name, deb_facts(p.path), others=others, interests=interests)
        if why is None and p.name not in d.base.packages and p.name not in wanted:
            why = f"{p.name} comes in as a dependency"
        if why:
            return why
    return None


# -- making and using trees ---------------------------------------------------------------------------------------
def _status(tree: Path) -> list[Deb822]:
    with (tree / DPKG / "status").open(encoding="utf-8") as fh:
        return list(Deb822.iter_paragraphs(fh))


def installed(tree: Path) -> dict[str, str]:
    """Package -> version of every package dpkg holds as installed in ``tree``."""
    return {s["Package"]: s["Version"] for s in _status(tree) if s.get("Status", "").endswith(" installed")}


def apply(d: Delta, merged: Path, got: Inputs, *, sde: int) -> None:
    """Install and purge the delta with the tree's own dpkg, then check the installed set is the wanted one."""
    require_tool("chroot")
    staging = merged / DELTA_DIR
    staging.mkdir(parents=True)
    env = rootfs.mmdebstrap_env(sde)
    chroot = ["chroot", str(merged), "dpkg", "--force-unsafe-io"]
    try:
        if d.purge:
            run([*chroot, "--purge", *d.purge], env=env)
        for p in d.install:
            shutil.copyfile(p.path, staging / p.filename)
        if d.install:
            run([*chroot, "--install", *(f"/{DELTA_DIR}/{p.filename}" for p in d.install)], env=env)
    finally:
        shutil.rmtree(staging)
    rootfs.normalize(merged)
    have, want = installed(merged), {p.name: p.version for p in got.packages}
    if have != want:
        wrong = sorted(set(have.items()) ^ set(want.items()))[:8]
        raise FarmError(
            E.IMAGE_BUILD,
            f"the tree made from a stored one does not hold the wanted packages: {wrong}",
            hint="delete HOME/cache/image/trees and build again (the tree is then made afresh); please report it",
        )


def _touch(s: Stored) -> None:
    os.utime(s.dir / "meta.json")


def _make(got: Inputs, *, sde: int, key: str, trees: Path, work: Path, cache: ImageCache) -> Path:
    """mmdebstrap's tree for ``got`` in a temporary directory of ``trees``, with its meta.json: not stored yet."""
    tmp = trees / f".tmp-{key[:16]}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        rootfs.build_tree(got, sde=sde, dest=tmp / "tree", work=work, cache=cache)
        atomic_write(tmp / "meta.json", json.dumps(meta_doc(got, key, sde), sort_keys=True).encode())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def _store(tmp: Path, trees: Path, key: str) -> None:
    """Name a made tree (synced to disk before: a tree is written without sync calls, :mod:`farm.image.rootfs`)."""
    final = trees / key
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def prune(trees: Path, keep: int = KEEP) -> list[Path]:
    """Delete half-made trees and the least recently used beyond ``keep``; run under the per-home image lock."""
    gone = []
    for stale in trees.glob(".tmp-*"):
        overlay.unmount_under(stale)  # a killed mmdebstrap leaves /proc, /sys and /dev mounted in its tree
        shutil.rmtree(stale, ignore_errors=True)
        gone.append(stale)
    for old in stored_trees(trees)[keep:]:
        shutil.rmtree(old.dir, ignore_errors=True)
        gone.append(old.dir)
    return gone


def choose(got: Inputs, sde: int, key: str, trees: Path) -> tuple[Stored | None, Delta | None, str]:
    """The stored tree to start from (exact, or a delta away), or None; and why not, for the log."""
    why = "no stored tree"
    candidates = [s for s in stored_trees(trees) if s.sde == sde]
    exact = next((s for s in candidates if s.key == key), None)
    if exact is not None:
        return exact, None, ""
    for d in sorted((delta(got, s) for s in candidates), key=lambda d: d.size):
        reason = check(d, got)
        if reason is None:
            return d.base, d, ""
        why = f"the nearest stored tree differs by {d.describe()}: {reason}"
        break  # the nearest one decides; farther ones differ by more
    return None, None, why


@contextmanager
def writable_tree(got: Inputs, *, sde: int, work: Path, cache: ImageCache) -> Iterator[tuple[Path, str]]:
    """The root tree for ``got``, writable, until the block ends; and how it was made (``stored``, ``delta: ...``,
    ``fresh``). As root it is an overlay on a stored tree; without root, a tree made in ``work``."""
    if rootless.needed():
        yield rootfs.build_tree(got, sde=sde, dest=work / "root", work=work, cache=cache), "fresh"
        return
    trees = cache.root / "trees"
    trees.mkdir(parents=True, exist_ok=True)
    prune(trees)
    key = tree_key(got, sde)
    start = time.monotonic()
    base, d, why = choose(got, sde, key, trees)
    layer = work / "layer"
    if d is not None:
        try:
            with overlay.overlay(d.base.tree, layer), step("installing what changed", log, packages=d.describe()):
                apply(d, layer / "merged", got, sde=sde)
        except FarmError as exc:  # the tree is made afresh instead: a build never fails for want of a shortcut
            log.warning("the changed packages did not apply to stored tree %s: %s", d.base.key[:16], exc.message)
            shutil.rmtree(layer)
            base, why = None, "the changed packages did not apply"
    if base is not None:
        _touch(base)
        how = "stored" if d is None else f"delta: {d.describe()}"
        log.info("root tree %s in %.1fs (%s)", key[:16], time.monotonic() - start, how)
        with overlay.overlay(base.tree, layer) as merged:  # a delta's upper layer, mounted again over its base
            yield merged, how
        return
    log.info("making the tree afresh (%s)", why)
    tmp = _make(got, sde=sde, key=key, trees=trees, work=work, cache=cache)
    require_tool("sync")
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sync") as pool:
        synced = pool.submit(run, ["sync", "--file-system", str(tmp)])  # while the build reads the tree
        with overlay.overlay(tmp / "tree", layer) as merged:
            yield merged, "fresh"
        synced.result()
    _store(tmp, trees, key)
    prune(trees)

"""The image's package closure: what apt installs with the farm's .debs in sight, and the archive's pinned .debs.

:func:`resolve` asks apt (``apt-get -s install`` on an empty dpkg status, :func:`farm.archive.resolve_install`) for
every package the wishes come to, with each farm-built .deb given to apt as an extra index (``--with-source FILE``:
a candidate apt may install, not a wish). A farm package's own dependencies are then resolved like any other, so a
package that only the farm builds (systemd 254's ``systemd-dev``, which bookworm does not have) comes into the
closure, and :func:`farm.image.inputs.gather` takes it from the farm with its recipe, commit and sha256. Every farm
package in the closure is resolved at the farm's version (``NAME=VERSION``): the image installs the farm's .deb by
name, so its dependencies, not those of an archive version of the same name, are the ones resolved.

The archive's packages are pinned by exact version and the sha256 of apt's signed Packages index and fetched into
the store (:func:`fetch_pinned`); with an image lock, by the lock's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from farm.archive import Pin, deb_name, ensure_pins, pin_from_index
from farm.errors import FarmError
from farm.image.lock import ImageLock
from farm.image.packages import ARCHIVE, Package
from farm.log import step
from farm.run import run
from farm.store import Store

log = logging.getLogger(__name__)

# apt's simulation of installing wishes on an empty system: (wishes, work dir) -> every package it would install.
Install = Callable[[Sequence[str], Path], list[Pin]]


def deb_fields(path: Path) -> tuple[str, str, str]:
    out = run(["dpkg-deb", "--show", "--showformat=${Package}\t${Version}\t${Architecture}", str(path)]).text
    name, version, arch = out.split("\t")
    return name, version, arch


def wish_name(wish: str) -> str:
    """``systemd/bookworm-backports``, ``hello=2.10-3`` -> the package name the wish installs."""
    return wish.partition("/")[0].partition("=")[0]


def resolve(wishes: Sequence[str], farm: Mapping[str, Package], work: Path, install: Install) -> list[Pin]:
    """The closure of ``wishes`` with the farm's .debs visible to apt, every farm package in it the farm's .deb.

    A wish for a package the farm builds asks for the farm's .deb itself (by its path, whatever suite or version it
    named). Every other farm .deb is in sight (``--with-source``); a farm package that the closure holds (apt may
    have taken an archive package of that name, even one of the same version with other dependencies) is then asked
    for by its path too and the closure resolved again, until no new one comes in (at most once per farm package)."""
    if not farm:
        return install(wishes, work)
    pinned = {wish_name(w) for w in wishes if wish_name(w) in farm}
    rest = [w for w in wishes if wish_name(w) not in farm]
    while True:
        sight = [f"--with-source={_path(farm[n])}" for n in sorted(set(farm) - pinned)]
        pins = install([*sight, *rest, *(_path(farm[n]) for n in sorted(pinned))], work)
        more = {p.package for p in pins if p.package in farm} - pinned
        if not more:
            return pins
        log.info("resolving again with the farm's .debs of %s", ", ".join(sorted(more)))
        pinned |= more


def _path(p: Package) -> str:
    """A farm .deb as apt takes it on the command line: a path (apt reads a wish with a slash as a file)."""
    return str(p.path.absolute())


# -- archive packages ----------------------------------------------------------------------------------------------
def fetch_pinned(pins: Sequence[Pin], store: Store, dest: Path, lock: ImageLock | None = None) -> list[Package]:
    """The pins' .debs from the store; missing ones are downloaded by exact version and must hash as pinned.

    With ``lock``, the pins are the lock's: a failure names the lock file and says how to refresh it."""
    missing = [p for p in pins if not store.has_blob(p.sha256)]
    if missing:
        with step("downloading archive packages", log, count=len(missing)):
            try:
                ensure_pins(missing, store, pinned_in=lock.where if lock else "the archive's Packages index")
            except FarmError as exc:
                if lock is None:
                    raise
                raise FarmError.of(
                    exc.code,
                    f"a locked archive package cannot be had as locked: {exc.message}",
                    file=lock.where,
                    hint="the archive no longer serves the locked version with the locked sha256 (a point release, "
                    "or the lock was edited): refresh it with 'mangos-farm image lock' and review the diff",
                ) from None
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for pin in sorted(pins):
        path = dest / deb_name(pin).replace("%3a", "_")
        store.fetch_blob(pin.sha256, path)  # checks the bytes against the pinned sha256
        if lock is not None and deb_fields(path) != (pin.package, pin.version, pin.arch):
            # the bytes are the locked ones (by sha256) but not the package the lock names: an edited lock
            name, version, arch = deb_fields(path)
            raise lock.error(
                f"the sha256 locked for {pin.spec} ({pin.arch}) is that of {name}={version} ({arch})",
                field=f"package.{pin.package}",
            )
        out.append(Package(pin.package, pin.version, pin.arch, pin.sha256, ARCHIVE, path))
    return out


def archive_debs(pins: Sequence[Pin], store: Store, dest: Path) -> list[Package]:
    """The pins' .debs from the store, downloading (and checking against the archive index) what is missing."""
    return fetch_pinned(pin_from_index(pins, store), store, dest)

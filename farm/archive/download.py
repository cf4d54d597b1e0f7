"""Archive packages by exact version into the store, each checked against the sha256 it must have.

``apt-get download NAME=VERSION`` fetches; the bytes must hash to what the archive's Packages index says (when
pinning) or to the pinned sha256 (when a recipe or an image lock names it), before the store takes them.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from farm.archive.index import archive_checksums, not_indexed
from farm.archive.pin import Pin
from farm.archive.resolve import APT_TIMEOUT
from farm.errors import E, FarmError
from farm.log import step
from farm.run import CommandFailed, run
from farm.sources.apt import APT_LISTS
from farm.sources.dsc import sha256_file
from farm.store import Store

log = logging.getLogger(__name__)


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
                raise not_indexed(pin)
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

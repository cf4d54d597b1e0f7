"""A binNMU: a rebuild of an unchanged source whose binaries carry the version ``V+bN``, as Debian's buildds make it.

Debian rebuilds a source without changing it (a library transition, outdated Built-Using) by adding a
binary-only changelog entry before the build (``sbuild --make-binNMU``, ``dch --bin-nmu``): version ``V+bN``, the
source's distribution, ``binary-only=yes``, a text saying why. ``dpkg-gencontrol`` then versions the binaries
``V+bN`` and names the source with its own version (``Source: bzip2 (1.0.8-5)``). A recipe asks for one with
``build.binnmu`` (:mod:`farm.recipes.binnmu`) so that the farm's .debs are the archive's binNMU, never older.

A binNMU rebuilds only the architecture's own binaries: a buildd runs ``dpkg-buildpackage -B`` (sbuild without
``--arch-all``), and the source's ``Architecture: all`` packages stay the ones built from the source upload,
versioned ``V``, which is what an image installs from the archive. :func:`build_type` gives the farm's build the same
flag, so that it makes no ``V+bN`` arch-all package the archive does not have.

The entry is the farm's, fixed by the recipe and the build's ``SOURCE_DATE_EPOCH`` (its date), so a rebuild writes
the same bytes. :func:`changelog_entry` is pure; :func:`apply` prepends it to the source tree's debian/changelog.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

from farm.errors import E, FarmError

MAINTAINER = "MANGOS build farm <buildd@mangos.invalid>"
_HEADER = re.compile(r"^(?P<source>[a-z0-9][a-z0-9.+-]*) \((?P<version>[^()\s]+)\) (?P<dist>[^;]+);")


def binnmu_version(version: str, number: int) -> str:
    """``version`` with the binNMU suffix ``+bN``."""
    return f"{version}+b{number}"


def build_type(number: int, *, arch_all: bool = True) -> str:
    """dpkg-buildpackage's build type of a debian build that is binNMU ``number`` (0: none): ``-B`` (the
    architecture's own binaries, as Debian's buildds build a binNMU, and as a recipe with ``arch-all = false`` asks)
    or ``-b`` (every binary package)."""
    return "-B" if number or not arch_all else "-b"


def changelog_date(epoch: int) -> str:
    """A debian/changelog date (RFC 2822, UTC) of ``epoch``."""
    return format_datetime(datetime.fromtimestamp(epoch, UTC))


def changelog_entry(
    *, source: str, version: str, distribution: str, number: int, message: str, arch: str, epoch: int
) -> str:
    """The binary-only changelog entry of binNMU ``number`` of ``source`` ``version``, as ``sbuild --make-binNMU``
    writes it, dated ``epoch``; it ends with the blank line that separates it from the entry below."""
    return (
        f"{source} ({binnmu_version(version, number)}) {distribution}; urgency=low, binary-only=yes\n"
        "\n"
        f"  * Binary-only non-maintainer upload for {arch}; no source changes.\n"
        f"  * {message}\n"
        "\n"
        f" -- {MAINTAINER}  {changelog_date(epoch)}\n"
        "\n"
    )


def top_entry(changelog: str) -> tuple[str, str, str]:
    """(source, version, distribution) of the newest entry of a debian/changelog's text."""
    m = _HEADER.match(changelog)
    if m is None:
        raise FarmError(
            E.BUILD_FAILED,
            "debian/changelog does not start with a 'SOURCE (VERSION) DISTRIBUTION;' line: no binNMU entry can "
            "be added",
            hint="check the recipe's source (a Debian source tree), or remove build.binnmu",
        )
    return m["source"], m["version"], m["dist"].strip()


def apply(src: Path, number: int, message: str, *, arch: str, epoch: int) -> str:
    """Prepend binNMU ``number``'s entry to ``src``/debian/changelog; the binaries' version (``V+bN``)."""
    path = src / "debian" / "changelog"
    if path.is_symlink() or not path.is_file():
        raise FarmError(
            E.BUILD_FAILED,
            "debian/changelog is not a regular file: no binNMU entry can be added",
            hint="check the recipe's source (a Debian source tree), or remove build.binnmu",
        )
    text = path.read_text(encoding="utf-8")
    source, version, distribution = top_entry(text)
    if re.search(r"\+b[0-9]+$", version):
        raise FarmError(
            E.BUILD_FAILED,
            f"debian/changelog's newest entry is already a binNMU ({version})",
            hint="remove build.binnmu, or build the source version without its binNMU entry",
        )
    entry = changelog_entry(
        source=source,
        version=version,
        distribution=distribution,
        number=number,
        message=message,
        arch=arch,
        epoch=epoch,
    )
    path.write_text(entry + text, encoding="utf-8")
    os.utime(path, (epoch, epoch))  # the file's time is the entry's, whenever the build ran
    return binnmu_version(version, number)

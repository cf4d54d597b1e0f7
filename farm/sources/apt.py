"""apt's lists on this machine: where they are, how to read them, and which archive each belongs to.

apt verified every list against its signed InRelease when it updated them, so what is read here is what the
archive's key vouches for. Both the source imports (Sources) and the archive pins (Packages) read them.
"""

from __future__ import annotations

import functools
import glob
import re
from pathlib import Path

from debian import deb822

from farm.errors import E, FarmError
from farm.run import run

APT_LISTS = Path("/var/lib/apt/lists")
APT_HELPER = "/usr/lib/apt/apt-helper"


def configured_lists() -> Path:
    """The lists directory apt itself uses (``Dir::State::lists`` after ``APT_CONFIG`` and apt.conf.d), so that what
    the farm reads is what the apt it runs sees; :data:`APT_LISTS` when apt cannot say."""
    result = run(["apt-config", "shell", "LISTS", "Dir::State::lists/d"], check=False)
    m = re.fullmatch(r"LISTS='([^']+)'", result.text.strip())
    return Path(m[1]) if result.returncode == 0 and m else APT_LISTS


def apt_cat_argv(path: Path) -> list[str]:
    """apt keeps its lists compressed (lz4 here); apt-helper reads any of its formats."""
    return [APT_HELPER, "cat-file", str(path)]


def read_list(path: Path) -> str:
    """The text of one of apt's lists, whatever its compression; read once per process while the file stays the
    same (size and mtime): an image build reads each Packages list three times (essential set, versions, sha256s),
    a batch import each Sources list once per package."""
    st = path.stat()
    return _read_list(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _read_list(path: str, size: int, mtime_ns: int) -> str:
    return run(apt_cat_argv(Path(path))).text


def packages_lists(lists_dir: Path = APT_LISTS) -> list[Path]:
    """apt's Packages indexes, sorted (none is not an error here: the caller says what it missed)."""
    return sorted(Path(p) for p in glob.glob(str(lists_dir / "*_Packages*")))


def archive_label(sources_list: Path) -> str:
    """'Origin Codename' of the InRelease (or, for an unsigned local archive, the Release) an index file belongs to:
    names the archive independently of the mirror."""
    releases = sorted(
        (
            p
            for p in sources_list.parent.glob("*Release")
            if p.name.endswith(("_InRelease", "_Release"))
            and sources_list.name.startswith(p.name[: p.name.rindex("_") + 1])
        ),
        key=lambda p: (len(p.name[: p.name.rindex("_")]), p.name.endswith("_InRelease")),
    )
    if releases:
        release = deb822.Release(releases[-1].read_bytes())
        origin, suite = release.get("Origin"), release.get("Codename") or release.get("Suite")
        if origin and suite:
            return f"{origin} {suite}"
    return sources_list.name.split("_source_Sources")[0]


def source_lists(lists_dir: Path = APT_LISTS) -> list[Path]:
    """apt's Sources indexes (each verified by apt against its signed InRelease); an error if there are none."""
    lists = sorted(Path(p) for p in glob.glob(str(lists_dir / "*_source_Sources*")))
    if not lists:
        raise FarmError(
            E.DSC_UNKNOWN,
            f"apt has no Sources index in {lists_dir}: no deb-src entry is configured",
            hint="run 'make apt' as root (it adds a deb-src entry and runs apt-get update)",
        )
    return lists

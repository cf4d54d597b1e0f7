"""The Debian archive, pinned: which binary packages a build or an image installs, by version and sha256.

This package is the one owner of pinning Debian binaries; build recipes (``recipes import``) and images
(:mod:`farm.image.inputs`) both go through it.

1. **Resolve** (:mod:`~farm.archive.resolve`): the host's apt (same archive) in simulate mode against a dpkg status
   of our choosing lists the packages it would install (``Inst`` lines) as pins: ``apt-get -s build-dep SOURCE_DIR``
   on an environment's status for a build, ``apt-get -s install ...`` on an empty status for an image.
2. **Pin** (:mod:`~farm.archive.index`): each pin's sha256 from the archive's Packages indexes, which apt checked
   against the signed InRelease when it updated its lists.
3. **Download and verify** (:mod:`~farm.archive.download`): ``apt-get download NAME=VERSION``; each file must hash
   as the index or the pin says before the store takes it.
4. **Import** (:mod:`~farm.archive.import_`, ``mangos-farm recipes import``): a Debian recipe per source package,
   its source imported with :func:`farm.sources.dsc.import_dsc` and its build closure pinned. The source version
   is the one that produced the binaries the image would install (:mod:`~farm.archive.versions`: the highest
   version across every suite apt installs from); where that source cannot be downloaded, no older one is taken.
   ``recipes import --image`` (:mod:`~farm.archive.closure`) does so for every source behind an image's packages,
   trying every deb-src suite before it calls a source unavailable, and cuts the set's cycles into bootstrap edges.

A debian recipe names its source (an imported .dsc) and the exact archive packages its build installs beyond the
base environment. The worker puts those .debs (fetched from the farm store by sha256) and the dependency recipes'
.debs into a read-only local repository and runs ``apt-get build-dep`` offline against it.
"""

from __future__ import annotations

from farm.archive.closure import UNAVAILABLE_FILE, ClosureReport, Outcome
from farm.archive.download import deb_name, download_pins, ensure_pins
from farm.archive.image_import import import_image
from farm.archive.import_ import (
    Imported,
    ImportFailure,
    ImportReport,
    import_recipes,
    recipe_dependencies,
)
from farm.archive.index import SourcesIndex, archive_checksums, essential_packages, pin_from_index
from farm.archive.pin import Pin
from farm.archive.recipe_text import recipe_toml
from farm.archive.resolve import exclude_pins, parse_simulation, resolve_closure, resolve_install
from farm.archive.versions import ArchiveVersions, SourceChoice, choose_source, is_older_code

__all__ = [
    "UNAVAILABLE_FILE",
    "ArchiveVersions",
    "ClosureReport",
    "ImportFailure",
    "ImportReport",
    "Imported",
    "Outcome",
    "Pin",
    "SourceChoice",
    "SourcesIndex",
    "archive_checksums",
    "choose_source",
    "deb_name",
    "download_pins",
    "ensure_pins",
    "essential_packages",
    "exclude_pins",
    "import_image",
    "import_recipes",
    "is_older_code",
    "parse_simulation",
    "pin_from_index",
    "recipe_dependencies",
    "recipe_toml",
    "resolve_closure",
    "resolve_install",
]

"""Where a Debian source package comes from upstream: the .dsc it was imported from, its orig tarballs, and the
upstream project the package itself names.

Two halves, both recorded in a build's provenance (:mod:`farm.trust.provenance`) so the trail runs from an image's
file past the import commit to the upstream project:

- **the import** (:func:`import_record`): the .dsc's URL (as apt fetched it) and sha256, and the sha256 of every
  ``.orig`` tarball the .dsc lists (none for a native package). It is kept beside the import, in the bare
  repository as :data:`RECORD` (written before the repository is renamed into place, so an import has it from
  its first moment); an import made before this record existed has none, and then the provenance says nothing of
  it rather than something guessed;
- **the declarations** (:func:`declared`), read from the source tree: ``Vcs-Git`` of debian/control (the
  packaging repository), ``Repository`` of debian/upstream/metadata (DEP-12), the first URL of debian/watch, and
  the upstream release (the changelog version without epoch and Debian revision).

Everything here is best effort and never fails an import or a build: a missing or unreadable file is an absent
field. Empty fields are left out, so a package that declares nothing adds nothing.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from debian import deb822

from farm.fsutil import atomic_write
from farm.run import CommandFailed, run
from farm.sources.dsc_git import repo_path

log = logging.getLogger(__name__)

RECORD = "mangos-upstream.json"
_URL_RE = re.compile(r"^(?:https?|ftp)://\S+$")
_META_RE = re.compile(r"^Repository:[ \t]*(\S+)[ \t]*$", re.MULTILINE)
_URIS_RE = re.compile(r"^'([^']+)'\s+(\S+)\s+\d+\s+\S+", re.MULTILINE)


def print_uris_argv(name: str, version: str) -> list[str]:
    """apt's view of where the source files are, without downloading them."""
    return ["apt-get", "source", "--print-uris", "-q", f"{name}={version}"]


def dsc_url(print_uris: str, dsc_name: str) -> str:
    """The URL ``apt-get source --print-uris`` gives for the .dsc (``''`` when it lists none)."""
    for url, file in _URIS_RE.findall(print_uris):
        if file == dsc_name:
            return str(url)
    return ""


def apt_dsc_url(name: str, version: str, dsc_name: str) -> str:
    """Where apt fetches ``name=version``'s .dsc from (``''`` when apt cannot say)."""
    try:
        out = run(print_uris_argv(name, version), env=os.environ | {"LC_ALL": "C"}, timeout=120).text
    except (CommandFailed, OSError) as exc:
        log.info("no URL for %s: %s", dsc_name, exc)
        return ""
    return dsc_url(out, dsc_name)


def is_orig(file: str) -> bool:
    """An upstream tarball (``NAME_V.orig.tar.*``, ``NAME_V.orig-COMPONENT.tar.*``), not its signature."""
    return (".orig." in file or ".orig-" in file) and not file.endswith(".asc")


def record(dsc_name: str, dsc_sha256: str, files: Iterable[tuple[str, str]], url: str) -> dict[str, Any]:
    """The .dsc by name, sha256 and URL (when known), and the orig tarballs among ``files`` (name, sha256)."""
    orig = [{"name": name, "sha256": sha256} for name, sha256 in files if is_orig(name)]
    dsc: dict[str, str] = {"name": dsc_name, "sha256": dsc_sha256}
    if url:
        dsc["url"] = url
    return {"dsc": dsc, "orig": sorted(orig, key=lambda o: o["name"])}


def import_record(dsc_path: Path, dsc_sha256: str, url: str) -> dict[str, Any]:
    """What the import of ``dsc_path`` records: the .dsc by URL and sha256, its orig tarballs by sha256."""
    with dsc_path.open("rb") as fh:
        listed = deb822.Dsc(fh).get("Checksums-Sha256") or []
    files = [(str(f.get("name", "")), str(f.get("sha256", ""))) for f in listed]
    return record(dsc_path.name, dsc_sha256, files, url)


def write_record(repo: Path, found: Mapping[str, Any]) -> None:
    atomic_write(repo / RECORD, (json.dumps(found, sort_keys=True, indent=1) + "\n").encode())


def read_record(repo: Path) -> dict[str, Any]:
    """The import's record, or ``{}`` for an import made without one."""
    try:
        data = json.loads((repo / RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def watch_url(text: str) -> str:
    """The first URL of a debian/watch file (continuation lines joined, comments skipped)."""
    joined = re.sub(r"\\\n", " ", text)
    for line in joined.splitlines():
        if line.lstrip().startswith("#"):
            continue
        for token in line.split():
            if _URL_RE.match(token):
                return token
    return ""


def metadata_repository(text: str) -> str:
    """``Repository`` of a debian/upstream/metadata file (a top-level YAML key)."""
    found = _META_RE.search(text)
    return found.group(1).strip("'\"") if found else ""


def upstream_release(version: str) -> str:
    """The upstream part of a Debian version: no epoch, no Debian revision."""
    version = version.split(":", 1)[-1]
    return version.rsplit("-", 1)[0] if "-" in version else version


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace") if path.is_file() else ""
    except OSError:
        return ""


def declared(src: Path, version: str = "") -> dict[str, str]:
    """What the source tree at ``src`` says about its upstream: ``vcs-git``, ``repository``, ``watch`` and
    ``release`` (from ``version``, a Debian version), each only when known."""
    found: dict[str, str] = {}
    control = _read(src / "debian" / "control")
    if control:
        try:
            source = next(iter(deb822.Deb822.iter_paragraphs(control.splitlines())), None)
        except ValueError:
            source = None
        if source is not None and source.get("Vcs-Git"):
            found["vcs-git"] = str(source["Vcs-Git"]).strip()
    repository = metadata_repository(_read(src / "debian" / "upstream" / "metadata"))
    if repository:
        found["repository"] = repository
    watch = watch_url(_read(src / "debian" / "watch"))
    if watch:
        found["watch"] = watch
    if version and "-" in version.split(":", 1)[-1]:  # a native package has no separate upstream release
        found["release"] = upstream_release(version)
    return found


def upstream(src: Path, version: str, repo: Path | None) -> dict[str, Any]:
    """Everything known about where ``src`` comes from upstream (``{}`` when nothing is)."""
    found: dict[str, Any] = dict(read_record(repo)) if repo is not None else {}
    found |= declared(src, version)
    return {k: v for k, v in found.items() if v}


def of_source(dsc: str, version: str, src: Path, cache_dir: Path) -> dict[str, Any]:
    """:func:`upstream` of a recipe's source: ``dsc`` is its ``NAME=VERSION`` (``''`` for a git source), whose
    import under ``cache_dir`` holds the import record; ``version`` the recipe's (for a git source)."""
    if not dsc:
        return upstream(src, version, None)
    name, _, dsc_version = dsc.partition("=")
    return upstream(src, dsc_version, repo_path(cache_dir, name, dsc_version))

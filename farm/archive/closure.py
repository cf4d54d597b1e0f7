"""``recipes import --image``: a recipe for every source package behind an image's packages.

The caller resolves the image's binary packages (the resolution ``image lock`` does, profile included) and passes
them down as pins; here they become source packages and versions (the ``Source`` field of the Packages entry the pin
names: the version whose code the image installs, security versions included, never an older one), and each source
is:

- **kept** when a recipe for it at that version and binNMU (``build.binnmu``, the image's binaries' ``+bN``) is
  already in the directory, or is **reused** from elsewhere in the recipes tree (``recipes/debian/zlib.toml``): a
  relative symlink to it is written instead of a copy; a recipe of another binNMU is imported again;
- **imported** through :func:`farm.sources.dsc.import_dsc` (already-imported sources come from the cache);
- **unavailable** when no suite serves its files: before that is declared, the files are tried from every deb-src
  suite the machine has (each suite's archive root, the directory its Sources entry names), every URL with its
  HTTP status reported. Sources that cannot be had are listed, with the reason, in :data:`UNAVAILABLE_FILE` beside
  the recipes; their binaries stay pinned archive packages of whatever needs them.

The recipes' dependencies are the Build-Depends among the set (imported and kept). The cycles among them are cut by
the ``split`` the caller gives (:func:`farm.graph.bootstrap_split`): a cut edge becomes a bootstrap edge, whose
binaries stay pinned from the archive. Everything written depends only on the archive's indexes and the set, so a
second run writes the same files.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from debian import deb822

from farm.archive.index import not_indexed
from farm.archive.pin import Pin
from farm.archive.resolve import APT_TIMEOUT
from farm.archive.versions import ArchiveVersions, compare
from farm.errors import FarmError
from farm.run import run
from farm.sources.apt import APT_HELPER, archive_label, read_list, source_lists
from farm.sources.dsc import sha256_file

log = logging.getLogger(__name__)

UNAVAILABLE_FILE = "unavailable.json"
Split = Callable[[Mapping[str, Sequence[str]]], tuple[dict[str, list[str]], list[tuple[str, str]]]]

_PACKAGE_RE = re.compile(r"^Package:[ \t]*(\S+)[ \t]*$", re.MULTILINE)
_FAILED_RE = re.compile(r"Failed to fetch (\S+)\s+(.*?)\s*(?:\[IP: [^\]]*\])?\s*$", re.MULTILINE)


# -- which sources ----------------------------------------------------------------------------------------------
def image_sources(pins: Sequence[Pin], lists_dir: Path) -> dict[str, tuple[str, tuple[str, ...]]]:
    """source -> (version, its binaries among the pins): the Packages entry of each pin names its source. Should two
    binaries of one source come from different source versions, the newer is taken (never older code)."""
    versions = ArchiveVersions.load({p.package for p in pins}, lists_dir)
    found: dict[str, tuple[str, set[str]]] = {}
    for pin in sorted(pins):
        match = [e for e in versions.by_package.get(pin.package, []) if (e.version, e.arch) == (pin.version, pin.arch)]
        if not match:
            raise not_indexed(pin)
        entry = match[0]
        version, binaries = found.get(entry.source, (entry.source_version, set()))
        if compare(entry.source_version, version) > 0:
            version = entry.source_version
        found[entry.source] = (version, binaries | {pin.package})
    return {name: (version, tuple(sorted(bins))) for name, (version, bins) in sorted(found.items())}


# -- where its files are ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Listing:
    """One suite's Sources entry for a source version: the archive root, the pool directory and the files."""

    archive: str
    root: str
    directory: str
    files: tuple[tuple[str, str], ...]  # (file name, sha256), the .dsc first


def indextargets_argv() -> list[str]:
    return ["apt-get", "indextargets", "--format", "$(FILENAME)\t$(REPO_URI)", "Created-By: Sources"]


def source_roots() -> dict[str, str]:
    """The archive root (``REPO_URI``) of each Sources list apt has, by the list's file name."""
    roots = {}
    for line in run(indextargets_argv(), env=os.environ | {"LC_ALL": "C"}).text.splitlines():
        filename, _, uri = line.partition("\t")
        if uri:
            roots[Path(filename).name] = uri.rstrip("/") + "/"
    return roots


def listings(wanted: set[tuple[str, str]], lists_dir: Path) -> dict[tuple[str, str], list[Listing]]:
    """Every suite's entry for each wanted (source, version), in the order of the suites' labels."""
    roots = source_roots()
    names = {n for n, _ in wanted}
    found: dict[tuple[str, str], list[Listing]] = {}
    for path in source_lists(lists_dir):
        label, root = archive_label(path), roots.get(path.name, "")
        for para_text in read_list(path).split("\n\n"):
            m = _PACKAGE_RE.search(para_text)
            if m is None or m[1] not in names:
                continue
            para = deb822.Sources(para_text)
            key = (str(para["Package"]), str(para["Version"]))
            if key not in wanted:
                continue
            files = sorted(
                ((str(e["name"]), str(e["sha256"])) for e in para.get("Checksums-Sha256") or []),
                key=lambda f: (not f[0].endswith(".dsc"), f[0]),
            )
            found.setdefault(key, []).append(Listing(label, root, str(para.get("Directory", "")), tuple(files)))
    return {k: sorted(v, key=lambda e: e.archive) for k, v in found.items()}


def candidate_dirs(entries: Sequence[Listing], roots: Sequence[str]) -> list[str]:
    """The pool directories to try, each once: every suite that lists the version, then every other suite's root
    with the same pool directory."""
    urls = [e.root + e.directory for e in entries if e.root]
    urls += [root + entries[0].directory for root in roots]
    return list(dict.fromkeys(urls))


# -- fetching -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Attempt:
    """One URL tried: ``status`` as the server (or apt's method) answered, ``http`` its HTTP code when it had one."""

    url: str
    status: str
    http: int | None

    @property
    def ok(self) -> bool:
        return self.status == "ok" or self.http == 200

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "status": self.status, "http_status": self.http}


def download_argv(url: str, dest: Path) -> list[str]:
    return [APT_HELPER, "download-file", url, str(dest)]


def fetch_file(url: str, dest: Path) -> Attempt:
    result = run(download_argv(url, dest), check=False, env=os.environ | {"LC_ALL": "C"}, timeout=APT_TIMEOUT)
    if result.returncode == 0 and dest.is_file():
        return Attempt(url, "200 OK", 200) if url.startswith("http") else Attempt(url, "ok", None)
    text = result.stdout.decode("utf-8", "replace") + result.stderr.decode("utf-8", "replace")
    m = _FAILED_RE.search(text)
    status = " ".join((m[2] if m else (text.strip().splitlines() or [f"exit {result.returncode}"])[-1]).split())
    return Attempt(url, status, int(status[:3]) if status[:3].isdigit() else None)


def fetch_from_suites(entries: Sequence[Listing], roots: Sequence[str], dest: Path) -> tuple[bool, list[Attempt]]:
    """The .dsc and its files into ``dest`` from the first pool directory that serves them all (files already there
    with the indexed sha256 are kept). Returns whether it got them, and the failed URLs then the one that served."""
    dest.mkdir(parents=True, exist_ok=True)
    files = entries[0].files
    attempts: list[Attempt] = []
    for base in candidate_dirs(entries, roots):
        failed = None
        for name, sha256 in files:
            target = dest / name
            if target.is_file() and sha256_file(target) == sha256:
                continue
            target.unlink(missing_ok=True)
            got = fetch_file(f"{base}/{name}", target)
            if not got.ok:
                failed = got
                break
        if failed is None:
            attempts.append(Attempt(f"{base}/{files[0][0]}", *_served(base)))
            return True, attempts
        attempts.append(failed)
    return False, attempts


def _served(base: str) -> tuple[str, int | None]:
    return ("200 OK", 200) if base.startswith("http") else ("ok", None)


# -- the report ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """One source package of the image: imported, kept (or reused), unavailable or failed, and why."""

    name: str
    version: str
    status: str
    binaries: tuple[str, ...]
    path: str = ""
    reason: str = ""
    attempts: tuple[Attempt, ...] = ()
    build_depends: tuple[str, ...] = ()
    bootstrap: tuple[tuple[str, str], ...] = ()
    error: FarmError | None = None

    def to_json(self) -> dict[str, Any]:
        last = self.attempts[-1] if self.attempts else None
        return {
            "status": self.status,
            "name": self.name,
            "version": self.version,
            "binaries": list(self.binaries),
            "path": self.path,
            "reason": self.reason,
            "url": last.url if last else "",
            "http_status": last.http if last else None,
            "attempts": [a.to_json() for a in self.attempts],
            "build_depends": list(self.build_depends),
            "bootstrap": [list(b) for b in self.bootstrap],
            **({"error": self.error.to_json()} if self.error else {}),
        }


@dataclass(frozen=True)
class ClosureReport:
    outcomes: tuple[Outcome, ...]
    bootstrap_edges: tuple[tuple[str, str, str], ...] = ()
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(o.status in ("imported", "kept") for o in self.outcomes)


def unavailable_text(outcomes: Sequence[Outcome]) -> str:
    """The file beside the recipes naming each source that could not be had, with the reason and the URLs tried."""
    rows = [
        {k: v for k, v in o.to_json().items() if k in ("name", "version", "binaries", "reason", "attempts")}
        for o in sorted(outcomes, key=lambda o: o.name)
        if o.status not in ("imported", "kept")
    ]
    return json.dumps({"unavailable": rows}, indent=2, sort_keys=True) + "\n"


def elsewhere(recipes_dir: Path, tree: Path | None) -> dict[tuple[str, str], Path]:
    """(name, version) -> file of every debian recipe under ``tree`` outside ``recipes_dir`` (symlinks left out):
    the recipes another set already has, which this one reuses rather than duplicates."""
    if tree is None or not tree.is_dir():
        return {}
    inside = recipes_dir.resolve()
    found: dict[tuple[str, str], Path] = {}
    for path in sorted(tree.rglob("*.toml")):
        if path.is_symlink() or inside in path.resolve().parents:
            continue
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            continue
        build = data.get("build")
        if isinstance(build, dict) and build.get("kind") == "debian" and isinstance(data.get("name"), str):
            found.setdefault((data["name"], str(data.get("version", ""))), path)
    return found

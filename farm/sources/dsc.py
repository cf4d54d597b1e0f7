"""Debian source packages as git commits: ``NAME=VERSION`` from the configured archive, imported deterministically.

The same .dsc gives the same commit on every machine, so a build of an archive package records a commit and tree
like any other git source (see :mod:`farm.sources.git`). The steps:

1. **Fetch**: ``apt-get source --download-only NAME=VERSION`` (needs a ``deb-src`` entry: ``make apt`` writes one
   mirroring the system's ``deb`` entry).
2. **Verify**, independently of apt: the .dsc's own sha256 and size against the archive's Sources index (which apt
   checked against the signed InRelease when it updated its lists), then every file the .dsc lists against its
   ``Checksums-Sha256`` entry. The chain is: archive key -> InRelease -> Sources -> .dsc -> tarballs.
3. **Unpack** with ``dpkg-source -x``, patches applied: the commit is the tree a buildd builds from, and
   ``dpkg-buildpackage`` needs no patching step of its own. For ``3.0 (quilt)`` packages the ``.pc/`` directory
   dpkg-source writes is kept in the tree on purpose: it records that the patches are applied, so a later
   ``dpkg-source --before-build`` does not try to apply them again.
4. **Commit** deterministically (:mod:`farm.sources.dsc_git`): a fixed author, committer and message, the date of
   the top ``debian/changelog`` entry, tagged ``debian/VERSION`` (DEP-14).

The result is a bare repository ``CACHE/dsc/NAME_VERSION.git``, built in a temporary directory next to it and
renamed into place under a lock file, so concurrent importers of one package do the work once and a crash never
leaves a half-made repository where a reader would find it.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from debian import deb822

from farm.errors import E, FarmError
from farm.log import step
from farm.run import CommandFailed, run
from farm.sources import upstream
from farm.sources.apt import (
    APT_HELPER,
    APT_LISTS,
    apt_cat_argv,
    archive_label,
    configured_lists,
    read_list,
    source_lists,
)
from farm.sources.dsc_git import (
    ImportedSource,
    changelog_date,
    commit_message,
    commit_tree,
    dep14,
    dpkg_source_argv,
    git_argv,
    git_env,
    git_init_argv,
    read_existing,
    repo_path,
    tag_name,
    unpack,
)

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")  # as dpkg accepts it (policy asks for two characters)
_VERSION_RE = re.compile(r"^(?:[0-9]+:)?[0-9A-Za-z][0-9A-Za-z.+~-]*$")


@dataclass(frozen=True)
class IndexEntry:
    """A source package's entry in an archive's Sources index: what the .dsc must hash to."""

    archive: str
    dsc_name: str
    dsc_sha256: str
    dsc_size: int
    files: tuple[tuple[str, str], ...] = field(default=(), compare=False)  # every file of the entry: (name, sha256)


def check_spec(name: str, version: str) -> None:
    """Refuse anything that is not a Debian source package name and version (also keeps options out of argv)."""
    if not _NAME_RE.match(name) or not _VERSION_RE.match(version):
        raise FarmError(
            E.DSC_UNKNOWN,
            f"'{name}={version}' is not a Debian source package name and version",
            hint="use NAME=VERSION as 'apt-cache showsrc NAME' lists it, for example hello=2.10-3",
        )


def upstream_dsc_name(name: str, version: str) -> str:
    """The .dsc file name: the epoch is not part of it."""
    return f"{name}_{version.split(':', 1)[-1]}.dsc"


def apt_source_argv(name: str, version: str) -> list[str]:
    return ["apt-get", "source", "--download-only", "-q", f"{name}={version}"]


# ---------------------------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _mismatch(file: Path | str, expected: str, actual: str, what: str = "sha256") -> FarmError:
    return FarmError(
        E.DSC_CHECKSUM,
        f"{what} mismatch for {Path(file).name}: expected {expected}, got {actual}",
        file=file,
        hint="the download is corrupt or was tampered with: delete it and import again; if it persists, the "
        "mirror is serving bad data ('apt-get update' and compare with another mirror)",
    )


def check_digest(path: Path, sha256: str, size: int) -> None:
    """``path`` must exist with exactly this size and sha256."""
    if not path.is_file():
        raise _mismatch(path, sha256, "nothing (the file is missing)")
    actual_size = path.stat().st_size
    if actual_size != size:
        raise _mismatch(path, f"{size} bytes", f"{actual_size} bytes", what="size")
    actual = sha256_file(path)
    if actual != sha256:
        raise _mismatch(path, sha256, actual)


def check_dsc_files(dsc_path: Path) -> list[str]:
    """Every file the .dsc lists (Checksums-Sha256) next to it, with its size and sha256. Returns their names."""
    with dsc_path.open("rb") as f:
        dsc = deb822.Dsc(f)
    entries = dsc.get("Checksums-Sha256") or []
    if not entries:
        raise FarmError(
            E.DSC_CHECKSUM,
            f"{dsc_path.name} lists no Checksums-Sha256",
            file=dsc_path,
            hint="only .dsc files with sha256 checksums can be verified; this one is too old or not a .dsc",
        )
    names = []
    for entry in entries:
        try:  # a line that is not "SHA256 SIZE NAME" (hostile or damaged input) is an error, not a crash
            name, sha256, size = str(entry["name"]), str(entry["sha256"]), int(entry["size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise FarmError(
                E.DSC_CHECKSUM,
                f"{dsc_path.name} has a malformed Checksums-Sha256 line ({exc})",
                file=dsc_path,
                hint="each line must be 'SHA256 SIZE NAME'; fetch the source package again",
            ) from None
        if "/" in name or name in ("", ".", ".."):
            raise FarmError(E.DSC_CHECKSUM, f"{dsc_path.name} lists a bad file name '{name}'", file=dsc_path)
        check_digest(dsc_path.parent / name, sha256, size)
        names.append(name)
    return names


def index_entries(sources_text: str, name: str, version: str, archive: str) -> list[IndexEntry]:
    """The entries for ``name`` ``version`` in one Sources index (its text), with the .dsc's checksum."""
    want = re.compile(rf"^Package: {re.escape(name)}$", re.MULTILINE)
    found = []
    for para_text in re.split(r"\n\s*\n", sources_text):
        if not want.search(para_text):
            continue
        para = deb822.Sources(para_text)
        if para.get("Package") != name or para.get("Version") != version:
            continue
        files, dscs = [], []
        for entry in para.get("Checksums-Sha256") or []:
            try:
                file, sha256, size = str(entry["name"]), str(entry["sha256"]), int(entry["size"])
            except (KeyError, TypeError, ValueError) as exc:
                raise FarmError(
                    E.DSC_UNKNOWN,
                    f"the Sources index entry for {name} {version} has a malformed Checksums-Sha256 line ({exc})",
                    hint="run 'apt-get update' to fetch the index again",
                ) from None
            files.append((file, sha256))
            if file.endswith(".dsc"):
                dscs.append((file, sha256, size))
        found += [IndexEntry(archive, file, sha256, size, tuple(files)) for file, sha256, size in dscs]
    return found


def naming_order(entry: IndexEntry) -> tuple[bool, str]:
    """Which suite's label names an import listed by several: backports last (its Origin, "Debian Backports", would
    sort before "Debian bookworm"), then by label, so the base suite comes before its -security and -updates."""
    return "backports" in entry.archive.lower(), entry.archive


def check_dsc_against_index(dsc_path: Path, entries: Sequence[IndexEntry]) -> IndexEntry:
    """The .dsc must match the Sources index; returns the entry it matched (its archive names the import).

    The same .dsc is often listed by several suites (bookworm and bookworm-security both list zlib 1:1.2.13.dfsg-1;
    bookworm-backports lists a source it did not change at bookworm's version). The import is named after the first
    of them by :func:`naming_order`, so the commit does not depend on which of those suites a machine has configured."""
    mine = [e for e in entries if e.dsc_name == dsc_path.name]
    if not mine:
        raise FarmError(
            E.DSC_UNKNOWN,
            f"{dsc_path.name} is not in the archive's Sources index",
            hint="run 'apt-get update' and check 'apt-cache showsrc' for the package",
        )
    if not dsc_path.is_file():
        raise _mismatch(dsc_path, mine[0].dsc_sha256, "nothing (the file is missing)")
    actual = sha256_file(dsc_path)
    size = dsc_path.stat().st_size
    matching = [e for e in mine if e.dsc_sha256 == actual and e.dsc_size == size]
    if not matching:
        raise _mismatch(dsc_path, mine[0].dsc_sha256, actual)
    return min(matching, key=naming_order)


def archive_index(name: str, version: str, lists_dir: Path | None = None) -> list[IndexEntry]:
    """Every Sources index apt holds (``lists_dir``, default: the lists the configured apt uses), searched for the
    package."""
    lists = source_lists(lists_dir if lists_dir is not None else configured_lists())
    found: list[IndexEntry] = []
    for path in lists:
        found += index_entries(read_list(path), name, version, archive_label(path))
    return found


# ---------------------------------------------------------------------------------------------------------------
# Fetch, unpack, commit
# ---------------------------------------------------------------------------------------------------------------


def _unknown(name: str, version: str, detail: str = "") -> FarmError:
    return FarmError(
        E.DSC_UNKNOWN,
        f"the archive has no source package {name}={version}" + (f": {detail}" if detail else ""),
        hint=f"check the versions the archive has with 'apt-cache showsrc {name}' (after 'apt-get update')",
    )


def unavailable(name: str, version: str, stderr: str) -> FarmError:
    """The Sources index lists ``name=version`` but the archive does not serve its files (404, file not found)."""
    failed = [ln.removeprefix("E: ").strip() for ln in stderr.splitlines() if "Failed to fetch" in ln]
    return FarmError(
        E.SOURCE_UNAVAILABLE,
        f"the source of {name}={version} cannot be downloaded: " + ("; ".join(failed[:3]) or stderr.strip()[-500:]),
        hint="the archive serves the Sources index but not this version's files (a mirror without the security "
        "pool's sources answers 404). No older version is taken in its place: import one only by asking for it "
        f"explicitly ({name}=OLDER_VERSION), and an image built with it then needs --allow-archive-fallback",
    )


def fetch(name: str, version: str, dest: Path) -> Path:
    """Download the .dsc and the files it lists into ``dest``; returns the .dsc. Nothing is verified yet."""
    check_spec(name, version)
    dest.mkdir(parents=True, exist_ok=True)
    with step("apt-get source", log, package=f"{name}={version}"):
        try:
            run(apt_source_argv(name, version), cwd=dest, env=os.environ | {"LC_ALL": "C"}, timeout=600)
        except CommandFailed as exc:
            stderr = exc.result.stderr.decode("utf-8", "replace")
            if "Unable to find a source package" in stderr or "Can not find version" in stderr:
                raise _unknown(name, version) from None
            if "Failed to fetch" in stderr:
                raise unavailable(name, version, stderr) from None
            raise
    dsc = dest / upstream_dsc_name(name, version)
    if not dsc.is_file():
        raise _unknown(name, version, f"apt-get source did not write {dsc.name}")
    return dsc


def _record_upstream(repo: Path, name: str, version: str, lists_dir: Path | None) -> None:
    """Give an import made before the upstream record existed its record, from the Sources index (which lists the
    .dsc and its files with their sha256, as the .dsc does: nothing is downloaded). Written once, also when the
    index no longer lists the version (then empty: nothing is known)."""
    entries = archive_index(name, version, lists_dir)
    record: dict[str, object] = {}
    if entries:
        entry = min(entries, key=naming_order)
        url = upstream.apt_dsc_url(name, version, entry.dsc_name)
        record = upstream.record(entry.dsc_name, entry.dsc_sha256, entry.files, url)
    try:
        upstream.write_record(repo, record)
    except OSError as exc:
        log.info("cannot record where %s=%s comes from: %s", name, version, exc)


def import_dsc(
    name: str,
    version: str,
    cache_dir: Path,
    *,
    downloaded: Path | None = None,
    lists_dir: Path | None = None,
) -> ImportedSource:
    """Import ``name=version`` into ``CACHE/dsc/NAME_VERSION.git``; an existing import is reused as it is.

    ``downloaded`` is a directory that already holds the .dsc and its files (they are verified exactly like a
    fresh download); without it they are fetched with apt-get source.
    """
    check_spec(name, version)
    repo = repo_path(cache_dir, name, version)
    repo.parent.mkdir(parents=True, exist_ok=True)
    with repo.with_name(repo.name + ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if repo.exists():
            if not (repo / upstream.RECORD).exists():
                _record_upstream(repo, name, version, lists_dir)
            return read_existing(repo, name, version)
        with step("import dsc", log, package=f"{name}={version}"):
            entries = archive_index(name, version, lists_dir)
            if not entries:
                raise _unknown(name, version, "it is not in any Sources index apt holds")
            with tempfile.TemporaryDirectory(prefix=f".{repo.name}.", dir=repo.parent) as tmp_str:
                tmp = Path(tmp_str)
                files = downloaded if downloaded is not None else tmp / "download"
                dsc = files / upstream_dsc_name(name, version) if downloaded is not None else None
                if dsc is None:
                    dsc = fetch(name, version, files)
                with step("verify", log, dsc=dsc.name):
                    entry = check_dsc_against_index(dsc, entries)
                    check_dsc_files(dsc)
                unpack(dsc, tmp / "src")
                with step("commit", log):
                    commit, tree, epoch = commit_tree(tmp / "repo.git", tmp / "src", name, version, entry.archive)
                url = upstream.apt_dsc_url(name, version, dsc.name)
                upstream.write_record(tmp / "repo.git", upstream.import_record(dsc, entry.dsc_sha256, url))
                os.rename(tmp / "repo.git", repo)
        log.info("imported %s=%s as %s (tree %s)", name, version, commit, tree)
        return ImportedSource(name, version, repo, commit, tree, tag_name(version), epoch)


__all__ = [
    "APT_HELPER",
    "APT_LISTS",
    "ImportedSource",
    "IndexEntry",
    "apt_cat_argv",
    "apt_source_argv",
    "changelog_date",
    "check_dsc_against_index",
    "check_dsc_files",
    "check_spec",
    "commit_message",
    "dep14",
    "dpkg_source_argv",
    "fetch",
    "git_argv",
    "git_env",
    "git_init_argv",
    "import_dsc",
    "index_entries",
    "repo_path",
    "sha256_file",
    "source_lists",
    "tag_name",
    "unavailable",
    "upstream_dsc_name",
]

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
4. **Commit** with git plumbing (``write-tree`` + ``commit-tree``: no hooks, no signing, no user configuration)
   with a fixed author and committer, the date of the top ``debian/changelog`` entry and a fixed message; tagged
   ``debian/VERSION`` (DEP-14). Git stores only what is deterministic here: contents, the executable bit (every
   file is normalised to 0644/0755 first), symlinks, and paths in sorted order. It cannot keep empty directories:
   those in the source package are not in the commit, and a build that needs one must create it.

The result is a bare repository ``CACHE/dsc/NAME_VERSION.git``, built in a temporary directory next to it and
renamed into place under a lock file, so concurrent importers of one package do the work once and a crash never
leaves a half-made repository where a reader would find it.
"""

from __future__ import annotations

import email.utils
import fcntl
import glob
import hashlib
import logging
import os
import re
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from debian import changelog, deb822

from farm.errors import E, FarmError
from farm.log import step
from farm.run import CommandFailed, run

log = logging.getLogger(__name__)

APT_LISTS = Path("/var/lib/apt/lists")
APT_HELPER = "/usr/lib/apt/apt-helper"
IMPORT_NAME = "MANGOS import"
IMPORT_EMAIL = "import@mangos.invalid"
UMASK = 0o022

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9.+-]+$")
_VERSION_RE = re.compile(r"^(?:[0-9]+:)?[0-9A-Za-z][0-9A-Za-z.+~-]*$")

# Highest-precedence attributes ($GIT_DIR/info/attributes): whatever .gitattributes the source ships, no
# end-of-line conversion, filter, ident expansion or re-encoding changes a file on its way into the commit.
GIT_ATTRIBUTES = "* -text -eol -crlf -filter -ident -working-tree-encoding -diff -merge\n"


@dataclass(frozen=True)
class ImportedSource:
    name: str
    version: str
    repo: Path
    commit: str
    tree: str
    tag: str
    commit_time: int


@dataclass(frozen=True)
class IndexEntry:
    """A source package's entry in an archive's Sources index: what the .dsc must hash to."""

    archive: str
    dsc_name: str
    dsc_sha256: str
    dsc_size: int


# ---------------------------------------------------------------------------------------------------------------
# Pure helpers: names, argv lists, environments
# ---------------------------------------------------------------------------------------------------------------


def check_spec(name: str, version: str) -> None:
    """Refuse anything that is not a Debian source package name and version (also keeps options out of argv)."""
    if not _NAME_RE.match(name) or not _VERSION_RE.match(version):
        raise FarmError(
            E.DSC_UNKNOWN,
            f"'{name}={version}' is not a Debian source package name and version",
            hint="use NAME=VERSION as 'apt-cache showsrc NAME' lists it, for example hello=2.10-3",
        )


def dep14(version: str) -> str:
    """A Debian version as a git ref component, per DEP-14: ':' -> '%', '~' -> '_', and '.' never ends a
    component, doubles up or starts '.lock' ('.#' instead)."""
    mangled = version.replace(":", "%").replace("~", "_")
    return re.sub(r"\.(?=\.|$|lock$)", ".#", mangled)


def tag_name(version: str) -> str:
    return f"debian/{dep14(version)}"


def upstream_dsc_name(name: str, version: str) -> str:
    """The .dsc file name: the epoch is not part of it."""
    return f"{name}_{version.split(':', 1)[-1]}.dsc"


def apt_source_argv(name: str, version: str) -> list[str]:
    return ["apt-get", "source", "--download-only", "-q", f"{name}={version}"]


def apt_cat_argv(path: Path) -> list[str]:
    """apt keeps its lists compressed (lz4 here); apt-helper reads any of its formats."""
    return [APT_HELPER, "cat-file", str(path)]


def dpkg_source_argv(dsc: Path, dest: Path) -> list[str]:
    """Unpack with patches applied; ``--no-copy`` leaves the tarballs out of the tree's parent directory."""
    return ["dpkg-source", "--no-copy", "-x", str(dsc), str(dest)]


def git_argv(git_dir: Path, *args: str, work_tree: Path | None = None) -> list[str]:
    """Every git call: the repository explicit, and the settings that could make a commit differ pinned."""
    argv = ["git", "--git-dir", str(git_dir)]
    if work_tree is not None:
        argv += ["--work-tree", str(work_tree)]
    for setting in (
        "core.autocrlf=false",
        "core.safecrlf=false",
        "core.fileMode=true",
        "core.symlinks=true",
        "core.precomposeUnicode=false",
        "commit.gpgSign=false",
        "tag.gpgSign=false",
        "init.defaultBranch=main",
    ):
        argv += ["-c", setting]
    return [*argv, *args]


def git_init_argv(git_dir: Path) -> list[str]:
    return ["git", "-c", "init.defaultBranch=main", "init", "-q", "--bare", str(git_dir)]


def commit_message(name: str, version: str, archive: str) -> str:
    return f"Import {name} {version} from {archive}\n"


def git_env(epoch: int, offset: str) -> dict[str, str]:
    """A clean environment: no user or system git configuration, fixed identity and dates, C locale, UTC."""
    date = f"{epoch} {offset}"
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": "/nonexistent",
        "LC_ALL": "C",
        "TZ": "UTC",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": IMPORT_NAME,
        "GIT_AUTHOR_EMAIL": IMPORT_EMAIL,
        "GIT_AUTHOR_DATE": date,
        "GIT_COMMITTER_NAME": IMPORT_NAME,
        "GIT_COMMITTER_EMAIL": IMPORT_EMAIL,
        "GIT_COMMITTER_DATE": date,
    }


def changelog_date(text: str, where: str = "debian/changelog") -> tuple[int, str]:
    """The top entry's date as (epoch, '+HHMM' offset) from ``debian/changelog``."""
    try:
        top = next(iter(changelog.Changelog(text, max_blocks=1)))
        parsed = email.utils.parsedate_to_datetime(top.date or "")
    except (StopIteration, changelog.ChangelogParseError, TypeError, ValueError) as exc:
        raise FarmError(
            E.DSC_UNKNOWN,
            f"cannot read the date of the top entry of {where}: {exc}",
            hint="the source package's debian/changelog must start with a well-formed entry",
        ) from None
    offset = parsed.utcoffset()
    minutes = int(offset.total_seconds() // 60) if offset is not None else 0
    sign = "-" if minutes < 0 else "+"
    hh, mm = divmod(abs(minutes), 60)
    return int(parsed.timestamp()), f"{sign}{hh:02d}{mm:02d}"


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
        for entry in para.get("Checksums-Sha256") or []:
            try:
                file, sha256, size = str(entry["name"]), str(entry["sha256"]), int(entry["size"])
            except (KeyError, TypeError, ValueError) as exc:
                raise FarmError(
                    E.DSC_UNKNOWN,
                    f"the Sources index entry for {name} {version} has a malformed Checksums-Sha256 line ({exc})",
                    hint="run 'apt-get update' to fetch the index again",
                ) from None
            if file.endswith(".dsc"):
                found.append(IndexEntry(archive, file, sha256, size))
    return found


def check_dsc_against_index(dsc_path: Path, entries: Sequence[IndexEntry]) -> IndexEntry:
    """The .dsc must match the Sources index; returns the entry it matched (its archive names the import)."""
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
    for entry in mine:
        if entry.dsc_sha256 == actual and entry.dsc_size == dsc_path.stat().st_size:
            return entry
    raise _mismatch(dsc_path, mine[0].dsc_sha256, actual)


def _archive_label(sources_list: Path) -> str:
    """'Origin Codename' of the InRelease an index file belongs to: names the archive independently of the mirror."""
    releases = sorted(
        (
            p
            for p in sources_list.parent.glob("*_InRelease")
            if sources_list.name.startswith(p.name[: -len("InRelease")])
        ),
        key=lambda p: len(p.name),
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


def archive_index(name: str, version: str, lists_dir: Path = APT_LISTS) -> list[IndexEntry]:
    """Every Sources index apt holds, searched for the package."""
    lists = source_lists(lists_dir)
    found: list[IndexEntry] = []
    for path in lists:
        text = run(apt_cat_argv(path)).text
        found += index_entries(text, name, version, _archive_label(path))
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
            raise
    dsc = dest / upstream_dsc_name(name, version)
    if not dsc.is_file():
        raise _unknown(name, version, f"apt-get source did not write {dsc.name}")
    return dsc


def _normalise_modes(root: Path) -> None:
    """0755 for directories and files with an executable bit, 0644 for other files: what git stores anyway."""
    for dirpath, dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)  # noqa: S103 (a source tree, world-readable as git checks it out)
        for n in filenames:
            p = Path(dirpath, n)
            st = p.lstat()
            if stat.S_ISREG(st.st_mode):
                p.chmod(0o755 if st.st_mode & 0o111 else 0o644)
        dirnames.sort()


def _unpack(dsc: Path, dest: Path) -> None:
    with step("dpkg-source -x", log, dsc=dsc.name):
        run(dpkg_source_argv(dsc, dest), env=os.environ | {"LC_ALL": "C"}, umask=UMASK)
    _normalise_modes(dest)


def _commit(git_dir: Path, tree_dir: Path, name: str, version: str, archive: str) -> tuple[str, str, int]:
    clog = tree_dir / "debian" / "changelog"
    if not clog.is_file():
        raise FarmError(E.DSC_UNKNOWN, f"{name}={version} has no debian/changelog", hint="is this a Debian source?")
    epoch, offset = changelog_date(clog.read_text("utf-8", "replace"), f"{name}={version}: debian/changelog")
    env = git_env(epoch, offset)
    run(git_init_argv(git_dir), env=env, umask=UMASK)
    (git_dir / "info").mkdir(exist_ok=True)
    (git_dir / "info" / "attributes").write_text(GIT_ATTRIBUTES)
    index_env = env | {"GIT_INDEX_FILE": str(git_dir / "import.index")}
    # --force: the source's own .gitignore files must not drop files the package ships.
    run(git_argv(git_dir, "add", "--all", "--force", ".", work_tree=tree_dir), cwd=tree_dir, env=index_env)
    tree = run(git_argv(git_dir, "write-tree"), env=index_env).text.strip()
    message = commit_message(name, version, archive).encode()
    commit = run(git_argv(git_dir, "commit-tree", "--no-gpg-sign", tree), env=env, input=message).text.strip()
    run(git_argv(git_dir, "update-ref", "refs/heads/main", commit), env=env)
    run(git_argv(git_dir, "update-ref", f"refs/tags/{tag_name(version)}", commit), env=env)
    (git_dir / "import.index").unlink()
    return commit, tree, epoch


def _read_existing(repo: Path, name: str, version: str) -> ImportedSource:
    env = git_env(0, "+0000")
    ref = f"refs/tags/{tag_name(version)}"
    out = run(git_argv(repo, "log", "-1", "--format=%H %T %ct", ref), env=env).text.split()
    return ImportedSource(name, version, repo, out[0], out[1], tag_name(version), int(out[2]))


def repo_path(cache_dir: Path, name: str, version: str) -> Path:
    return cache_dir / "dsc" / f"{name}_{dep14(version)}.git"


def import_dsc(
    name: str,
    version: str,
    cache_dir: Path,
    *,
    downloaded: Path | None = None,
    lists_dir: Path = APT_LISTS,
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
            return _read_existing(repo, name, version)
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
                _unpack(dsc, tmp / "src")
                with step("commit", log):
                    commit, tree, epoch = _commit(tmp / "repo.git", tmp / "src", name, version, entry.archive)
                os.rename(tmp / "repo.git", repo)
        log.info("imported %s=%s as %s (tree %s)", name, version, commit, tree)
        return ImportedSource(name, version, repo, commit, tree, tag_name(version), epoch)


__all__ = [
    "ImportedSource",
    "IndexEntry",
    "apt_cat_argv",
    "apt_source_argv",
    "check_dsc_against_index",
    "check_dsc_files",
    "dep14",
    "dpkg_source_argv",
    "fetch",
    "git_argv",
    "import_dsc",
    "index_entries",
    "repo_path",
    "tag_name",
]

"""An unpacked Debian source tree as a deterministic git commit.

The commit is made with git plumbing (``write-tree`` + ``commit-tree``: no hooks, no signing, no user configuration)
with a fixed author and committer, the date of the top ``debian/changelog`` entry and a fixed message, and tagged
``debian/VERSION`` (DEP-14). Git stores only what is deterministic here: contents, the executable bit (every file is
normalised to 0644/0755 first), symlinks, and paths in sorted order. It cannot keep empty directories: those in the
source package are not in the commit, and a build that needs one must create it.
"""

from __future__ import annotations

import email.utils
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from debian import changelog

from farm.errors import E, FarmError
from farm.log import step
from farm.run import run

log = logging.getLogger(__name__)

IMPORT_NAME = "MANGOS import"
IMPORT_EMAIL = "import@mangos.invalid"
UMASK = 0o022

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


def dep14(version: str) -> str:
    """A Debian version as a git ref component, per DEP-14: ':' -> '%', '~' -> '_', and '.' never ends a
    component, doubles up or starts '.lock' ('.#' instead)."""
    mangled = version.replace(":", "%").replace("~", "_")
    return re.sub(r"\.(?=\.|$|lock$)", ".#", mangled)


def tag_name(version: str) -> str:
    return f"debian/{dep14(version)}"


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


def normalise_modes(root: Path) -> None:
    """0755 for directories and files with an executable bit, 0644 for other files: what git stores anyway."""
    for dirpath, dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)  # noqa: S103 (a source tree, world-readable as git checks it out)
        for n in filenames:
            p = Path(dirpath, n)
            st = p.lstat()
            if stat.S_ISREG(st.st_mode):
                p.chmod(0o755 if st.st_mode & 0o111 else 0o644)
        dirnames.sort()


def unpack(dsc: Path, dest: Path) -> None:
    with step("dpkg-source -x", log, dsc=dsc.name):
        run(dpkg_source_argv(dsc, dest), env=os.environ | {"LC_ALL": "C"}, umask=UMASK)
    normalise_modes(dest)


def commit_tree(git_dir: Path, tree_dir: Path, name: str, version: str, archive: str) -> tuple[str, str, int]:
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


def read_existing(repo: Path, name: str, version: str) -> ImportedSource:
    env = git_env(0, "+0000")
    ref = f"refs/tags/{tag_name(version)}"
    out = run(git_argv(repo, "log", "-1", "--format=%H %T %ct", ref), env=env).text.split()
    return ImportedSource(name, version, repo, out[0], out[1], tag_name(version), int(out[2]))


def repo_path(cache_dir: Path, name: str, version: str) -> Path:
    return cache_dir / "dsc" / f"{name}_{dep14(version)}.git"

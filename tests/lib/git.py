"""git with a fixed identity and fixed dates, so one content gives one commit id on every run and machine."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

FIXED_DATE = "2026-02-03T04:05:06Z"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Farm Test",
    "GIT_AUTHOR_EMAIL": "test@mangos.invalid",
    "GIT_AUTHOR_DATE": FIXED_DATE,
    "GIT_COMMITTER_NAME": "Farm Test",
    "GIT_COMMITTER_EMAIL": "test@mangos.invalid",
    "GIT_COMMITTER_DATE": FIXED_DATE,
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(cwd: Path, *args: str, date: str = FIXED_DATE) -> str:
    """``git ARGS`` in ``cwd``; its stdout, stripped. Raises CalledProcessError on failure."""
    env = dict(os.environ) | GIT_ENV | {"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


def commit_files(
    repo: Path,
    files: dict[str, str],
    *,
    message: str = "update",
    executable: tuple[str, ...] = (),
    tag: str | None = None,
    date: str = FIXED_DATE,
) -> str:
    """Write ``files`` (path -> text) into ``repo`` (made a repository on branch main if it is not one yet) and
    commit them all; returns the commit id."""
    repo.mkdir(parents=True, exist_ok=True)
    if not (repo / ".git").exists():
        git(repo, "init", "-q", "-b", "main")
    for rel, text in files.items():
        p = repo / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        if rel in executable:
            p.chmod(0o755)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message, date=date)
    if tag:
        git(repo, "tag", "-f", tag)
    return git(repo, "rev-parse", "HEAD")


def make_repo(path: Path, files: dict[str, str] | None = None, *, message: str = "src") -> str:
    """A new repository at ``path`` with ``files`` (default: a README and one data file) in one commit."""
    path.mkdir(parents=True)
    if files is None:
        files = {"README": "source\n", "src/data.txt": "some data\n" * 20}
    return commit_files(path, files, message=message)

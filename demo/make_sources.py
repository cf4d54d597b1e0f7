"""Turn demo/src/* into git repositories with fixed authorship and dates, so their commits are identical on
every machine and the recipes in recipes/ can pin them. Usage: python demo/make_sources.py [DEST]."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENV = {
    "GIT_AUTHOR_NAME": "MANGOS demo",
    "GIT_AUTHOR_EMAIL": "demo@mangos.invalid",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
    "GIT_COMMITTER_NAME": "MANGOS demo",
    "GIT_COMMITTER_EMAIL": "demo@mangos.invalid",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(*args: str, cwd: Path) -> str:
    env = dict(os.environ) | ENV
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def make_repo(src: Path, dest: Path) -> str:
    """A bare repository at ``dest`` whose single commit holds ``src``; returns the commit id."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "work"
        shutil.copytree(src, work)
        git("init", "-q", "-b", "main", cwd=work)
        git("add", "-A", cwd=work)
        git("commit", "-q", "-m", f"{src.name} 1.0.0", cwd=work)
        git("tag", "v1.0.0", cwd=work)
        commit = git("rev-parse", "HEAD", cwd=work).strip()
        if dest.exists():
            shutil.rmtree(dest)
        git("clone", "-q", "--bare", str(work), str(dest), cwd=Path(tmp))
    return commit


def main() -> int:
    dest = (Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "git").resolve()
    dest.mkdir(parents=True, exist_ok=True)
    for src in sorted((HERE / "src").iterdir()):
        commit = make_repo(src, dest / f"{src.name}.git")
        print(f"{src.name} {commit}")  # noqa: T201 - a script's output
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The build root a Debian buildd gives a package build: a named build user with a home, and a buildd's environment.

On Debian's buildds sbuild runs ``dpkg-buildpackage`` as a user that has passwd and group entries in the chroot
(``sbuild``, group ``sbuild``, "Debian source builder"), started through ``runuser`` (so ``USER``/``LOGNAME`` name
it), with ``LC_ALL=C.UTF-8``, ``SHELL=/bin/sh`` and sbuild's ``PATH``. Test suites rely on this: findutils'
dejagnu suite runs ``whoami``, which fails for a uid without a name. This module is pure: it says what the build
root must hold and what the build's environment is; :mod:`farm.build.debian` puts it in place.

Invariants:

- the build user has a passwd entry (name, uid, gid, home, shell) and a group of the same name and id, so
  ``whoami``, ``id -un``, ``getent passwd $(id -u)`` and ``~`` work; the entries are added only where the build
  root has none of that name (an environment that already has the user keeps its own);
- unlike sbuild (``HOME=/sbuild-nonexistent``), the home exists and is the user's, empty at the start of every
  build: the passwd entry and ``$HOME`` agree;
- ``DEB_BUILD_OPTIONS`` is the recipe's words (in recipe order) then the worker's ``parallel=N``, last; the build
  profiles reach both ``apt-get build-dep`` (which build-dependencies apply) and ``dpkg-buildpackage``;
- what the worker's machine decides (``parallel=N``, the memory limit, the timeout) is recorded in the provenance,
  never in the build key (:func:`provenance_parameters`).

The build root's version is :data:`farm.recipes.model.BUILDD`, part of every debian recipe's content: a change
here that can change what a build produces is a new version, so it is a new build key.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from farm.recipes.model import BUILDD

__all__ = [
    "BUILDD",
    "BuildUser",
    "account_script",
    "build_dep_argv",
    "build_env",
    "build_user",
    "deb_build_options",
    "dpkg_buildpackage_argv",
    "provenance_parameters",
]

USER = "sbuild"
GECOS = "Debian source builder,,,"
LOGIN_SHELL = "/bin/bash"  # sbuild's useradd --shell
SHELL = "/bin/sh"  # sbuild's $SHELL for the build
HOME = "/build/home"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # sbuild's default PATH


@dataclass(frozen=True)
class BuildUser:
    """The account dpkg-buildpackage runs as: uid = gid, a group of the same name."""

    name: str = USER
    uid: int = 1000
    home: str = HOME

    def passwd_line(self) -> str:
        return f"{self.name}:x:{self.uid}:{self.uid}:{GECOS}:{self.home}:{LOGIN_SHELL}"

    def group_line(self) -> str:
        return f"{self.name}:x:{self.uid}:"


def build_user(uid: int, name: str = "") -> BuildUser:
    """The build user for ``uid``; ``name`` overrides the buildd's (a recheck varies it)."""
    return BuildUser(name=name or USER, uid=uid)


def account_script(user: BuildUser) -> list[str]:
    """Shell lines, run as root inside the build root before the build: the user's group and passwd entries where
    the root has none of that name, and its home, empty and owned by it."""
    q = shlex.quote
    lines = []
    for db, line in (("/etc/group", user.group_line()), ("/etc/passwd", user.passwd_line())):
        lines.append(f"grep -q {q('^' + user.name + ':')} {db} || printf '%s\\n' {q(line)} >> {db}")
    lines += [f"rm -rf {q(user.home)}", f"install -d -m 0755 -o {user.uid} -g {user.uid} {q(user.home)}"]
    return lines


def deb_build_options(options: Sequence[str], jobs: int) -> str:
    """DEB_BUILD_OPTIONS: the recipe's words, then the worker's parallelism."""
    return " ".join([*options, f"parallel={max(1, jobs)}"])


def build_env(user: BuildUser, *, epoch: int, jobs: int, options: Sequence[str] = ()) -> dict[str, str]:
    """The whole environment dpkg-buildpackage starts with (``env -i``): nothing of the worker's."""
    return {
        "PATH": PATH,
        "HOME": user.home,
        "USER": user.name,
        "LOGNAME": user.name,
        "SHELL": SHELL,
        "SOURCE_DATE_EPOCH": str(epoch),
        "TZ": "UTC",
        "LC_ALL": "C.UTF-8",
        "LANG": "C.UTF-8",
        "DEB_BUILD_OPTIONS": deb_build_options(options, jobs),
    }


def _profiles_flag(profiles: Sequence[str]) -> list[str]:
    return [f"--build-profiles={','.join(profiles)}"] if profiles else []


def dpkg_buildpackage_argv(profiles: Sequence[str] = (), build_type: str = "-b") -> list[str]:
    """Binary-only (``-b``; a binNMU ``-B``: :func:`farm.build.binnmu.build_type`), unsigned, with the recipe's
    build profiles."""
    return ["dpkg-buildpackage", build_type, "-us", "-uc", *_profiles_flag(profiles)]


def build_dep_argv(profiles: Sequence[str] = ()) -> list[str]:
    """Install the build-dependencies of the source tree in the current directory, under the same profiles."""
    return ["apt-get", "-q", "-y", "--no-install-recommends", *_profiles_flag(profiles), "build-dep", "./"]


def provenance_parameters(
    *, options: Sequence[str], profiles: Sequence[str], jobs: int, memory: int, timeout: float
) -> dict[str, Any]:
    """What a debian build was run with, for the provenance: the options and profiles (also in the key, through
    the recipe) and the machine's share (parallel=N, memory, timeout), which are in no key."""
    return {
        "debBuildOptions": deb_build_options(options, jobs),
        "buildProfiles": list(profiles),
        "buildd": BUILDD,
        "resources": {"parallel": max(1, jobs), "memoryBytes": int(memory), "timeoutSeconds": int(timeout)},
    }

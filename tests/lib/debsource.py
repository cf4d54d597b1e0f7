"""Tiny native Debian source packages in a local git repository, and the debian build request for one.

Enough for dpkg-buildpackage in the pinned buildd environment (no debhelper: the rules call dpkg-gencontrol and
dpkg-deb themselves), so a real Debian build of one takes seconds. ``build`` lines are the recipe of
``debian/rules``' build target: what a test wants to see the build root do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from farm.build import BuildRequest
from farm.identity import build_key
from farm.recipes import Recipe, Source
from tests.lib.git import commit_files, git

MAINTAINER = "Farm Test <test@mangos.invalid>"
ENVIRONMENT = "bookworm-amd64"


def _rules(name: str, build: Sequence[str]) -> str:
    steps = "".join(f"\t{line}\n" for line in build)
    return (
        "#!/usr/bin/make -f\n"
        f"D := debian/tmp/usr/share/{name}\n"
        f"build build-arch build-indep:\n{steps}"
        "binary binary-arch binary-indep: build\n"
        "\trm -rf debian/tmp\n"
        "\tmkdir -p debian/tmp/DEBIAN $(D)\n"
        "\techo built > $(D)/built\n"
        "\tchmod -R u=rwX,go=rX debian/tmp\n"
        f"\tdpkg-gencontrol -p{name} -Pdebian/tmp\n"
        "\tdpkg-deb --root-owner-group --build debian/tmp ..\n"
        "clean:\n"
        "\trm -rf debian/tmp debian/files\n"
    )


def native_package(
    repo: Path, name: str, build: Sequence[str] = (), *, build_depends: str = "", extra: Mapping[str, str] | None = None
) -> str:
    """Commit a native package ``name`` 1.0 (Architecture: all) to ``repo``, with ``extra`` files; the commit."""
    bd = f"Build-Depends: {build_depends}\n" if build_depends else ""
    control = (
        f"Source: {name}\nSection: misc\nPriority: optional\nMaintainer: {MAINTAINER}\n{bd}"
        "Standards-Version: 4.6.2\nRules-Requires-Root: no\nVcs-Git: https://salsa.example/test/probe.git\n\n"
        f"Package: {name}\nArchitecture: all\nDescription: a test package\n Built by the farm's tests.\n"
    )
    changelog = (
        f"{name} (1.0) unstable; urgency=medium\n\n  * Test.\n\n -- {MAINTAINER}  Tue, 03 Feb 2026 04:05:06 +0000\n"
    )
    files = {
        "debian/control": control,
        "debian/changelog": changelog,
        "debian/rules": _rules(name, build),
        "debian/source/format": "3.0 (native)\n",
    } | dict(extra or {})
    return commit_files(repo, files, executable=("debian/rules",))


def debian_recipe(
    repo: Path, name: str, commit: str, *, options: Sequence[str] = (), profiles: Sequence[str] = ()
) -> Recipe:
    return Recipe(
        name=name,
        version="1.0",
        source=Source(git=str(repo), commit=commit),
        steps=(),
        outputs=("*.deb", "*.buildinfo"),
        kind="debian",
        environment=ENVIRONMENT,
        options=tuple(options),
        profiles=tuple(profiles),
    )


def debian_request(recipe: Recipe, repo: Path, environment_digest: str) -> BuildRequest:
    """The request a coordinator would send for ``recipe`` (a git source in ``repo``) in the given environment."""
    commit = recipe.source.commit
    tree = git(repo, "rev-parse", f"{commit}^{{tree}}")
    return BuildRequest(
        build_key=build_key(recipe.content(), commit, tree, environment_digest, {}),
        recipe=recipe.content(),
        recipe_path=str(repo / f"{recipe.name}.toml"),
        fetch_url=str(repo),
        tree=tree,
        environment=environment_digest,
    )

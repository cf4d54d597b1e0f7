"""A recipe: one source package pinned to a commit, and how to build it; validated strictly on the way in.

A recipe pins its source to a full git commit. A human ``ref`` (tag or branch) may be given, but it is only
checked against the commit when the source is fetched, never followed: the commit is the identity.

A recipe's :meth:`Recipe.content` is what its build key and provenance record (everything but where the file lies);
its patches (:mod:`farm.recipes.patches`) and inputs (:mod:`farm.recipes.inputs`) are recorded there by path and
sha256, and only when it has some. A script recipe may name a pinned build environment (``build.environment``) to
build in instead of the host's /usr; that too is recorded only when given.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from farm.errors import ErrorGroup, FarmError
from farm.identity import digest_of
from farm.recipes.binnmu import parse_binnmu
from farm.recipes.bootstrap import parse_bootstrap
from farm.recipes.inputs import Input, parse_inputs
from farm.recipes.needs import parse_needs
from farm.recipes.patches import Patch, parse_patches
from farm.recipes.schema import (
    check_depends,
    check_identity,
    check_outputs,
    check_source,
    check_table,
    non_empty,
    parse_arch_all,
    parse_build_flags,
    parse_debian,
    parse_env,
    str_field,
    string_list,
    subtable,
)

BUILDD = 1
"""The version of the build root a debian build runs in (:mod:`farm.build.buildd`: the build user's passwd and
group entries, home and environment). It is part of a debian recipe's content, so a change to the build root is a
change of build key; bump it with every such change."""


@dataclass(frozen=True)
class Source:
    git: str
    commit: str
    ref: str | None = None
    dsc: str = ""  # NAME=VERSION of a Debian source package, imported deterministically (farm.sources.dsc)


@dataclass(frozen=True)
class Recipe:
    name: str
    version: str
    source: Source
    steps: tuple[str, ...]
    outputs: tuple[str, ...]
    build_depends: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    description: str = ""
    kind: str = "script"
    environment: str = ""
    archive: tuple[tuple[tuple[str, str], ...], ...] = ()  # pins, each as sorted (key, value) pairs
    path: Path = Path("<memory>")
    patches: tuple[Patch, ...] = ()  # applied in order on top of the commit
    inputs: tuple[Input, ...] = ()  # files the build reads at $INPUTS/<file>
    bootstrap: tuple[tuple[str, str], ...] = ()  # (recipe, archive version) built against as archive binaries
    options: tuple[str, ...] = ()  # a debian build's DEB_BUILD_OPTIONS words (never parallel=: the worker's)
    profiles: tuple[str, ...] = ()  # a debian build's build profiles
    needs: tuple[str, ...] = ()  # capabilities declared (farm.recipes.needs): scheduling only, not content
    binnmu: int = 0  # a debian build's binNMU number (farm.recipes.binnmu); 0: none
    binnmu_message: str = ""  # its changelog entry's reason
    arch_all: bool = True  # a debian build's Architecture: all packages built too (dpkg-buildpackage -b, not -B)

    def content(self) -> dict[str, Any]:
        """What a build key and provenance record of the recipe: everything but where the file lies."""
        source: dict[str, Any] = {"commit": self.source.commit}
        if self.source.dsc:
            source["dsc"] = self.source.dsc
        else:
            source["git"] = self.source.git
        if self.source.ref:
            source["ref"] = self.source.ref
        build: dict[str, Any] = {"steps": list(self.steps), "env": dict(self.env)}
        if self.kind != "script":  # script recipes keep the content (and so the keys) they always had
            build |= {"kind": self.kind, "environment": self.environment, "archive": self.pins(), "buildd": BUILDD}
            if self.options:  # recorded only when given: the key changes only with what the build is asked to do
                build["options"] = list(self.options)
            if self.profiles:
                build["profiles"] = list(self.profiles)
            if self.binnmu:  # likewise: a recipe without a binNMU keeps its key
                build |= {"binnmu": self.binnmu, "binnmu-message": self.binnmu_message}
            if not self.arch_all:  # likewise: a recipe without arch-all = false keeps its key
                build["arch-all"] = False
        elif self.environment:  # a script recipe in a pinned environment (none had one before: keys unchanged)
            build["environment"] = self.environment
        content: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "build-depends": list(self.build_depends),
            "outputs": list(self.outputs),
            "source": source,
            "build": build,
        }
        if self.patches:  # a recipe without patches keeps the content (and so the keys) it always had
            content["patches"] = [p.to_json() for p in self.patches]
        if self.inputs:  # likewise for inputs
            content["inputs"] = [i.to_json() for i in self.inputs]
        if self.bootstrap:  # likewise for bootstrap edges
            content["bootstrap"] = [{"recipe": r, "version": v} for r, v in self.bootstrap]
        return content

    def pins(self) -> list[dict[str, str]]:
        return [dict(p) for p in self.archive]

    @property
    def digest(self) -> str:
        return digest_of(self.content())

    @property
    def git_location(self) -> str:
        """Where to fetch from: URLs as written, relative paths resolved against the recipe's directory."""
        if self.source.dsc:
            return f"dsc:{self.source.dsc}"
        url = self.source.git
        if "://" in url or url.startswith(("git@", "/")):
            return url
        return _resolved(os.path.dirname(self.path), url)  # a string: no Path made and hashed per call

    @classmethod
    def from_content(cls, content: Mapping[str, Any], path: Path = Path("<memory>")) -> Recipe:
        """Rebuild a recipe from :meth:`content` (how workers receive it): its patches come pinned by digest."""
        return parse(dict(content), path, pinned=True)


@lru_cache(maxsize=4096)
def _resolved(directory: str, url: str) -> str:
    """``url`` resolved against ``directory`` (empty: the working directory): once per pair, as a run of thousands
    of recipes shares a few."""
    return str((Path(directory) / url).resolve())


def parse(data: dict[str, Any], path: Path, *, pinned: bool = False) -> Recipe:
    """Validate one recipe document. Raises ErrorGroup listing every problem in it. ``pinned``: a recipe's
    :meth:`~Recipe.content`, whose patches are ``{file, sha256}`` rather than paths to read."""
    errors: list[FarmError] = []
    check_table(data, "", path, errors)
    source, build = subtable(data, "source"), subtable(data, "build")
    if isinstance(data.get("source"), dict):
        check_table(source, "source", path, errors)
    if isinstance(data.get("build"), dict):
        check_table(build, "build", path, errors)
    check_identity(data, path, errors)
    check_source(source, path, errors)
    name = str_field(data, "name")
    depends = string_list(data.get("build-depends", []), path, "build-depends", errors, '["zlib"]')
    check_depends(depends, name, path, errors)
    steps = string_list(build.get("steps", []), path, "build.steps", errors, '["make"]')
    if build.get("kind", "script") == "script":  # a debian build's step is dpkg-buildpackage
        non_empty(build, "steps", "build.steps", "one step", path=path, errors=errors)
    outputs = string_list(data.get("outputs", []), path, "outputs", errors, '["bin/hello"]')
    non_empty(data, "outputs", "outputs", "one path", path=path, errors=errors)
    check_outputs(outputs, path, errors)
    env = parse_env(build, path, errors)
    kind, environment, pins = parse_debian(build, path, errors, present=isinstance(data.get("build"), dict))
    options, profiles = parse_build_flags(build, kind, BUILDD, path, errors)
    binnmu, binnmu_message = parse_binnmu(build, kind, path, errors)
    arch_all = parse_arch_all(build, kind, path, errors)
    patches = parse_patches(data.get("patches", []), path, errors, pinned=pinned)
    inputs = parse_inputs(data.get("inputs", []), path, errors, pinned=pinned)
    bootstrap = parse_bootstrap(data.get("bootstrap", []), name, depends, path, errors)
    needs = parse_needs(data.get("needs", []), path, errors)
    if errors:
        raise ErrorGroup(errors)
    ref = source.get("ref")
    return Recipe(
        name=name,
        version=str_field(data, "version"),
        description=str_field(data, "description"),
        source=Source(
            git=str_field(source, "git"),
            commit=str_field(source, "commit"),
            ref=ref if isinstance(ref, str) else None,
            dsc=str_field(source, "dsc"),
        ),
        kind=kind,
        environment=environment,
        archive=pins,
        steps=steps,
        outputs=outputs,
        build_depends=depends,
        env=env,
        path=path,
        patches=patches,
        inputs=inputs,
        bootstrap=bootstrap,
        options=options,
        profiles=profiles,
        needs=needs,
        binnmu=binnmu,
        binnmu_message=binnmu_message,
        arch_all=arch_all,
    )

"""The image lock file (``image.lock``): the exact package set of an image, resolved once, like Cargo.lock.

Without a lock, the archive pins of an image are resolved from the host's *current* apt lists at every build, so an
``apt-get update`` between two builds can change the image. ``mangos-farm image lock`` resolves the closure once
and writes this file; ``image build --lock`` then takes exactly these pins (downloaded by version, checked against
the locked sha256, see :func:`farm.archive.ensure_pins`) and never asks apt to resolve anything. Farm-built
packages are locked to their recipe and source commit, and their digest must still be the one their signed
provenance is about. An archive package that stands in for a farm build older than the archive's version (``image
lock --allow-archive-fallback``) is locked with that reason, so a locked build keeps the decision.

The file is TOML, written by :func:`dumps` in a fixed order (sorted packages, one block per package) so that two
locks diff line by line. Nothing in it is trusted: :func:`parse` checks every key and type, and a lock that no
longer matches the recipes or the archive stops the build with an error naming the lock file and the package.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm.archive import Pin
from farm.errors import E, FarmError
from farm.tomlfile import parse_toml

LOCK_VERSION = 1
DEFAULT_NAME = "image.lock"
FARM = "farm"
ARCHIVE = "archive"
REFRESH = "refresh it with 'mangos-farm image lock' (then review the diff)"

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
_TOP_KEYS = {"lock-version", "source-date-epoch", "profile", "requested", "profile-requested", "recipes"}
_PACKAGE_TABLES = {"package": "base", "profile-package": "profile"}
_PKG_KEYS = ("name", "version", "arch", "origin", "sha256", "recipe", "commit", "reason")


@dataclass(frozen=True, order=True)
class LockedPackage:
    """One package of the image: exact version, architecture and sha256; for a farm build, its recipe and commit."""

    name: str
    arch: str
    version: str
    sha256: str
    origin: str  # FARM or ARCHIVE
    recipe: str = ""
    commit: str = ""
    reason: str = ""  # an archive package standing in for an older farm build: why

    @property
    def pin(self) -> Pin:
        return Pin(self.name, self.version, self.arch, self.sha256)

    def to_dict(self) -> dict[str, str]:
        data = {"name": self.name, "version": self.version, "arch": self.arch, "origin": self.origin}
        data["sha256"] = self.sha256
        if self.origin == FARM:
            data |= {"recipe": self.recipe, "commit": self.commit}
        elif self.reason:
            data["reason"] = self.reason
        return data


@dataclass(frozen=True)
class ImageLock:
    """What ``image lock`` resolved. ``recipes`` is every Debian recipe (name -> commit) of the recipe set then."""

    source_date_epoch: int
    requested: tuple[str, ...]
    packages: tuple[LockedPackage, ...]
    recipes: tuple[tuple[str, str], ...] = ()
    profile: str = ""
    profile_requested: tuple[str, ...] = ()
    profile_packages: tuple[LockedPackage, ...] = ()
    path: Path | None = None  # where it was read from (named in errors)

    @property
    def where(self) -> str:
        return str(self.path) if self.path else DEFAULT_NAME

    def archive_pins(self) -> list[Pin]:
        return sorted(p.pin for p in self.packages if p.origin == ARCHIVE)

    def farm(self) -> list[LockedPackage]:
        return [p for p in self.packages if p.origin == FARM]

    def reasons(self) -> dict[tuple[str, str], str]:
        """(name, arch) -> why the archive's package stands in for a farm build, for every such locked package."""
        return {(p.name, p.arch): p.reason for p in (*self.packages, *self.profile_packages) if p.reason}

    def to_json(self) -> dict[str, Any]:
        return {
            "lock-version": LOCK_VERSION,
            "source-date-epoch": self.source_date_epoch,
            "profile": self.profile,
            "requested": sorted(self.requested),
            "profile-requested": sorted(self.profile_requested),
            "recipes": dict(sorted(self.recipes)),
            "package": [p.to_dict() for p in sorted(self.packages)],
            "profile-package": [p.to_dict() for p in sorted(self.profile_packages)],
        }

    # -- checks against the present (the recipes, the farm's verified builds) ----------------------------------
    def error(self, message: str, *, field: str | None = None, hint: str = REFRESH) -> FarmError:
        return FarmError(E.IMAGE_LOCK, message, file=self.where, field=field, hint=hint)

    def check_recipes(self, current: Mapping[str, str]) -> None:
        """The recipe set must be the one locked: a changed commit, or a recipe added or removed, makes it stale."""
        locked = dict(self.recipes)
        for name in sorted(set(locked) | set(current)):
            was, now = locked.get(name), current.get(name)
            if was == now:
                continue
            if was is None:
                what = f"recipe {name} (at {str(now)[:12]}) is not in the lock"
            elif now is None:
                what = f"recipe {name} is locked at {was[:12]} but is no longer in the recipes"
            else:
                what = f"recipe {name} is locked at commit {was[:12]} but the recipe now pins {now[:12]}"
            raise self.error(what + ": the lock is stale", field=f"recipes.{name}")

    def check_requested(self, required: Iterable[str]) -> None:
        """Every package the image must have (base packages, payload) must have been requested when locking."""
        missing = sorted(set(required) - set(self.requested))
        if missing:
            raise self.error(
                f"the image now requests {', '.join(missing)}, which the lock was not resolved for", field="requested"
            )

    def check_farm(self, verified: Mapping[str, tuple[str, str, str]]) -> None:
        """``verified``: name -> (sha256, recipe, commit) of the farm .debs checked against signed provenance now.

        Each locked farm package must be among them with the locked recipe, commit and digest."""
        for i, p in enumerate(sorted(self.packages)):
            if p.origin != FARM:
                continue
            got = verified.get(p.name)
            if got is None:
                raise self.error(
                    f"farm package {p.name} ({p.recipe} at {p.commit[:12]}) has no verified build in the store",
                    field=f"package[{i}]",
                    hint=f"build it ('mangos-farm rebuild' of recipe {p.recipe}) or {REFRESH}",
                )
            sha, recipe, commit = got
            if (recipe, commit) != (p.recipe, p.commit):
                raise self.error(
                    f"farm package {p.name} is locked to {p.recipe} at {p.commit[:12]}, but its verified build is "
                    f"{recipe} at {commit[:12]}",
                    field=f"package[{i}].commit",
                )
            if sha != p.sha256:
                raise self.error(
                    f"farm package {p.name}: the verified build's sha256 is {sha}, the lock says {p.sha256}",
                    field=f"package[{i}].sha256",
                    hint=f"the recipe was rebuilt to other bytes (not reproducible?) or the lock was edited: {REFRESH}",
                )

    def check_sde(self, environ_value: str) -> int:
        """The SOURCE_DATE_EPOCH of a locked build: the lock's, unless the environment sets the same one."""
        if environ_value and environ_value != str(self.source_date_epoch):
            raise self.error(
                f"SOURCE_DATE_EPOCH={environ_value} but the lock was made with {self.source_date_epoch}",
                field="source-date-epoch",
                hint="unset SOURCE_DATE_EPOCH (the lock's is used), or lock again with the new value: "
                f"'SOURCE_DATE_EPOCH={environ_value} mangos-farm image lock'",
            )
        return self.source_date_epoch


# -- writing ----------------------------------------------------------------------------------------------------
def _s(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string


def _strings(values: Sequence[str]) -> str:
    if not values:
        return "[]"
    return "[\n" + "".join(f"  {_s(v)},\n" for v in sorted(values)) + "]"


def dumps(lock: ImageLock) -> str:
    """Canonical TOML: fixed key order, sorted lists and packages, one block per package (diffs stay readable)."""
    lines = [
        "# MANGOS image lock: the exact packages of the image. Written by `mangos-farm image lock`;",
        "# regenerate it rather than edit it. `mangos-farm image build --lock FILE` installs exactly these.",
        f"lock-version = {LOCK_VERSION}",
        f"source-date-epoch = {lock.source_date_epoch}",
        f"profile = {_s(lock.profile)}",
        f"requested = {_strings(lock.requested)}",
        f"profile-requested = {_strings(lock.profile_requested)}",
        "",
        "[recipes]",
        *(f"{_s(name)} = {_s(commit)}" for name, commit in sorted(lock.recipes)),
    ]
    for table, packages in (("package", lock.packages), ("profile-package", lock.profile_packages)):
        for p in sorted(packages):
            lines += ["", f"[[{table}]]", *(f"{k} = {_s(v)}" for k, v in p.to_dict().items())]
    return "\n".join(lines) + "\n"


# -- reading ----------------------------------------------------------------------------------------------------
def _bad(path: Path, field: str, message: str) -> FarmError:
    return FarmError(
        E.IMAGE_LOCK,
        message,
        file=path,
        field=field,
        hint="the lock is damaged or hand-edited: " + REFRESH,
    )


def _str(path: Path, data: Mapping[str, Any], key: str, field: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise _bad(path, field, f"{field} must be a string, not {type(value).__name__}")
    return value


def _str_list(path: Path, value: Any, field: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(path, field, f"{field} must be a list of strings")
    return tuple(value)


def _package(path: Path, data: Any, field: str) -> LockedPackage:
    if not isinstance(data, dict):
        raise _bad(path, field, f"{field} must be a table")
    unknown = sorted(set(data) - set(_PKG_KEYS))
    if unknown:
        raise _bad(path, f"{field}.{unknown[0]}", f"{field} has unknown key(s) {', '.join(unknown)}")
    name, version, arch, origin, sha = (_str(path, data, k, f"{field}.{k}") for k in _PKG_KEYS[:5])
    if origin not in (FARM, ARCHIVE):
        raise _bad(path, f"{field}.origin", f"{field}.origin must be 'farm' or 'archive', not {origin!r}")
    if not _SHA_RE.match(sha):
        raise _bad(path, f"{field}.sha256", f"{field}.sha256 of {name} is not 64 lowercase hex digits")
    recipe = commit = reason = ""
    if origin == FARM:
        recipe, commit = _str(path, data, "recipe", f"{field}.recipe"), _str(path, data, "commit", f"{field}.commit")
        if not _COMMIT_RE.match(commit):
            raise _bad(path, f"{field}.commit", f"{field}.commit of {name} is not a full hex commit id")
        if "reason" in data:
            raise _bad(
                path, f"{field}.reason", f"{field} ({name}) is a farm build: only an archive package has a reason"
            )
    elif "recipe" in data or "commit" in data:
        raise _bad(path, f"{field}.recipe", f"{field} ({name}) comes from the archive and cannot name a recipe/commit")
    elif "reason" in data:
        reason = _str(path, data, "reason", f"{field}.reason")
    return LockedPackage(name, arch, version, sha, origin, recipe, commit, reason)


def parse(text: str, path: Path) -> ImageLock:
    """A lock from its text; every key and type checked, errors name the file and the field."""
    data = parse_toml(text, path, E.IMAGE_LOCK, hint="the lock is damaged or hand-edited: " + REFRESH)
    unknown = sorted(set(data) - _TOP_KEYS - set(_PACKAGE_TABLES))
    if unknown:
        raise _bad(path, unknown[0], f"unknown key(s) {', '.join(unknown)}")
    if data.get("lock-version") != LOCK_VERSION:
        raise _bad(
            path, "lock-version", f"lock-version is {data.get('lock-version')!r}; this farm reads {LOCK_VERSION}"
        )
    sde = data.get("source-date-epoch")
    if not isinstance(sde, int) or isinstance(sde, bool) or sde < 0:
        raise _bad(path, "source-date-epoch", "source-date-epoch must be a non-negative integer (seconds)")
    recipes = data.get("recipes", {})
    if not isinstance(recipes, dict) or not all(isinstance(v, str) for v in recipes.values()):
        raise _bad(path, "recipes", "recipes must be a table of recipe name = commit strings")
    sets: dict[str, list[LockedPackage]] = {}
    for table, kind in _PACKAGE_TABLES.items():
        raw = data.get(table, [])
        if not isinstance(raw, list):
            raise _bad(path, table, f"{table} must be an array of tables ([[{table}]])")
        pkgs = [_package(path, item, f"{table}[{i}]") for i, item in enumerate(raw)]
        seen: set[tuple[str, str]] = set()
        for p in pkgs:
            if (p.name, p.arch) in seen:
                raise _bad(path, table, f"{p.name} ({p.arch}) is locked twice in {table}")
            seen.add((p.name, p.arch))
        sets[kind] = pkgs
    profile = data.get("profile", "")
    if not isinstance(profile, str):
        raise _bad(path, "profile", "profile must be a string")
    return ImageLock(
        source_date_epoch=sde,
        requested=_str_list(path, data.get("requested", []), "requested"),
        packages=tuple(sorted(sets["base"])),
        recipes=tuple(sorted(recipes.items())),
        profile=profile,
        profile_requested=_str_list(path, data.get("profile-requested", []), "profile-requested"),
        profile_packages=tuple(sorted(sets["profile"])),
        path=path,
    )


def load(path: Path) -> ImageLock:
    try:
        text = path.read_text()
    except OSError as exc:
        raise FarmError(
            E.IMAGE_LOCK,
            f"cannot read the image lock: {exc.strerror}",
            file=path,
            hint="make one with 'mangos-farm image lock -o " + str(path) + "'",
        ) from None
    return parse(text, path)


__all__ = ["ARCHIVE", "DEFAULT_NAME", "FARM", "ImageLock", "LockedPackage", "dumps", "load", "parse"]

"""The image's package set: every package with its version, sha256 and origin (a farm build or the archive).

The set's digest names it: the root tree's cache key and the image version derive from it. An archive package
taken in place of a farm build that was older than the archive's (``--allow-archive-fallback``) carries the reason.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from farm.image.lock import ImageLock, LockedPackage

FARM = "farm"
ARCHIVE = "archive"


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    arch: str
    sha256: str
    origin: str  # FARM or ARCHIVE
    path: Path
    recipe: str = ""
    commit: str = ""
    build_key: str = ""
    builder: str = ""
    keyid: str = ""
    statement: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    reason: str = ""  # why an archive package stands in for a farm build ("farm build X older than archive Y")

    @property
    def filename(self) -> str:
        return self.path.name

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "arch": self.arch,
            "sha256": self.sha256,
            "origin": self.origin,
            "file": self.filename,
        }
        if self.origin == FARM:
            data |= {
                "recipe": self.recipe,
                "commit": self.commit,
                "build_key": self.build_key,
                "builder": self.builder,
                "keyid": self.keyid,
            }
        if self.reason:
            data["reason"] = self.reason
        return data


@dataclass(frozen=True)
class Inputs:
    packages: tuple[Package, ...]
    requested: tuple[str, ...]
    # What else an image lock records (not part of the digest: the image itself does not change with them).
    recipes: tuple[tuple[str, str], ...] = ()  # every Debian recipe -> pinned commit
    profile: str = ""
    profile_requested: tuple[str, ...] = ()
    profile_packages: tuple[Package, ...] = ()  # the profile sysext's archive packages, beyond the base image

    @property
    def digest(self) -> str:
        """Identifies the package set: the rootfs cache key and the image version derive from it."""
        doc = [[p.name, p.version, p.arch, p.sha256] for p in self.packages]
        return hashlib.sha256(json.dumps([doc, list(self.requested)]).encode()).hexdigest()

    def farm(self) -> list[Package]:
        return [p for p in self.packages if p.origin == FARM]

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "requested": list(self.requested),
            "packages": [p.to_json() for p in self.packages],
        }

    def lock(self, sde: int) -> ImageLock:
        """The lock that repeats this resolution (``out/image.lock`` of a build, ``mangos-farm image lock``)."""

        def locked(p: Package) -> LockedPackage:
            return LockedPackage(p.name, p.arch, p.version, p.sha256, p.origin, p.recipe, p.commit, p.reason)

        return ImageLock(
            source_date_epoch=sde,
            requested=self.requested,
            packages=tuple(sorted(locked(p) for p in self.packages)),
            recipes=self.recipes,
            profile=self.profile,
            profile_requested=self.profile_requested,
            profile_packages=tuple(sorted(locked(p) for p in self.profile_packages)),
        )

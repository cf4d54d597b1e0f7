"""One archive package pinned: the exact version and architecture a build or an image installs, and its sha256."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from farm.errors import E, RecipeError

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, order=True)
class Pin:
    """One archive package a build installs: exact version and architecture; sha256 once downloaded."""

    package: str
    version: str
    arch: str
    sha256: str = ""

    @property
    def spec(self) -> str:
        return f"{self.package}={self.version}"

    def to_toml(self) -> dict[str, str]:
        return {"package": self.package, "version": self.version, "arch": self.arch, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Pin:
        try:
            pin = cls(str(data["package"]), str(data["version"]), str(data["arch"]), str(data.get("sha256", "")))
        except KeyError as exc:
            raise RecipeError(
                E.RECIPE_MISSING,
                f"an archive pin has no {exc.args[0]!r}",
                field="build.archive",
                hint='each pin is { package = "...", version = "...", arch = "...", sha256 = "<64 hex>" }',
            ) from None
        if pin.sha256 and not _SHA_RE.match(pin.sha256):
            raise RecipeError(
                E.RECIPE_VALUE,
                f"the pin {pin.spec} has a sha256 that is not 64 lowercase hex digits",
                field="build.archive",
                hint="regenerate the recipe with 'mangos-farm recipes import'",
            )
        return pin

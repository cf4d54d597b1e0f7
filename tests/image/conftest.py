"""Fixtures shared by the image tests: one image of archive packages only, built cold as root, per session."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.lib.cli import Farm
from tests.lib.tools import IN_CI, require

SOURCE_DATE_EPOCH = "1700000000"
IMAGE_TOOLS = ("mmdebstrap", "mkfs.erofs", "veritysetup", "sfdisk", "mkfs.vfat", "mcopy", "sbsign", "objcopy")


@dataclass(frozen=True)
class ArchiveImage:
    """A farm home with a builder and release keys, an empty recipe directory (every package from the pinned
    archive) and the image it built from empty caches: ``built`` is ``image build --json``, in ``out``."""

    farm: Farm
    recipes: Path
    out: Path
    built: dict[str, Any]

    @property
    def home(self) -> Path:
        return self.farm.home

    def build(self, out: Path, *args: str) -> dict[str, Any]:
        """Another build in the same home (its caches as they are now) into ``out``: the same inputs, or with
        ``args`` (``--deb FILE``) added."""
        result: dict[str, Any] = self.farm.json("image", "build", "--recipes", str(self.recipes), "-o", str(out), *args)
        return result


@pytest.fixture(scope="session")
def archive_image(tmp_path_factory: pytest.TempPathFactory) -> ArchiveImage:
    """The cold reference build: the cache test builds again from its caches, the rootless test builds the same
    inputs as another user; each compares bytes with it."""
    for tool in IMAGE_TOOLS:
        require(tool)
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("CI runs as root: the reference image is built as root")
        pytest.skip("the reference image is built as root")
    root = tmp_path_factory.mktemp("archive-image")
    (root / "recipes").mkdir()
    farm = Farm.at(root, root / "home", SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH)
    farm.run("keys", "generate")
    farm.run("keys", "generate", "--release")
    image = ArchiveImage(farm, root / "recipes", root / "cold", {})
    image.built.update(image.build(image.out))
    return image

"""One MANGOS image per test session, built through the CLI as a user would (shared by the image and boot tests).

A fresh farm home: builder key, the pinned bookworm environment, release keys, and the farm's own builds of issue
#12's CI slice (:mod:`tests.lib.slice`: hello, zlib with a bootstrap edge to file, and file, in ``slice/``), then
``image build`` of the slice. ``recipes/`` holds hello alone, as before: it is the default ``--recipes`` of the
tests' own ``image build`` calls, and hello's build is the same for both directories (one record).

The slice's zlib (bookworm's 1:1.2.13.dfsg-1: this mirror does not serve bookworm-security's source) is older than
the archive's, so the image takes the archive's zlib1g with that reason (``--allow-archive-fallback``), and no
package of the image needs file's: its package set (so its digest, its version and the stored package tree) is the
hello-only image's; only zlib1g's reason in the manifest, SBOM and lock, and the lock's list of recipes, are new.
``tests/e2e/conftest.py`` registers the fixture once for the whole directory (importing it into each test module
would build the image once per module).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require
from tests.e2e.conftest import REPO, Farm
from tests.lib.slice import SLICE_DIR, write_slice

SOURCE_DATE_EPOCH = "1700000000"
FARM_RECIPES = ("hello",)  # recipes/: the default --recipes of image build
# The image is the slice's: zlib is older than the archive's zlib1g, which goes in instead with that reason.
IMAGE_ARGS = ("--recipes", SLICE_DIR, "--allow-archive-fallback")


@dataclass(frozen=True)
class BuiltImage:
    farm: Farm
    out: Path
    raw: Path
    root: Path  # the split artifacts
    verity: Path
    signature: Path
    uki: Path
    release: Path  # verity.{key,crt}, db.{key,crt}
    version: str
    root_hash: str
    commits: dict[str, str]  # recipe of the slice -> source commit
    build_keys: dict[str, str]  # recipe of the slice -> its stage-0 build key
    bootstrap_edge: tuple[str, str, str]  # the slice's one: (zlib, file, the archive version of file)
    coverage: dict[str, Any]  # image build's, of the image it made

    @property
    def slice(self) -> Path:
        return self.farm.root / SLICE_DIR

    @property
    def verity_cert(self) -> Path:
        return self.release / "verity.crt"

    @property
    def db_cert(self) -> Path:
        return self.release / "db.crt"

    @property
    def db_key(self) -> Path:
        return self.release / "db.key"


def build_image(farm: Farm, out: Path) -> dict[str, object]:
    env = {"SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH}
    result: dict[str, object] = farm.json("image", "build", "-o", str(out), *IMAGE_ARGS, env=env)
    return result


@pytest.fixture(scope="session")
def built_image(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    for tool in ("mmdebstrap", "mkfs.erofs", "veritysetup", "sfdisk", "mkfs.vfat", "mcopy", "sbsign", "objcopy"):
        require(tool)
    root = tmp_path_factory.mktemp("image")
    (root / "recipes").mkdir()
    for name in FARM_RECIPES:
        shutil.copy(REPO / "recipes" / "debian" / f"{name}.toml", root / "recipes" / f"{name}.toml")
    edge = write_slice(root / SLICE_DIR)
    shutil.copytree(REPO / "patches", root / "patches")  # the recipes name patches/NAME/... (found in a parent)
    shutil.copytree(REPO / "envs", root / "envs")
    home = root / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANGOS_FARM_")}
    env |= {"MANGOS_FARM_HOME": str(home), "MANGOS_FARM_WORKERS": "2"}
    farm = Farm(root, home, env)
    farm.run("keys", "generate")
    farm.run("env", "build", "bookworm-amd64")
    built = farm.json("rebuild", SLICE_DIR)
    assert built["ok"], built
    farm.run("keys", "generate", "--release")
    plan = {b["recipe"]: b for b in farm.json("plan", SLICE_DIR)["builds"]}
    assert {b["recipe"]: b["decision"] for b in farm.json("plan", "recipes")["builds"]} == {"hello": "cached"}
    result = build_image(farm, root / "out")
    raw, coverage = Path(str(result["raw"])), result["coverage"]
    assert isinstance(coverage, dict), result
    return BuiltImage(
        farm=farm,
        out=root / "out",
        raw=raw,
        root=Path(str(result["root"])),
        verity=Path(str(result["verity"])),
        signature=Path(str(result["signature"])),
        uki=Path(str(result["uki"])),
        release=home / "release",
        version=str(result["version"]),
        root_hash=str(result["root_hash"]),
        commits={name: b["commit"] for name, b in plan.items()},
        build_keys={name: b["build_key"] for name, b in plan.items()},
        bootstrap_edge=edge,
        coverage=coverage,
    )


def build_json(image: BuiltImage) -> dict[str, object]:
    data: dict[str, object] = json.loads((image.out / "build.json").read_text())
    return data

"""One MANGOS image per test session, built through the CLI as a user would (shared by the image and boot tests).

A fresh farm home: builder key, the pinned bookworm environment, the farm's own ``hello`` .deb built from source,
release keys, then ``image build``. ``tests/e2e/conftest.py`` registers the fixture once for the whole directory
(importing it into each test module would build the image once per module).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require
from tests.e2e.conftest import REPO, Farm

SOURCE_DATE_EPOCH = "1700000000"
FARM_RECIPES = ("hello",)  # farm-built; everything else of the image comes pinned from the archive


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
    commits: dict[str, str]  # recipe -> source commit

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
    result: dict[str, object] = farm.json("image", "build", "-o", str(out), env=env)
    return result


@pytest.fixture(scope="session")
def built_image(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    for tool in ("mmdebstrap", "mkfs.erofs", "veritysetup", "sfdisk", "mkfs.vfat", "mcopy", "sbsign", "objcopy"):
        require(tool)
    root = tmp_path_factory.mktemp("image")
    (root / "recipes").mkdir()
    for name in FARM_RECIPES:
        shutil.copy(REPO / "recipes" / "debian" / f"{name}.toml", root / "recipes" / f"{name}.toml")
    shutil.copytree(REPO / "patches", root / "patches")  # the recipes name patches/NAME/... (found in a parent)
    shutil.copytree(REPO / "envs", root / "envs")
    home = root / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANGOS_FARM_")}
    env |= {"MANGOS_FARM_HOME": str(home), "MANGOS_FARM_WORKERS": "2"}
    farm = Farm(root, home, env)
    farm.run("keys", "generate")
    farm.run("env", "build", "bookworm-amd64")
    built = farm.json("rebuild", "recipes")
    assert built["ok"], built
    farm.run("keys", "generate", "--release")
    plan = {b["recipe"]: b["commit"] for b in farm.json("plan", "recipes")["builds"]}
    result = build_image(farm, root / "out")
    raw = Path(str(result["raw"]))
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
        commits=plan,
    )


def build_json(image: BuiltImage) -> dict[str, object]:
    data: dict[str, object] = json.loads((image.out / "build.json").read_text())
    return data

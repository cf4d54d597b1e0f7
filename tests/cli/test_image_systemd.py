"""``image build|lock --systemd {bookworm,backports}``: the image's systemd, chosen on the command line.

``backports`` takes systemd 254 (systemd, udev and their libraries, all pinned to each other) from bookworm-backports,
which kernel-checked confext/sysext and image policies need (``farm.image.extensions``); ``bookworm`` (the default)
keeps bookworm's 252. Driven through the installed CLI against this machine's real apt lists (``make apt`` adds the
backports entries), with ``--check-inputs``: the packages are resolved and verified, no image is assembled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.lib.cli import Farm
from tests.lib.tools import require

pytestmark = pytest.mark.integration

BACKPORTED = {"systemd", "systemd-sysv", "systemd-dev", "libsystemd0", "libsystemd-shared", "udev", "libudev1"}


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Farm:
    require("apt-get")
    root = tmp_path_factory.mktemp("systemd-cli")
    (root / "recipes").mkdir()  # archive packages only: no farm builds to look for
    return Farm.at(root, root / "home")


def _versions(got: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["version"] for p in got["packages"]}


def test_a_bad_systemd_choice_is_refused_before_anything_runs(farm: Farm) -> None:
    proc = farm.run("image", "build", "--systemd", "sid", "-o", "never", check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "argument --systemd: invalid choice: 'sid' (choose from 'bookworm', 'backports')" in proc.stderr
    assert not (farm.root / "never").exists() and not farm.home.exists()
    proc = farm.run("image", "lock", "--systemd", "", check=False)
    assert proc.returncode == 2 and "argument --systemd: invalid choice: ''" in proc.stderr


def test_backports_puts_systemd_254_in_and_bookworm_keeps_252(farm: Farm) -> None:
    backports = farm.json("image", "build", "--check-inputs", "--systemd", "backports")
    versions = _versions(backports)
    assert set(versions) >= BACKPORTED
    assert {versions[n] for n in BACKPORTED} == {versions["systemd"]}, versions  # one set, pinned to each other
    assert versions["systemd"].startswith("254.") and "~bpo12" in versions["systemd"], versions["systemd"]
    assert "systemd/bookworm-backports" in backports["requested"]

    default = _versions(farm.json("image", "build", "--check-inputs"))
    assert default == _versions(farm.json("image", "build", "--check-inputs", "--systemd", "bookworm"))
    assert default["systemd"].startswith("252.") and "systemd-dev" not in default
    # everything else is the same closure: only systemd's own packages (and what pulls them) move
    assert default["hello"] == versions["hello"] and default["libc6"] == versions["libc6"]


def test_a_lock_made_for_backports_builds_only_with_backports(farm: Farm, tmp_path: Path) -> None:
    lock = tmp_path / "bp.lock"
    farm.run("image", "lock", "--systemd", "backports", "-o", str(lock))
    assert 'version = "254.' in lock.read_text()
    got = farm.json("image", "build", "--check-inputs", "--lock", str(lock), "--systemd", "backports")
    assert _versions(got)["systemd"].startswith("254.")
    refused = farm.run("image", "build", "--check-inputs", "--lock", str(lock), check=False)
    assert refused.returncode == 2 and "E-IMAGE-LOCK" in refused.stderr and "systemd" in refused.stderr
    assert json.dumps(got)  # the locked check printed a whole JSON document

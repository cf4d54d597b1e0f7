"""``image build`` without root: the same image, byte for byte, as root builds from the same inputs.

The non-root user ``mangos-rootless`` (uid 1001, subordinate ids 100000-165535; :mod:`tests.lib.rootless` makes it)
builds an image of archive packages only (no farm builds: nothing to compile) from a cold cache: mmdebstrap in
``--mode=unshare`` writes a tarball the user extracts, dracut runs in a user namespace of its own
(:mod:`farm.image.rootless`). Root then builds the same inputs with the same release keys in a home of its own,
also cold. Every artifact (disk, erofs, verity, signature, UKI, SBOM, manifest) must be the same bytes; the
rootless image also passes ``image verify``, ``veritysetup verify`` and ``systemd-dissect``. A user without
subordinate ids, or a home apt's subordinate id cannot enter, is refused before any work with E-IMAGE-ROOTLESS.

One cold image build beyond the shared reference: about 1-2 min on an idle 2-core machine, longer when loaded.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from farm.image import rootfs, rootless, uki
from tests.image.conftest import SOURCE_DATE_EPOCH, ArchiveImage
from tests.lib.rootless import RootlessUser, as_user, ensure_user, nobody, own_dir, python, reclaim
from tests.lib.tools import IN_CI, require

pytestmark = pytest.mark.e2e
log = logging.getLogger(__name__)

TOOLS = ("mmdebstrap", "mkfs.erofs", "veritysetup", "sfdisk", "mkfs.vfat", "mcopy", "sbsign", "objcopy", "unshare")
MAIN = "import sys; from farm.cli.main import main; sys.exit(main())"


def _root_only() -> None:
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("CI runs as root: the test makes the rootless user and builds the root reference")
        pytest.skip("the test makes the rootless user and builds the root reference image: run it as root")


def farm_as(user: RootlessUser, home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``mangos-farm ARGS`` as ``user`` with farm home ``home`` (its Python: :func:`tests.lib.rootless.python`)."""
    py, env = python(user)
    env = env | {"MANGOS_FARM_HOME": str(home), "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH}
    proc = as_user(user, [*py, "-c", MAIN, *args], env=env, cwd=home.parent, timeout=1800, check=False)
    assert "Traceback" not in proc.stderr, proc.stderr
    if check:
        assert proc.returncode == 0, f"{args} as {user.name}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@dataclass(frozen=True)
class Builds:
    user: RootlessUser
    rootless: dict[str, Any]  # image build --json as the user
    root: dict[str, Any]  # the same as root
    rootless_home: Path
    seconds: float  # the rootless build's wall time


@pytest.fixture(scope="module")
def builds(archive_image: ArchiveImage) -> Iterator[Builds]:
    """The user builds, from empty caches, what the session's reference image (root, cold) was built from: the same
    (empty) recipes, the same release keys; the archive's .debs come linked from its store, not downloaded again."""
    _root_only()
    for tool in TOOLS:
        require(tool)
    user = ensure_user()
    base = own_dir(user, "mangos-image-rootless-")
    base.chmod(0o755)  # apt in mmdebstrap's namespace runs as a subordinate id: "others" must reach the repository
    try:
        home = base / "home"
        (base / "recipes").mkdir()
        farm_as(user, home, "keys", "generate")
        shutil.copytree(
            archive_image.home / "release", home / "release", dirs_exist_ok=True
        )  # the same keys: the same signatures
        shutil.copytree(archive_image.home / "store", home / "store", copy_function=os.link, dirs_exist_ok=True)
        for path in [base / "recipes", *(home / "release").rglob("*"), home / "release", *(home / "store").rglob("*")]:
            os.chown(path, user.uid, user.gid, follow_symlinks=False)
        start = time.monotonic()
        built = farm_as(user, home, "image", "build", "--recipes", str(base / "recipes"), "-o", str(base / "out"),
                        "--json")  # fmt: skip
        seconds = time.monotonic() - start
        yield Builds(user, json.loads(built.stdout), archive_image.built, home, seconds)
    finally:
        reclaim(user, base)


def test_a_rootless_build_gives_the_root_builds_bytes(builds: Builds) -> None:
    mine, theirs = builds.rootless, builds.root
    log.warning("rootless image build: %.1fs, stages %s", builds.seconds, mine["stages"])
    assert mine["cached"] == {"root": False, "initrd": False}  # the tree and the initrd were made, not taken
    assert "rootfs" in mine["stages"] and "initrd" in mine["stages"]
    raw = Path(mine["raw"])
    assert raw.stat().st_uid == builds.user.uid  # made by the user, not by root
    assert mine["version"] == theirs["version"]  # the same inputs
    assert mine["root_hash"] == theirs["root_hash"], _tree_difference(Path(mine["root"]), Path(theirs["root"]))
    for role in ("raw", "root", "verity", "signature", "uki", "sbom", "manifest", "sha256sums"):
        a, b = Path(mine[role]), Path(theirs[role])
        assert a.read_bytes() == b.read_bytes(), f"{role}: {a} differs from the root build's {b}"


def _tree_difference(mine: Path, theirs: Path) -> str:
    """What differs between two erofs images (extracted as root), for the failure message."""
    found = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, image in (("rootless", mine), ("root", theirs)):
            subprocess.run(["fsck.erofs", f"--extract={tmp}/{name}", str(image)], capture_output=True, check=False)
            listing = subprocess.run(["find", ".", "-printf", "%p %M %s %l %T@\n"], cwd=f"{tmp}/{name}",
                                     capture_output=True, text=True, check=False)  # fmt: skip
            found.append(set(listing.stdout.splitlines()))
        diff = subprocess.run(["diff", "-rq", "--no-dereference", f"{tmp}/rootless", f"{tmp}/root"],
                              capture_output=True, text=True, check=False)  # fmt: skip
    only = sorted(found[0] ^ found[1])[:20]
    return f"the erofs images differ: {diff.stdout[-2000:]}; entries (path mode size link mtime) in one only: {only}"


def test_the_rootless_image_verifies(builds: Builds) -> None:
    mine = builds.rootless
    raw, release = Path(mine["raw"]), builds.rootless_home / "release"
    checked = farm_as(builds.user, builds.rootless_home, "image", "verify", str(raw), "--cert",
                      str(release / "verity.crt"), "--db-cert", str(release / "db.crt"), "--json")  # fmt: skip
    report = json.loads(checked.stdout)
    assert report["ok"] is True and report["root_hash"] == mine["root_hash"], report
    ok = subprocess.run(["veritysetup", "verify", mine["root"], mine["verity"], mine["root_hash"]],
                        capture_output=True, text=True, check=False)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    require("systemd-dissect")
    dissect = subprocess.run(["systemd-dissect", "--json=short", str(raw)], capture_output=True, text=True, check=False)
    assert dissect.returncode == 0, dissect.stderr
    mounts = {m["designator"]: m for m in json.loads(dissect.stdout)["mounts"]}
    assert mounts["root"]["verity"] == "signed" and mounts["root"]["fstype"] == "erofs"


def test_what_a_rootless_build_lacks_is_named_before_any_work(tmp_path: Path) -> None:
    _root_only()
    for tool in ("setpriv", "newuidmap", "newgidmap", "unshare"):
        require(tool)
    # nobody has no subordinate ids: mmdebstrap --mode=unshare cannot give the packages their owners
    who = nobody()
    base = own_dir(who, "mangos-image-nobody-")
    base.chmod(0o755)
    try:
        proc = farm_as(who, base / "home", "image", "build", "-o", str(base / "out"), check=False)
        assert proc.returncode == 2 and "error[E-IMAGE-ROOTLESS]" in proc.stderr, proc.stderr
        assert "rootfs" in proc.stderr and "usermod --add-subuids" in proc.stderr, proc.stderr
        assert not (base / "home/work/image").exists()  # nothing was started
    finally:
        shutil.rmtree(base, ignore_errors=True)
    # a home others cannot enter: apt in mmdebstrap's namespace (a subordinate id) could not read the packages
    user = ensure_user()
    closed = own_dir(user, "mangos-image-closed-")  # mode 700
    try:
        proc = farm_as(user, closed / "home", "image", "build", "-o", str(closed / "out"), check=False)
        assert proc.returncode == 2 and "error[E-IMAGE-ROOTLESS]" in proc.stderr, proc.stderr
        assert str(closed) in proc.stderr and "chmod o+x" in proc.stderr, proc.stderr
    finally:
        shutil.rmtree(closed, ignore_errors=True)


@pytest.mark.unit
def test_the_rootless_commands_are_data() -> None:
    repo, out, tar = Path("/w/repo"), Path("/w/root"), Path("/w/root.tar")
    as_root = rootfs.mmdebstrap_argv(repo, out, ["systemd"])
    assert "--mode=root" in as_root and "--format=directory" in as_root and str(out) in as_root
    unshared = rootfs.mmdebstrap_argv(repo, out, ["systemd"], tar=tar)
    assert "--mode=unshare" in unshared and "--format=tar" in unshared and str(tar) in unshared
    assert str(out) not in unshared and "--mode=root" not in unshared
    assert [a for a in as_root if not a.startswith("--mode") and not a.startswith("--format") and a != str(out)] == [
        a for a in unshared if not a.startswith("--mode") and not a.startswith("--format") and a != str(tar)
    ]  # the same packages, hooks and options either way
    assert uki.dracut_argv(userns=True)[:3] == ["unshare", "--user", "--map-root-user"]
    assert "--user" not in uki.dracut_argv(userns=False)
    assert rootless.probe_argv()[:3] == ["unshare", "--user", "--map-root-user"]

"""The root tree: mmdebstrap from a local flat repository holding exactly the image's verified .debs.

The repository has one .deb per package name (farm builds and archive pins, see :mod:`farm.image.inputs`), so
apt cannot choose anything else, and it runs offline. With ``SOURCE_DATE_EPOCH`` set and the two host files
mmdebstrap copies (resolv.conf, hostname) pinned, the tarball is the same every time; it is cached under
``$MANGOS_FARM_HOME/cache/image-rootfs`` by the digest of its inputs, since it is the slow part of an image build.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from farm.errors import E, FarmError
from farm.fsutil import atomic_write
from farm.image.inputs import Inputs
from farm.log import step
from farm.run import CommandFailed, require_tool, run

log = logging.getLogger(__name__)

RECIPE_VERSION = 2  # bump when the way the tree is made changes (it is part of the cache key)
SUITE = "bookworm"
HOSTNAME = "mangos"
TIMEOUT = 1800.0


def cache_key(inputs: Inputs, sde: int) -> str:
    return hashlib.sha256(json.dumps([RECIPE_VERSION, inputs.digest, sde]).encode()).hexdigest()


def stage_repo(inputs: Inputs, repo: Path) -> None:
    """A flat repository (Packages and a Release with the suite's codename) of exactly the input .debs."""
    if repo.exists():
        shutil.rmtree(repo)
    repo.mkdir(parents=True)
    for pkg in inputs.packages:
        try:
            os.link(pkg.path, repo / pkg.filename)
        except OSError:  # another filesystem
            shutil.copyfile(pkg.path, repo / pkg.filename)
    packages = run(["dpkg-scanpackages", "--multiversion", "."], cwd=repo).stdout
    (repo / "Packages").write_bytes(packages)
    (repo / "Release").write_text(release_text(packages))


def release_text(packages: bytes) -> str:
    """A minimal Release naming the suite (mmdebstrap and apt want a codename) and the index's checksum."""
    digest = hashlib.sha256(packages).hexdigest()
    return (
        f"Origin: mangos-image\nLabel: mangos-image\nSuite: {SUITE}\nCodename: {SUITE}\nArchitectures: amd64 all\n"
        f"Components: main\nSHA256:\n {digest} {len(packages)} Packages\n"
    )


def mmdebstrap_argv(repo: Path, out_tar: Path, include: Sequence[str]) -> list[str]:
    return [
        "mmdebstrap",
        "--variant=essential",
        "--mode=root",
        "--format=tar",
        "--architectures=amd64",
        f"--include={','.join(include)}",
        # the UKI's initrd is made from the tree by the boot stage (INITRD=No in mmdebstrap_env)
        '--essential-hook=mkdir -p "$1/etc/initramfs-tools" "$1/etc/dracut.conf.d"',
        '--customize-hook=rm -f "$1"/boot/initrd.img* "$1"/var/cache/ldconfig/aux-cache',
        f"--customize-hook=printf '%s\\n' '{HOSTNAME}' > \"$1/etc/hostname\"",
        '--customize-hook=: > "$1/etc/resolv.conf"',
        '--customize-hook=rm -f "$1/etc/apt/sources.list" "$1"/etc/apt/sources.list.d/*',
        SUITE,
        str(out_tar),
        f"deb [trusted=yes] copy://{repo} ./",
    ]


def mmdebstrap_env(sde: int) -> dict[str, str]:
    return {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "SOURCE_DATE_EPOCH": str(sde),
        # The kernel's postinst would have dracut make an initrd we delete anyway (the boot stage makes the UKI's
        # from the tree): /etc/kernel/postinst.d/dracut skips it for INITRD=No, and depmod still runs (the kernel's
        # own postinst). Measured: mmdebstrap 20 s instead of 110-180 s, and no dangling /initrd.img links.
        "INITRD": "No",
    }


def build_tar(inputs: Inputs, *, sde: int, cache: Path, work: Path) -> Path:
    """The root tarball for these inputs, from the cache or made now."""
    key = cache_key(inputs, sde)
    out = cache / "image-rootfs" / f"{key}.tar"
    if out.is_file():
        log.info("root tree cached: %s", out)
        return out
    require_tool("mmdebstrap")
    require_tool("dpkg-scanpackages")
    repo = work / "repo"
    with step("staging the local repository", log, packages=len(inputs.packages)):
        stage_repo(inputs, repo)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.tar")
    include = sorted(p.name for p in inputs.packages if p.name in set(inputs.requested))
    with step("mmdebstrap", log, packages=len(include)):
        try:
            run(mmdebstrap_argv(repo, tmp, include), env=mmdebstrap_env(sde), timeout=TIMEOUT)
        except CommandFailed as exc:
            tmp.unlink(missing_ok=True)
            raise FarmError(
                E.IMAGE_BUILD,
                f"mmdebstrap could not make the root tree: {exc.message[-3000:]}",
                hint="the package set does not install cleanly; run with --debug for the full log",
            ) from None
    os.replace(tmp, out)
    atomic_write(out.with_suffix(".json"), json.dumps(inputs.to_json(), indent=1, sort_keys=True).encode())
    return out


def unpack(tar: Path, dest: Path) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    run(["tar", "--numeric-owner", "--xattrs", "-xpf", str(tar), "-C", str(dest)])
    return dest

"""The root tree: mmdebstrap from a local flat repository holding exactly the image's verified .debs.

The repository has one .deb per package name (farm builds and archive pins, see :mod:`farm.image.inputs`), so
apt cannot choose anything else, and it runs offline. With ``SOURCE_DATE_EPOCH`` set and the two host files
mmdebstrap copies (resolv.conf, hostname) pinned, the tree is the same every time. mmdebstrap writes the directory
itself (no tarball to write and unpack again) and dpkg runs with ``force-unsafe-io`` (no fsync per unpacked file:
a half-written tree is thrown away anyway; measured 24 s instead of 46 s on a loaded 2-core machine). Trees are kept
between builds by :mod:`farm.image.basetree`, what is made from them by :mod:`farm.image.rootcache`.
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
from farm.image import rootless
from farm.image.cache import ImageCache
from farm.image.inputs import Inputs, Package
from farm.log import step
from farm.run import CommandFailed, require_tool, run

log = logging.getLogger(__name__)

RECIPE_VERSION = 5  # bump when the way the tree is made changes (it is part of the cache key)
SUITE = "bookworm"
HOSTNAME = "mangos"
TIMEOUT = 1800.0


def cache_key(inputs: Inputs, sde: int) -> str:
    return hashlib.sha256(json.dumps([RECIPE_VERSION, inputs.digest, sde]).encode()).hexdigest()


def stage_repo(inputs: Inputs, repo: Path, cache: ImageCache | None = None) -> None:
    """A flat repository (Packages and a Release with the suite's codename) of exactly the input .debs."""
    if repo.exists():
        shutil.rmtree(repo)
    repo.mkdir(parents=True)
    for pkg in inputs.packages:
        try:
            os.link(pkg.path, repo / pkg.filename)
        except OSError:  # another filesystem
            shutil.copyfile(pkg.path, repo / pkg.filename)
    packages = packages_index(inputs, repo, cache) if cache else scan(repo)
    (repo / "Packages").write_bytes(packages)
    (repo / "Release").write_text(release_text(packages))


def scan(directory: Path) -> bytes:
    return run(["dpkg-scanpackages", "--multiversion", "."], cwd=directory).stdout


def _stanza_key(pkg: Package, tool: str) -> str:
    return hashlib.sha256(f"{tool}\0{pkg.sha256}\0{pkg.filename}".encode()).hexdigest()


def packages_index(inputs: Inputs, repo: Path, cache: ImageCache) -> bytes:
    """What ``dpkg-scanpackages`` prints for ``repo``, its stanza of each .deb cached by the .deb's sha256 and name.

    It prints one stanza per package, sorted by name, each followed by an empty line; a .deb seen before is not
    opened again (dpkg-deb runs per .deb: ~2 s for the image's 115)."""
    tool = hashlib.sha256(Path(str(shutil.which("dpkg-scanpackages"))).read_bytes()).hexdigest()
    stanzas: dict[str, str] = {}
    missing: list[Package] = []
    for pkg in inputs.packages:
        entry = cache.get("deb-stanza", _stanza_key(pkg, tool))
        text = entry.get("stanza") if entry else None
        if isinstance(text, str) and text.startswith(f"Package: {pkg.name}\n"):
            stanzas[pkg.name] = text
        else:
            missing.append(pkg)
    if missing:
        fresh = repo / ".scan"
        fresh.mkdir()
        for pkg in missing:
            os.link(repo / pkg.filename, fresh / pkg.filename)
        by_file = {f"Filename: ./{p.filename}": p for p in missing}
        for text in scan(fresh).decode().split("\n\n"):
            found = next((by_file[line] for line in text.splitlines() if line in by_file), None)
            if found is not None:
                stanzas[found.name] = text
                cache.put("deb-stanza", _stanza_key(found, tool), {"stanza": text})
        shutil.rmtree(fresh)
    return "".join(stanzas[name] + "\n\n" for name in sorted(stanzas)).encode()


def release_text(packages: bytes) -> str:
    """A minimal Release naming the suite (mmdebstrap and apt want a codename) and the index's checksum."""
    digest = hashlib.sha256(packages).hexdigest()
    return (
        f"Origin: mangos-image\nLabel: mangos-image\nSuite: {SUITE}\nCodename: {SUITE}\nArchitectures: amd64 all\n"
        f"Components: main\nSHA256:\n {digest} {len(packages)} Packages\n"
    )


def mmdebstrap_argv(
    repo: Path, out_dir: Path, include: Sequence[str], *, tar: Path | None = None, nosync: Path | None = None
) -> list[str]:
    """As root: the tree written at ``out_dir``. With ``tar``: without root (:mod:`farm.image.rootless`), a
    tarball written there by ``--mode=unshare``, for :func:`farm.image.rootless.unpack` to extract. ``nosync``:
    the host's libeatmydata, put in the tree while mmdebstrap runs (:func:`nosync_env`)."""
    mode, out = rootless.mmdebstrap_mode_args(tar) if tar else (["--mode=root", "--format=directory"], str(out_dir))
    return [
        "mmdebstrap",
        "--variant=essential",
        *mode,
        *(nosync_hooks(nosync) if nosync else []),
        "--dpkgopt=force-unsafe-io",
        "--architectures=amd64",
        f"--include={','.join(include)}",
        # the UKI's initrd is made from the tree by the boot stage (INITRD=No in mmdebstrap_env)
        '--essential-hook=mkdir -p "$1/etc/initramfs-tools" "$1/etc/dracut.conf.d"',
        '--customize-hook=rm -f "$1"/boot/initrd.img* "$1"/var/cache/ldconfig/aux-cache',
        f"--customize-hook=printf '%s\\n' '{HOSTNAME}' > \"$1/etc/hostname\"",
        '--customize-hook=: > "$1/etc/resolv.conf"',
        '--customize-hook=rm -f "$1/etc/apt/sources.list" "$1"/etc/apt/sources.list.d/*',
        '--customize-hook=rm -f "$1/etc/dpkg/dpkg.cfg.d/99mmdebstrap"',  # the unsafe-io option: build time only
        SUITE,
        out,
        f"deb [trusted=yes] copy://{repo} ./",
    ]


# dpkg and apt fsync their database after every step, and dpkg starts the write-back of every file it unpacks: some
# 13,000 sync calls for the default image, each waiting on the disk. A tree that is stored is synced once, whole,
# before it is named (farm.image.basetree); one that is not is thrown away after the build. So the sync calls of the
# build itself are made no-ops with libeatmydata: the host's copy serves the host's processes (mmdebstrap, apt)
# from the default library path, a copy in the tree the chroot's. That copy's directory is on LD_LIBRARY_PATH, so on
# the host it must be one only root can create (never /tmp), and in the tree one ldconfig does not read (a
# subdirectory of /usr/lib); it leaves the tree with the last customize hook.
EATMYDATA = Path("/usr/lib/x86_64-linux-gnu/libeatmydata.so.1")
NOSYNC_DIR = "/usr/lib/mangos-nosync"


def nosync_hooks(lib: Path) -> list[str]:
    return [
        f'--extract-hook=mkdir -p "$1{NOSYNC_DIR}" && cp -L {lib} "$1{NOSYNC_DIR}/libeatmydata.so"',
        f'--customize-hook=rm -rf "$1{NOSYNC_DIR}"',
    ]


def nosync_env() -> dict[str, str]:
    return {"LD_PRELOAD": "libeatmydata.so", "LD_LIBRARY_PATH": NOSYNC_DIR}


def nosync_library() -> Path:
    """The host's libeatmydata (package eatmydata); an error naming the package when it is missing."""
    require_tool("eatmydata")
    if not EATMYDATA.exists():
        raise FarmError(E.IMAGE_BUILD, f"{EATMYDATA} is missing", hint="apt-get install eatmydata (make setup)")
    return EATMYDATA


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


def build_tree(inputs: Inputs, *, sde: int, dest: Path, work: Path, cache: ImageCache | None = None) -> Path:
    """The root tree for these inputs at ``dest`` (made afresh: a failed run leaves nothing there)."""
    require_tool("mmdebstrap")
    require_tool("dpkg-scanpackages")
    tar = work / "root.tar" if rootless.needed() else None
    if tar:
        rootless.preflight(work)
    repo = work / "repo"
    with step("staging the local repository", log, packages=len(inputs.packages)):
        stage_repo(inputs, repo, cache)
        if tar:
            rootless.share(repo)
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    wished = {r.partition("/")[0] for r in inputs.requested}  # NAME/SUITE (farm.image.extensions) installs NAME
    include = sorted(p.name for p in inputs.packages if p.name in wished)
    nosync = None if tar else nosync_library()
    env = mmdebstrap_env(sde) | (nosync_env() if nosync else {})
    with step("mmdebstrap", log, packages=len(include)):
        try:
            run(mmdebstrap_argv(repo, dest, include, tar=tar, nosync=nosync), env=env, timeout=TIMEOUT)
            if tar:
                rootless.unpack(tar, dest)
        except CommandFailed as exc:
            shutil.rmtree(dest, ignore_errors=True)
            raise FarmError(
                E.IMAGE_BUILD,
                f"mmdebstrap could not make the root tree: {exc.message[-3000:]}",
                hint="the package set does not install cleanly; run with --debug for the full log",
            ) from None
        finally:
            if tar:
                tar.unlink(missing_ok=True)
    rootless.drop_device_nodes(dest)  # as a build without root must: the same tree either way
    normalize(dest)
    shutil.rmtree(repo, ignore_errors=True)
    return dest


# What dpkg and apt leave that depends on the order packages came in, not on which: dpkg's backups of its previous
# database and its log. A tree made by mmdebstrap and one made from a stored tree (:mod:`farm.image.basetree`) then
# agree; neither file is read by anything in the image.
ORDER_DEPENDENT = (
    "var/lib/dpkg/status-old",
    "var/lib/dpkg/diversions-old",
    "var/lib/dpkg/statoverride-old",
    "var/log/dpkg.log",
    "var/log/alternatives.log",
)
EXTENDED_STATES = "var/lib/apt/extended_states"


def normalize(tree: Path) -> None:
    """Drop :data:`ORDER_DEPENDENT` files, and sort apt's auto-installed marks (apt writes them in its install
    order) by package and architecture."""
    for rel in ORDER_DEPENDENT:
        (tree / rel).unlink(missing_ok=True)
    states = tree / EXTENDED_STATES
    if states.exists():
        stanzas = [s.strip("\n") for s in states.read_text().split("\n\n") if s.strip()]
        states.write_text("".join(s + "\n\n" for s in sorted(stanzas, key=lambda s: s.splitlines()[:2])))

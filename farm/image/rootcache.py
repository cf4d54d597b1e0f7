"""The root stages of an image build, cached: tree -> erofs, and the initrd and kernel the UKI is made from.

The customized tree is a function of its **tree key**: the package set's digest, ``SOURCE_DATE_EPOCH``, the bytes
written into it besides the packages (manifest, SBOM, machine-id), the payload files and the code that makes it
(this module, :mod:`farm.image.rootfs`, :mod:`farm.image.rootless`, :mod:`farm.image.payload`,
:mod:`farm.image.erofs`) and the ``mkfs.erofs`` binary. An entry under that key names the erofs image's blob and
everything the UKI takes from the tree (kernel version, kernel image, os-release, the initrd's blob): a build whose
tree key is cached makes no tree at all. Otherwise mmdebstrap makes the tree, and mkfs.erofs and the initrd
(:mod:`farm.image.initrd`, itself cached by what dracut reads) run side by side, each mostly on one core.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from pathlib import Path

from farm.image import basetree, erofs, initrd, rootfs, rootless, uki
from farm.image.cache import ImageCache, sha256_file
from farm.image.inputs import Inputs

log = logging.getLogger(__name__)

VERSION = 1
Stage = Callable[[str], AbstractContextManager[None]]


@dataclass(frozen=True)
class Root:
    erofs: Path  # the root file system image (padded to 4 KiB)
    erofs_sha256: str
    boot: Path  # a tree with what the UKI needs: boot/vmlinuz-KVER, lib/modules/KVER/, os-release
    initrd: Path
    tree_cached: bool
    initrd_cached: bool
    tree: str = "cached"  # how the tree was made when the root was not cached (basetree.writable_tree)


def _code_digest() -> bytes:
    from farm.image import payload

    h = hashlib.sha256()
    for module in (rootfs, rootless, erofs, payload):
        h.update(Path(str(module.__file__)).read_bytes())
    h.update(Path(__file__).read_bytes())
    for runs_dracut in (uki.build_initrd, uki.dracut_script):  # an entry names its initrd: how it was made, too
        h.update(inspect.getsource(runs_dracut).encode())
    for path in sorted(payload.PAYLOAD.rglob("*")):
        h.update(str(path.relative_to(payload.PAYLOAD)).encode() + b"\0")
        if path.is_file():
            h.update(path.read_bytes())
    return h.digest()


def tree_key(got: Inputs, *, sde: int, extra: bytes) -> str:
    """The key of the customized tree; ``extra``: every byte the build writes into the tree besides the packages."""
    h = hashlib.sha256(f"mangos-root\0{VERSION}\0{rootfs.RECIPE_VERSION}\0{got.digest}\0{sde}\n".encode())
    h.update(hashlib.sha256(extra).digest())
    h.update(_code_digest())
    h.update(erofs.tool_digest().encode())
    return h.hexdigest()


def _boot_tree(dest: Path, *, kver: str, vmlinuz: Path | None, os_release: bytes) -> Path:
    """The part of a root the UKI reads (:func:`farm.image.uki.build_uki`), made from cached pieces."""
    (dest / "boot").mkdir(parents=True, exist_ok=True)
    (dest / "lib/modules" / kver).mkdir(parents=True, exist_ok=True)
    (dest / "usr/lib").mkdir(parents=True, exist_ok=True)
    (dest / "usr/lib/os-release").write_bytes(os_release)
    if vmlinuz is not None:
        shutil.copyfile(vmlinuz, dest / "boot" / f"vmlinuz-{kver}")
    return dest


def _from_cache(cache: ImageCache, key: str, *, root_img: Path, work: Path) -> Root | None:
    entry = cache.get("root", key)
    if entry is None:
        return None
    kver, os_release = entry.get("kver"), cache.get_bytes(entry.get("os_release"))
    if not isinstance(kver, str) or "/" in kver or os_release is None:
        return None
    boot = work / "boot"
    shutil.rmtree(boot, ignore_errors=True)
    vmlinuz = boot / "boot" / f"vmlinuz-{kver}"
    _boot_tree(boot, kver=kver, vmlinuz=None, os_release=os_release)
    got_initrd = work / "initrd.img"
    if not (cache.get_file(entry.get("vmlinuz"), vmlinuz) and cache.get_file(entry.get("initrd"), got_initrd)):
        return None
    if not cache.get_file(entry.get("erofs"), root_img):
        return None
    log.info("root cached: %s", key[:16])
    return Root(root_img, str(entry["erofs"]), boot, got_initrd, tree_cached=True, initrd_cached=True)


def make(
    got: Inputs,
    *,
    sde: int,
    seed: str,
    extra: bytes,
    customize: Callable[[Path], None],
    root_img: Path,
    work: Path,
    cache: ImageCache,
    stage: Stage,
    times: dict[str, float],
) -> Root:
    """The root's erofs at ``root_img`` and the UKI's inputs, from the cache or made now (and cached)."""
    key = tree_key(got, sde=sde, extra=extra)
    cached = _from_cache(cache, key, root_img=root_img, work=work)
    if cached is not None:
        return cached
    with ExitStack() as mounted:
        with stage("rootfs"):
            tree, how = mounted.enter_context(basetree.writable_tree(got, sde=sde, work=work, cache=cache))
        with stage("customize"):
            customize(tree)
        kver = uki.kernel_version(tree)

        def make_initrd() -> tuple[Path, str, bool]:
            start = time.monotonic()
            try:
                return initrd.cached_initrd(tree, kver=kver, sde=sde, workdir=work / "dracut", cache=cache)
            finally:
                times["initrd"] = round(time.monotonic() - start, 2)

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="initrd") as pool:
            pending = pool.submit(make_initrd)
            with stage("erofs"):
                erofs.make(tree, root_img, sde=sde, seed=seed)
                digest = sha256_file(root_img)
            initrd_path, initrd_key, initrd_cached = pending.result()
        os_release = uki.os_release(tree)
        boot = _boot_tree(work / "boot", kver=kver, vmlinuz=tree / "boot" / f"vmlinuz-{kver}", os_release=os_release)
    vmlinuz = boot / "boot" / f"vmlinuz-{kver}"
    if initrd_key:  # an initrd that could be keyed: the whole root can be cached
        cache.put(
            "root",
            key,
            {
                "erofs": cache.put_file(root_img, digest),
                "initrd": cache.put_file(initrd_path),
                "initrd_key": initrd_key,
                "kver": kver,
                "vmlinuz": cache.put_file(vmlinuz),
                "os_release": cache.put_bytes(os_release),
            },
        )
    cache.prune()
    return Root(root_img, digest, boot, initrd_path, tree_cached=False, initrd_cached=initrd_cached, tree=how)

"""The farm-built MANGOS kernel in the image, in place of Debian's.

``linux-image-mangos`` (recipes/kernel/) gives ``vmlinuz`` (the UKI's ``.linux``) and ``kernel.release``;
``linux-mangos``'s ``kbuild.tar`` gives ``modules.builtin`` and ``modules.builtin.modinfo``. The kernel has
``CONFIG_MODULES=n``: every driver is built in, so ``/lib/modules/RELEASE`` holds only those two lists and what
``depmod`` makes of them (dracut and ``modprobe`` then know the built-in drivers as present). Debian's kernel package
(``linux-image-amd64``, which ``linux-signed-amd64`` wraps) is left out of the image.

Every file is checked against its signed provenance before it is used. The image carries ``vmlinuz``'s provenance and
a small ``kernel.json`` in :data:`IMAGE_DIR` so that ``trace`` can follow the UKI's ``.linux`` back to its build.

With this kernel the initrd hands the signature partition's PKCS#7 to dm-verity (``payload.SIGNATURE_FILE``, written
by the payload's ``mangos-verity-sig``), and ``dm_verity.require_signatures=1`` makes the kernel refuse a root whose
signature does not verify against the certificate built into it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm.errors import E, FarmError
from farm.run import run
from farm.store.base import Store
from farm.trust.keys import PublicKey
from farm.trust.provenance import verify_envelope
from farm.trust.verify import ENVELOPE_SUFFIX, file_sha256, verify_file

RECIPE = "linux-image-mangos"
COMPILE_RECIPE = "linux-mangos"
KBUILD = "kbuild.tar"
CERTIFICATE_INPUT = "input/organization.crt"
IMAGE_DIR = "usr/lib/mangos/kernel"
BUILTIN_LISTS = ("modules.builtin", "modules.builtin.modinfo")
_KEY = re.compile(r"^[0-9a-f]{64}$")
_RELEASE = re.compile(r"^[0-9A-Za-z._+-]+$")


@dataclass(frozen=True)
class Kernel:
    vmlinuz: Path
    release: str
    build_key: str
    commit: str
    certificate_sha256: str  # of the organization.crt the build inserted (its provenance names it)
    kbuild: Path  # linux-mangos's kbuild.tar (modules.builtin*)

    @property
    def envelope(self) -> Path:
        return self.vmlinuz.with_name(self.vmlinuz.name + ENVELOPE_SUFFIX)

    def to_json(self) -> dict[str, Any]:
        return {
            "recipe": RECIPE,
            "release": self.release,
            "vmlinuz_sha256": file_sha256(self.vmlinuz),
            "build_key": self.build_key,
            "commit": self.commit,
            "certificate_sha256": self.certificate_sha256,
        }


def _statement(envelope_path: Path, trusted: Sequence[PublicKey]) -> dict[str, Any]:
    statement: dict[str, Any] = verify_envelope(json.loads(envelope_path.read_bytes()), trusted).statement
    return statement


def dependencies(statement: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``resolvedDependencies`` of a provenance statement by name (the source commit has a uri, no name)."""
    deps = statement["predicate"]["buildDefinition"].get("resolvedDependencies", [])
    return {d["name"]: d for d in deps if "name" in d}


def _fetch(store: Store, build_key: str, dest: Path, trusted: Sequence[PublicKey]) -> None:
    from farm.trust.fetch import fetch_records

    record = store.get_record(build_key)
    if record is None:
        raise FarmError(
            E.IMAGE_INPUT,
            f"no kernel build with key {build_key} in {store.url}",
            field="--kernel",
            hint="build it with 'make kernel' (MANGOS_FARM_HOME of this farm), or pass the directory it fetched",
        )
    fetch_records(store, [record], dest, trusted)


def load(spec: str, *, store: Store, trusted: Sequence[PublicKey], work: Path) -> Kernel:
    """The kernel named by ``spec``: a directory holding ``vmlinuz`` and ``kernel.release`` with their provenance
    (what ``make kernel`` fetches), or the build key of a ``linux-image-mangos`` build in ``store``."""
    work.mkdir(parents=True, exist_ok=True)
    if _KEY.match(spec) and not Path(spec).exists():
        _fetch(store, spec, work / "image", trusted)
        src = work / "image"
    else:
        src = Path(spec)
    for name in ("vmlinuz", "kernel.release"):
        got = verify_file(src / name, trusted)
        if got.recipe != RECIPE:
            raise FarmError(
                E.IMAGE_INPUT,
                f"{src / name} was built by recipe {got.recipe!r}, not {RECIPE}",
                field="--kernel",
                hint="pass the output of 'make kernel' (out/kernel) or a linux-image-mangos build key",
            )
    statement = _statement(src / ("vmlinuz" + ENVELOPE_SUFFIX), trusted)
    release = (src / "kernel.release").read_text().strip()
    if not _RELEASE.match(release):
        raise FarmError(E.IMAGE_INPUT, f"kernel.release {release!r} is not a kernel release", file=str(src))
    deps = dependencies(statement)
    cert = deps.get(CERTIFICATE_INPUT, {}).get("digest", {}).get("sha256", "")
    kbuild_dep = deps.get(f"{COMPILE_RECIPE}/{KBUILD}")
    if not cert or kbuild_dep is None:
        raise FarmError(E.IMAGE_INPUT, f"{src}/vmlinuz's provenance names no certificate or no {KBUILD}")
    kbuild = src / KBUILD
    if not kbuild.is_file():
        _fetch(store, kbuild_dep["annotations"]["buildKey"], work / COMPILE_RECIPE, trusted)
        kbuild = work / COMPILE_RECIPE / KBUILD
    else:
        verify_file(kbuild, trusted)
    if file_sha256(kbuild) != kbuild_dep["digest"]["sha256"]:
        raise FarmError(E.IMAGE_INPUT, f"{kbuild} is not the {KBUILD} this vmlinuz was built from", file=str(kbuild))
    params = statement["predicate"]["buildDefinition"]
    return Kernel(
        vmlinuz=src / "vmlinuz",
        release=release,
        build_key=params["internalParameters"]["buildKey"],
        commit=params["externalParameters"]["source"]["commit"],
        certificate_sha256=cert,
        kbuild=kbuild,
    )


def depmod_argv(root: Path, release: str) -> list[str]:
    """``depmod`` of the image's own kmod, in a chroot (no /proc needed), over the built-in lists only."""
    return ["unshare", "--mount", "--net", "--fork", "--", "chroot", str(root), "/sbin/depmod", "-a", release]


def install(root: Path, kernel: Kernel, *, sde: int) -> None:
    """Put the kernel into the unpacked ``root``: /boot/vmlinuz-RELEASE, /lib/modules/RELEASE (built-in lists,
    depmod's indexes), and its provenance in :data:`IMAGE_DIR`. Debian's kernel must not be in ``root``."""
    present = (
        sorted(p.name for p in (root / "usr/lib/modules").glob("*")) if (root / "usr/lib/modules").is_dir() else []
    )
    if present:
        raise FarmError(
            E.IMAGE_BUILD,
            f"the image root has kernel modules already ({', '.join(present)}): Debian's kernel was installed",
            hint="leave linux-image-amd64 out of the image packages when building with --kernel",
        )
    boot = root / "boot"
    boot.mkdir(exist_ok=True)
    shutil.copyfile(kernel.vmlinuz, boot / f"vmlinuz-{kernel.release}")
    modules = root / "usr/lib/modules" / kernel.release
    modules.mkdir(parents=True)
    with tarfile.open(kernel.kbuild) as tar:
        for name in BUILTIN_LISTS:
            try:
                member = tar.extractfile(name)
            except KeyError:
                member = None
            if member is None:
                raise FarmError(E.IMAGE_INPUT, f"{kernel.kbuild} has no {name}", file=str(kernel.kbuild))
            (modules / name).write_bytes(member.read())
    (modules / "modules.order").write_bytes(b"")
    run(depmod_argv(root, kernel.release))
    target = root / IMAGE_DIR
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(kernel.envelope, target / ("vmlinuz" + ENVELOPE_SUFFIX))
    (target / "kernel.json").write_text(json.dumps(kernel.to_json(), indent=1, sort_keys=True) + "\n")
    for path in [boot, boot / f"vmlinuz-{kernel.release}", *modules.parent.rglob("*"), modules.parent, target,
                 *target.iterdir()]:  # fmt: skip
        os.utime(path, (sde, sde), follow_symlinks=False)


def resolve(spec: str, *, store_url: str, keys_dir: Path, trusted_keys_dir: Path, work: Path) -> Kernel:
    """:func:`load` with the farm's store and trusted builder keys (what ``image build --kernel`` calls)."""
    from farm.store import open_store
    from farm.trust.keys import trusted_keys

    return load(spec, store=open_store(store_url), trusted=trusted_keys(keys_dir, trusted_keys_dir), work=work)


def inputs_digest(packages_digest: str, kernel: Kernel | None) -> str:
    """The image's input digest (its version's suffix): the packages', and the kernel's build key when it has ours."""
    if kernel is None:
        return packages_digest
    import hashlib

    return hashlib.sha256(f"{packages_digest}\0{RECIPE}\0{kernel.build_key}".encode()).hexdigest()

"""``image build``: verified inputs -> root tree -> erofs + verity + signature -> UKI + ESP -> GPT disk.

Each stage is timed with :func:`farm.log.step` and its duration recorded in ``build.json`` next to the image
(``bench/bench_image.py`` reads it). No loop device: every file system and the partition table are made on plain
files; the root tree is an overlay on a stored tree (:mod:`farm.image.basetree`), unmounted when the erofs is made.
Same inputs and ``SOURCE_DATE_EPOCH`` give the same bytes.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from farm.errors import E, FarmError
from farm.fsutil import atomic_write
from farm.image import esp, gpt, inputs, overlay, payload, rootcache, signature, verity
from farm.image import lock as image_lock
from farm.image.cache import ImageCache
from farm.image.sums import sha256sums, sign_detached
from farm.log import step
from farm.settings import Settings
from farm.store import open_store
from farm.trust.keys import trusted_keys
from farm.trust.release_keys import ReleaseKeys, load_cert, load_key
from farm.trust.verify import ENVELOPE_SUFFIX

log = logging.getLogger(__name__)

DEFAULT_SDE = 1700000000  # 2023-11-14: used when SOURCE_DATE_EPOCH is not set, so builds stay reproducible
MANIFEST_DIR = "usr/lib/mangos"  # inside the root: manifest, SBOM and the farm packages' provenance


@dataclass
class Artifacts:
    """What one build wrote, by role."""

    version: str
    root_hash: str
    raw: Path
    root: Path
    verity: Path
    signature: Path
    uki: Path | None
    sbom: Path
    manifest: Path
    sums: Path
    sums_sig: Path
    stages: dict[str, float] = field(default_factory=dict)
    cached: dict[str, bool] = field(default_factory=dict)  # which stages the image cache spared
    tree: str = ""  # how the root tree was made: fresh, stored, "delta: ..." (farm.image.basetree) or cached
    machine_id: str = ""  # baked into /etc/machine-id: the same for every release of one image name

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "root_hash": self.root_hash,
            "raw": str(self.raw),
            "root": str(self.root),
            "verity": str(self.verity),
            "signature": str(self.signature),
            "uki": str(self.uki) if self.uki else None,
            "sbom": str(self.sbom),
            "manifest": str(self.manifest),
            "sha256sums": str(self.sums),
            "sha256sums_signature": str(self.sums_sig),
            "stages": self.stages,
            "cached": self.cached,
            "tree": self.tree,
            "machine_id": self.machine_id,
            "sizes": {
                p.name: p.stat().st_size
                for p in (self.raw, self.root, self.verity, self.signature, self.uki)
                if p is not None and p.exists()
            },
        }


@dataclass(frozen=True)
class Request:
    out: Path
    release_keys: Path
    recipes: Path = Path("recipes")
    profile: str = ""
    debs: tuple[Path, ...] = ()
    sde: int = DEFAULT_SDE
    version: str = ""
    require_agreement: int = 0
    trust: Path | None = None
    require_reproducible: bool = False  # farm builds only when a varied rebuild agreed (farm.crossval.admission)
    lock: Path | None = None  # image.lock: install exactly its pins, resolve nothing (farm.image.lock)
    allow_fallback: bool = False  # take the archive's package for a farm build older than it (farm.image.admission)
    kernel: str = ""  # the farm's kernel, not Debian's: `make kernel`'s directory or a build key (farm.image.kernel)
    slot_size: int = 0  # bytes of each root data slot (image build --slot-size); 0: twice the root
    systemd: str = ""  # "backports": systemd 254 with kernel-checked sysext/confext (farm.image.extensions)
    name: str = "mangos"  # the files' prefix (farm.image.installer: mangos-installer_V.raw)
    extra_packages: tuple[str, ...] = ()  # packages beyond the payload's (the installer's python3)
    extra_files: tuple[tuple[str, bytes], ...] = ()  # root files by path (in the root's cache key, as the manifest)


# Called when a stage starts (seconds None) and when it ends (its seconds): the CLI's live status line.
StageWatcher = Callable[[str, float | None], None]


class Stages:
    def __init__(self, watcher: StageWatcher | None = None) -> None:
        self.times: dict[str, float] = {}
        self.watcher = watcher

    @contextmanager
    def __call__(self, name: str, **fields: object) -> Iterator[None]:
        start = time.monotonic()
        if self.watcher:
            self.watcher(name, None)
        with step(name, log, **fields):
            yield
        self.times[name] = round(time.monotonic() - start, 2)
        if self.watcher:
            self.watcher(name, self.times[name])


@contextmanager
def _exclusive(work: Path) -> Iterator[None]:
    """One image build per home at a time: the work directory is wiped at the start of each build."""
    work.parent.mkdir(parents=True, exist_ok=True)
    with (work.parent / ".image-build.flock").open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FarmError(
                E.IMAGE_BUILD,
                f"another image build is running in this home ({work})",
                hint="wait for it, or build with another MANGOS_FARM_HOME",
            ) from None
        yield


def source_date_epoch(environ: dict[str, str] | None = None) -> int:
    value = (os.environ if environ is None else environ).get("SOURCE_DATE_EPOCH", "")
    if not value:
        return DEFAULT_SDE
    if not value.isdigit():
        raise FarmError(E.SETTINGS, f"SOURCE_DATE_EPOCH={value!r} is not a number of seconds", hint="unset it")
    return int(value)


def image_version(inputs_digest: str, sde: int) -> str:
    day = datetime.datetime.fromtimestamp(sde, datetime.UTC).strftime("%Y%m%d")
    return f"{day}.{inputs_digest[:12]}"


def created_at(sde: int) -> str:
    return datetime.datetime.fromtimestamp(sde, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _payload_packages(farm_kernel: bool = False, systemd: str = "") -> tuple[str, ...]:
    from farm.image import extensions, payload

    return extensions.packages(payload.packages(farm_kernel=farm_kernel), systemd)


def collect_inputs(req: Request, settings: Settings, work: Path) -> inputs.Inputs:
    store = open_store(settings.store_url)
    trusted = trusted_keys(settings.keys_dir, settings.trusted_keys_dir)
    got = inputs.gather(
        store=store,
        recipes_dir=req.recipes,
        trusted=trusted,
        work=work / "inputs",
        payload=_payload_packages(bool(req.kernel), req.systemd),
        extra=req.extra_packages,
        local_debs=req.debs,
        profile=req.profile,
        lock=image_lock.load(req.lock) if req.lock else None,
        allow_fallback=req.allow_fallback,
        apt_cache=settings.cache_dir / "apt",
    )
    if req.require_agreement:
        admit(got, req, settings)
    if req.require_reproducible:
        from farm.crossval import admission

        built = [admission.Built(p.recipe, p.filename, p.sha256, p.build_key) for p in got.farm()]
        admission.check_reproducible(built, trust=req.trust, settings=settings)
    return got


def admit(got: inputs.Inputs, req: Request, settings: Settings) -> None:
    """Cross-validation: every farm-built .deb must be attested by K trusted peers."""
    if req.trust is None:
        raise FarmError(
            E.IMAGE_INPUT,
            "--require-agreement needs --trust peers.toml",
            field="--trust",
            hint="name the peers whose attestations count",
        )
    from farm.crossval import admission

    subjects = [admission.Subject(p.recipe, p.filename, p.sha256, p.statement) for p in got.farm()]
    admission.check_agreement(subjects, require=req.require_agreement, trust=req.trust, settings=settings)


def manifest_files(got: inputs.Inputs, sbom: dict[str, Any]) -> dict[str, bytes]:
    """What the image says about itself (``trace`` reads it from the verity-protected root), by path in the root."""
    files = {
        f"{MANIFEST_DIR}/manifest.json": (json.dumps(got.to_json(), indent=1, sort_keys=True) + "\n").encode(),
        f"{MANIFEST_DIR}/sbom.spdx.json": (json.dumps(sbom, indent=1, sort_keys=True) + "\n").encode(),
    }
    for p in got.farm():
        envelope = p.path.with_name(p.filename + ENVELOPE_SUFFIX)
        files[f"{MANIFEST_DIR}/provenance/{p.filename}{ENVELOPE_SUFFIX}"] = envelope.read_bytes()
    return files


def write_manifest(root: Path, files: dict[str, bytes]) -> None:
    (root / MANIFEST_DIR / "provenance").mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def tree_extra(files: dict[str, bytes], *facts: str) -> bytes:
    """What the build puts into the tree besides packages and payload (the files, machine-id, kernel): its key."""
    h = hashlib.sha256("\0".join(facts).encode() + b"\n")
    for rel in sorted(files):
        h.update(f"{rel}\0{hashlib.sha256(files[rel]).hexdigest()}\n".encode())
    return h.digest()


def write_disk(raw: Path, *, version: str, root_hash: str, esp_img: Path, root: Path, hashes: Path, sig: Path,
               slot: int = 0) -> None:  # fmt: skip
    """ESP, root A (data, verity, signature), root B (the same three, empty, labelled ``_empty``)."""
    data_uuid, verity_uuid = gpt.root_uuids(root_hash)
    seed = root_hash
    root_slot, verity_slot = gpt.root_slots(root.stat().st_size, hashes.stat().st_size, slot)
    sig_slot = 16 * 1024
    parts = [
        gpt.Partition("esp", gpt.ESP, gpt.derived_uuid(seed, "esp"), esp_img.stat().st_size, esp_img),
        gpt.Partition(f"root-{version}", gpt.ROOT_X86_64, data_uuid, root_slot, root),
        gpt.Partition(f"verity-{version}", gpt.ROOT_X86_64_VERITY, verity_uuid, verity_slot, hashes),
        gpt.Partition(
            f"verity-sig-{version}", gpt.ROOT_X86_64_VERITY_SIG, gpt.derived_uuid(seed, "sig"), sig_slot, sig
        ),
        gpt.Partition(gpt.EMPTY_LABEL, gpt.ROOT_X86_64, gpt.derived_uuid(seed, "root-b"), root_slot),
        gpt.Partition(gpt.EMPTY_LABEL, gpt.ROOT_X86_64_VERITY, gpt.derived_uuid(seed, "verity-b"), verity_slot),
        gpt.Partition(gpt.EMPTY_LABEL, gpt.ROOT_X86_64_VERITY_SIG, gpt.derived_uuid(seed, "sig-b"), sig_slot),
    ]
    # Unpartitioned space after the last slot (sparse: costs no disk) for first-boot systemd-repart's swap, /var and
    # /var/tmp; on a larger disk /var grows into all of it.
    gpt.write_disk(raw, parts, label_id=gpt.derived_uuid(seed, "disk"), free=payload.FIRST_BOOT_SPACE)


def build(req: Request, settings: Settings, watcher: StageWatcher | None = None) -> Artifacts:
    from farm.image import rootless

    if rootless.needed():  # what a build without root needs, checked before any work (E-IMAGE-ROOTLESS)
        rootless.preflight(settings.work_dir / "image")
    with _exclusive(settings.work_dir / "image"):
        return _build(req, settings, watcher)


def _build(req: Request, settings: Settings, watcher: StageWatcher | None) -> Artifacts:  # noqa: PLR0915 (the stages in order, on purpose)
    keys = ReleaseKeys(req.release_keys).check()
    stages = Stages(watcher)
    work = settings.work_dir / "image"
    if work.exists():
        overlay.unmount_under(work)  # a build killed outright leaves its root tree's overlay mounted
        shutil.rmtree(work)
    work.mkdir(parents=True)
    with stages("inputs"):
        got = collect_inputs(req, settings, work)
        from farm.image import kernel

        farm_kernel = (
            kernel.resolve(req.kernel, store_url=settings.store_url, keys_dir=settings.keys_dir,
                           trusted_keys_dir=settings.trusted_keys_dir, work=work / "kernel")
            if req.kernel else None
        )  # fmt: skip
    version = req.version or image_version(kernel.inputs_digest(got.digest, farm_kernel), req.sde)
    name = f"{req.name}_{version}"
    sbom = inputs.spdx(got, name=name, created=created_at(req.sde))
    req.out.mkdir(parents=True, exist_ok=True)
    out = req.out
    root_img, verity_img, sig_img = (out / f"{name}.root.{ext}" for ext in ("erofs", "verity", "verity.sig"))
    files, machine = manifest_files(got, sbom), payload.machine_id(req.name)
    files[f"{MANIFEST_DIR}/release.crt"] = keys.verity_cert.read_bytes()  # what mangos-update trusts
    files.update(req.extra_files)

    def customize(tree: Path) -> None:
        payload.customize(tree, machine_id=machine, sde=req.sde)
        if farm_kernel is not None:
            kernel.install(tree, farm_kernel, sde=req.sde)
        if req.systemd:
            extensions.customize(tree, sde=req.sde)
        write_manifest(tree, files)

    from farm.image import extensions

    facts = (machine, kernel.inputs_digest(got.digest, farm_kernel), Path(kernel.__file__).read_text())
    extra = tree_extra(files, *facts, *((extensions.digest_text(),) if req.systemd else ()))
    root = rootcache.make(
        got, sde=req.sde, seed=got.digest, extra=extra, customize=customize, root_img=root_img, work=work,
        cache=ImageCache(settings.cache_dir / "image"), stage=stages, times=stages.times,
    )  # fmt: skip
    with stages("verity"):
        v = verity.format_file(root_img, verity_img, seed=got.digest)
    with stages("signature"):
        signature.write_partition(sig_img, v.root_hash, load_key(keys.verity_key), load_cert(keys.verity_cert))
    uki_path = out / f"{name}.efi"
    esp_dir = work / "esp"
    with stages("uki"):
        from farm.image import uki

        uki.build_uki(
            root.boot, cmdline=payload.cmdline(v.root_hash, kernel_checks_signature=farm_kernel is not None),
            db_key=keys.db_key, db_cert=keys.db_cert, sde=req.sde,
            out=uki_path, initrd=root.initrd,
        )  # fmt: skip
    with stages("esp"):
        from farm.image import bootloader

        esp_dir.mkdir()
        bootloader.populate_esp(
            esp_dir, uki=uki_path, version=version, db_key=keys.db_key, db_cert=keys.db_cert, sde=req.sde
        )
        esp_img = esp.make(esp_dir, work / "esp.img", sde=req.sde)
    raw = out / f"{name}.raw"
    with stages("gpt"):
        write_disk(raw, version=version, root_hash=v.root_hash, esp_img=esp_img, root=root_img, hashes=verity_img,
                   sig=sig_img, slot=req.slot_size)  # fmt: skip
    profile_raw: Path | None = None
    if req.profile:
        with stages("profile", profile=req.profile):
            profile_raw = build_profile(req, settings, got, keys, work / "profile")
    with stages("sums"):
        sbom_path = out / f"{name}.spdx.json"
        manifest_path = out / f"{name}.manifest.json"
        atomic_write(sbom_path, (json.dumps(sbom, indent=1, sort_keys=True) + "\n").encode())
        atomic_write(manifest_path, (json.dumps(got.to_json(), indent=1, sort_keys=True) + "\n").encode())
        atomic_write(out / image_lock.DEFAULT_NAME, image_lock.dumps(got.lock(req.sde)).encode())  # to repeat it
        sums = out / "SHA256SUMS"
        listed = [raw, root_img, verity_img, sig_img, uki_path, sbom_path, manifest_path]
        listed += [profile_raw] if profile_raw else []
        atomic_write(sums, sha256sums(listed, {root_img: root.erofs_sha256}).encode())
        sums_sig = out / "SHA256SUMS.p7s"
        atomic_write(sums_sig, sign_detached(sums.read_bytes(), keys))
    shutil.rmtree(work, ignore_errors=True)
    result = Artifacts(
        version, v.root_hash, raw, root_img, verity_img, sig_img, uki_path, sbom_path, manifest_path, sums, sums_sig,
        stages.times, {"root": root.tree_cached, "initrd": root.initrd_cached}, root.tree, machine,
    )  # fmt: skip
    atomic_write(out / "build.json", (json.dumps(result.to_json(), indent=1, sort_keys=True) + "\n").encode())
    return result


def build_profile(req: Request, settings: Settings, base: inputs.Inputs, keys: ReleaseKeys, work: Path) -> Path:
    """A profile (e.g. ``docker``) as a signed sysext: the archive packages its closure adds to the base image."""
    from farm.image import sysext

    names = inputs.profile_names(req.profile)
    work.mkdir(parents=True)
    extra = list(base.profile_packages)  # resolved (or taken from the lock) with the base inputs
    tree = work / "tree"
    tree.mkdir()
    dropped = sysext.unpack_debs([p.path for p in extra], tree)
    if dropped:
        log.info("profile %s: left out of the sysext (not /usr or /opt): %s", req.profile, ", ".join(dropped))
    ext = sysext.build(req.profile, tree, req.out, keys=keys, sde=req.sde)
    sbom = inputs.spdx(
        inputs.Inputs(tuple(extra), tuple(names)), name=f"{req.profile}-sysext", created=created_at(req.sde)
    )
    atomic_write(req.out / f"{req.profile}.spdx.json", (json.dumps(sbom, indent=1, sort_keys=True) + "\n").encode())
    return ext.raw


def check_inputs(req: Request, settings: Settings) -> inputs.Inputs:
    """Only verify the inputs (and admission) and return them: fast, for ``image build --check-inputs``."""
    work = settings.work_dir / "image-inputs"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:
        return collect_inputs(req, settings, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

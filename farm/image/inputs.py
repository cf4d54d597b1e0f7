"""What goes into the image, and proof of where each piece came from.

Farm-built .debs are taken from the store for every Debian recipe at its pinned commit, written next to their
DSSE envelope and checked with :func:`farm.trust.verify.verify_file` against the trusted builder keys: an unverified or
altered .deb stops the build. Every other package of the image's dependency closure comes from the Debian archive,
pinned by exact version and the sha256 that apt's signed Packages index gives (the same path as pinned
build-dependencies, :mod:`farm.archive`). The closure is what ``apt-get -s`` installs on an empty system for the
Essential set plus the requested packages, with the farm's .debs in sight (:mod:`farm.image.closure`): a farm
package's dependency that only the farm builds comes in from the farm. The result is one package per name, so the
root tree built from it (:mod:`farm.image.rootfs`) cannot pick anything else. The SPDX document lists each package
with its origin.

Resolving from the host's current apt lists means an ``apt-get update`` can change the next image; with an image
lock (:mod:`farm.image.lock`) the archive pins are taken from the lock instead and apt resolves nothing.

No farm build goes in whose version is older code than the archive's (:mod:`farm.image.admission`): such builds
are refused all at once, or with ``allow_fallback`` the archive's package of that name is taken instead and
carries the reason into the SBOM, the manifest and the lock.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from farm.archive import Pin, deb_name, essential_packages, pin_from_index, resolve_install
from farm.errors import E, FarmError, TrustError
from farm.image import admission, closure
from farm.image.closure import archive_debs, deb_fields, fetch_pinned
from farm.image.lock import ImageLock, LockedPackage
from farm.image.packages import ARCHIVE, FARM, Inputs, Package
from farm.log import step
from farm.recipes.load import load_file, recipe_files
from farm.sources.apt import APT_LISTS
from farm.store import BuildRecord, Store
from farm.tomlfile import load_toml
from farm.trust import keyring
from farm.trust.keys import PublicKey
from farm.trust.verify import ENVELOPE_SUFFIX, verify_file

log = logging.getLogger(__name__)

# What every MANGOS image carries beyond the Essential set and the boot payload: the farm's demonstration package.
BASE_PACKAGES: tuple[str, ...] = ("hello",)
PROFILES: dict[str, tuple[str, ...]] = {"docker": ("docker.io",)}


# -- farm-built .debs ---------------------------------------------------------------------------------------------
def debian_recipes(recipes_dir: Path) -> dict[str, str]:
    """name -> pinned commit of every Debian recipe (``[build] kind = "debian"``) in the directory tree."""
    found = {}
    for path in recipe_files(recipes_dir):  # a separate set below it (recipes/base, recipes/kernel) is left out
        data = load_toml(path, E.RECIPE_SYNTAX, what="recipe", hint="fix the TOML")
        if data.get("build", {}).get("kind") == "debian" and data.get("source", {}).get("commit"):
            found[str(data["name"])] = str(data["source"]["commit"])
    return found


def debian_recipe_digests(recipes_dir: Path) -> dict[str, str]:
    """name -> digest of every Debian recipe of the directory tree, as written (what a build's record and signed
    provenance name as its recipe digest)."""
    found = {}
    for path in recipe_files(recipes_dir):
        data = load_toml(path, E.RECIPE_SYNTAX, what="recipe", hint="fix the TOML")
        if data.get("build", {}).get("kind") == "debian" and data.get("source", {}).get("commit"):
            found[str(data["name"])] = load_file(path).digest
    return found


def is_image_deb(name: str) -> bool:
    """Debug symbols never go into the image; the rest of a recipe's .debs are candidates."""
    return name.endswith(".deb") and "-dbgsym_" not in name


def latest_record(store: Store, recipe: str, commit: str, digest: str | None = None) -> BuildRecord | None:
    """The newest build of ``recipe`` at ``commit``; with ``digest``, of the recipe as written only. A store holds
    builds of one recipe and commit under other definitions too: a ``rebuild --stage 1`` variant (against the farm's
    bootstrap dependencies), other trims, another set's recipe of the same name. None of those is this recipe's."""
    records = [r for r in store.records_for_recipe(recipe) if r.commit == commit and digest in (None, r.recipe_digest)]
    return max(records, key=lambda r: (r.finished, r.build_key)) if records else None


def _statement(envelope_path: Path) -> dict[str, Any]:
    envelope = json.loads(envelope_path.read_bytes())
    stmt: dict[str, Any] = json.loads(base64.b64decode(envelope["payload"]))
    return stmt


def farm_debs(store: Store, recipes_dir: Path, trusted: Sequence[PublicKey], dest: Path) -> dict[str, Package]:
    """package name -> verified farm-built .deb, for the Debian recipes that have a build at their commit, of the
    recipe as written (its recipe digest)."""
    dest.mkdir(parents=True, exist_ok=True)
    found: dict[str, Package] = {}
    digests = debian_recipe_digests(recipes_dir)
    for recipe, commit in debian_recipes(recipes_dir).items():
        record = latest_record(store, recipe, commit, digests[recipe])
        if record is None:
            log.info("recipe %s has no build at %s: its packages come from the archive", recipe, commit[:12])
            continue
        # The index is not trusted by itself: the record must be the one its signed provenance is about, and that
        # provenance must be about this recipe at its pinned commit (not some other trusted build's .debs).
        keyring.check_published(store, record.build_key, trusted)
        envelope = store.get_bytes(record.provenance)
        for artifact in record.artifacts:
            if not is_image_deb(artifact.name):
                continue
            path = dest / artifact.name
            store.fetch_blob(artifact.digest, path)
            envelope_path = dest / (artifact.name + ENVELOPE_SUFFIX)
            envelope_path.write_bytes(envelope)
            verified = verify_file(path, trusted)
            statement = _statement(envelope_path)
            signed = statement["predicate"]["buildDefinition"]["internalParameters"].get("recipeDigest")
            if (verified.recipe, verified.commit, signed) != (recipe, commit, digests[recipe]):
                raise TrustError(
                    E.ARTIFACT_REFUSED,
                    f"{artifact.name} is signed as {verified.recipe} at {verified.commit[:12]} (recipe digest "
                    f"{str(signed)[:12]}), but the store's index lists it for {recipe} at {commit[:12]} (recipe "
                    f"digest {digests[recipe][:12]})",
                    file=path,
                    hint="the store's index was tampered with; investigate before building an image",
                )
            name, version, arch = deb_fields(path)
            found[name] = Package(
                name=name,
                version=version,
                arch=arch,
                sha256=verified.digest,
                origin=FARM,
                path=path,
                recipe=verified.recipe,
                commit=verified.commit,
                build_key=record.build_key,
                builder=verified.builder,
                keyid=verified.keyid,
                statement=statement,
            )
    return found


def verify_local(paths: Iterable[Path], trusted: Sequence[PublicKey]) -> dict[str, Package]:
    """.debs given on disk (fetched with ``fetch -o``), each checked against the envelope beside it."""
    found = {}
    for path in paths:
        verified = verify_file(path, trusted)
        name, version, arch = deb_fields(path)
        found[name] = Package(
            name, version, arch, verified.digest, FARM, path, verified.recipe, verified.commit, "",
            verified.builder, verified.keyid, _statement(path.with_name(path.name + ENVELOPE_SUFFIX)),
        )  # fmt: skip
    return found


# -- the closure ---------------------------------------------------------------------------------------------------
def requested_packages(extra: Sequence[str], payload: Sequence[str], lists_dir: Path = APT_LISTS) -> list[str]:
    return sorted({*essential_packages(lists_dir), *BASE_PACKAGES, *payload, *extra})


def profile_names(profile: str) -> tuple[str, ...]:
    names = PROFILES.get(profile)
    if names is None:
        raise FarmError(E.IMAGE_INPUT, f"unknown profile {profile!r}", hint=f"one of {sorted(PROFILES)}")
    return names


def gather(
    *,
    store: Store,
    recipes_dir: Path,
    trusted: Sequence[PublicKey],
    work: Path,
    payload: Sequence[str],
    extra: Sequence[str] = (),
    local_debs: Sequence[Path] = (),
    profile: str = "",
    lock: ImageLock | None = None,
    fetch: bool = True,
    allow_fallback: bool = False,
    lists_dir: Path | None = None,
    apt_cache: Path | None = None,
) -> Inputs:
    """Resolve, fetch and verify every package of the image; farm builds replace archive packages of that name, and
    those the farm's packages depend on (:func:`closure.resolve`) come from the farm too.

    With ``lock``, the archive packages are exactly the lock's and apt resolves nothing; the recipes and the farm's
    verified builds must still be the locked ones. ``fetch=False`` (for ``image lock``) pins archive packages from
    the index without downloading them. ``profile`` also gathers that profile's sysext packages (farm builds too).

    A farm build older than the archive's version (apt's lists in ``lists_dir``, by default where apt keeps them)
    stops the gathering with every such package named, unless ``allow_fallback``: then the archive's package is
    taken for it. With ``lock``, the lock's decisions hold and its farm packages are checked the same way."""
    work.mkdir(parents=True, exist_ok=True)
    recipes = debian_recipes(recipes_dir) if recipes_dir.is_dir() else {}
    with step("verifying farm-built packages", log):
        farm = farm_debs(store, recipes_dir, trusted, work / "farm") if recipes_dir.is_dir() else {}
        farm |= verify_local(local_debs, trusted)
    names = profile_names(profile) if profile else ()
    if lock is not None:
        farm_locked = [*lock.farm(), *(p for p in lock.profile_packages if p.origin == FARM)]
        locked_farm = [farm[p.name] for p in farm_locked if p.name in farm]
        admission.admit_farm(locked_farm, allow_fallback=False, lists_dir=lists_dir, locked_in=lock.where)
        return _locked(
            lock,
            store=store,
            work=work,
            farm=farm,
            recipes=recipes,
            required=[*BASE_PACKAGES, *payload, *extra],
            profile=profile,
            names=names,
        )
    fallback = admission.admit_farm(list(farm.values()), allow_fallback=allow_fallback, lists_dir=lists_dir)
    farm = {n: p for n, p in farm.items() if n not in fallback}
    requested = requested_packages(extra, payload)
    install = functools.partial(resolve_install, cache=apt_cache)  # apt's binary cache of the lists, kept there
    with step("resolving the package closure", log, requested=len(requested)):
        pins = closure.resolve(requested, farm, work, install)
    from_archive = [p for p in pins if p.package not in farm]
    packages = [farm[p.package] for p in pins if p.package in farm]
    with step("pinning archive packages", log, count=len(from_archive)):
        packages += [
            replace(p, reason=fallback[p.name].reason) if p.name in fallback else p
            for p in _archive(from_archive, store, work / "archive", fetch)
        ]
    profile_packages: list[Package] = []
    if names:
        with step("resolving the profile's packages", log, profile=profile):
            have = {p.name for p in packages}
            more = [p for p in closure.resolve([*requested, *names], farm, work, install) if p.package not in have]
            profile_packages = [farm[p.package] for p in more if p.package in farm]
            profile_packages += [
                replace(p, reason=fallback[p.name].reason) if p.name in fallback else p
                for p in _archive([p for p in more if p.package not in farm], store, work / "profile", fetch)
            ]
    return Inputs(
        tuple(sorted(packages, key=lambda p: p.name)), tuple(requested), tuple(sorted(recipes.items())), profile,
        names, tuple(sorted(profile_packages, key=lambda p: p.name)),
    )  # fmt: skip


def _archive(pins: Sequence[Pin], store: Store, dest: Path, fetch: bool) -> list[Package]:
    if fetch:
        return archive_debs(pins, store, dest)
    return [
        Package(p.package, p.version, p.arch, p.sha256, ARCHIVE, dest / deb_name(p))
        for p in pin_from_index(pins, store)
    ]


def _locked(
    lock: ImageLock,
    *,
    store: Store,
    work: Path,
    farm: dict[str, Package],
    recipes: dict[str, str],
    required: Sequence[str],
    profile: str,
    names: Sequence[str],
) -> Inputs:
    """The image's packages exactly as locked (see :func:`gather`)."""
    lock.check_recipes(recipes)
    lock.check_requested(required)
    lock.check_farm({n: (p.sha256, p.recipe, p.commit) for n, p in farm.items()})
    packages = [farm[p.name] for p in lock.farm()]
    reasons = lock.reasons()
    with step("fetching locked archive packages", log, lock=lock.where):
        fetched = fetch_pinned(lock.archive_pins(), store, work / "archive", lock)
    packages += [replace(p, reason=reasons.get((p.name, p.arch), "")) for p in fetched]
    profile_packages: list[Package] = []
    if profile:
        if lock.profile != profile or not set(names) <= set(lock.profile_requested):
            raise lock.error(
                f"the lock has no packages for profile {profile!r} (it was made with "
                f"{'--profile ' + lock.profile if lock.profile else 'no profile'})",
                field="profile",
                hint=f"refresh it with 'mangos-farm image lock --profile {profile}'",
            )
        pins = sorted(p.pin for p in lock.profile_packages if p.origin != FARM)
        fetched = fetch_pinned(pins, store, work / "profile", lock)
        profile_packages = [_locked_farm(lock, p, farm) for p in lock.profile_packages if p.origin == FARM]
        profile_packages += [replace(p, reason=reasons.get((p.name, p.arch), "")) for p in fetched]
    return Inputs(
        tuple(sorted(packages, key=lambda p: p.name)), lock.requested, lock.recipes, profile,
        tuple(names), tuple(sorted(profile_packages, key=lambda p: p.name)),
    )  # fmt: skip


def _locked_farm(lock: ImageLock, locked: LockedPackage, farm: dict[str, Package]) -> Package:
    """The verified farm build a profile package is locked to (the base packages: :meth:`ImageLock.check_farm`)."""
    got = farm.get(locked.name)
    if got is None or (got.sha256, got.recipe, got.commit) != (locked.sha256, locked.recipe, locked.commit):
        have = f"its verified build is {got.recipe} at {got.commit[:12]}, sha256 {got.sha256}" if got else "no build"
        what = f"{locked.recipe} at {locked.commit[:12]} (sha256 {locked.sha256})"
        raise lock.error(f"profile package {locked.name} is locked to {what}, but {have}", field="profile-package")
    return got


# -- SBOM -----------------------------------------------------------------------------------------------------------
def _spdx_id(p: Package) -> str:
    safe = "".join(c if c.isalnum() or c in ".-" else "-" for c in f"{p.name}-{p.arch}")
    return f"SPDXRef-Package-{safe}"


def spdx(inputs: Inputs, *, name: str, created: str) -> dict[str, Any]:
    """An SPDX 2.3 JSON document: every package, its origin (farm build with commit, or archive) and digest."""
    packages = []
    for p in inputs.packages:
        entry: dict[str, Any] = {
            "SPDXID": _spdx_id(p),
            "name": p.name,
            "versionInfo": p.version,
            "packageFileName": p.filename,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": False,
            "checksums": [{"algorithm": "SHA256", "checksumValue": p.sha256}],
            "externalRefs": [
                {
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": f"pkg:deb/debian/{p.name}@{p.version}?arch={p.arch}",
                }
            ],
        }
        if p.origin == FARM:
            entry["supplier"] = f"Organization: {p.builder or 'mangos-farm'}"
            entry["sourceInfo"] = (
                f"built by the MANGOS farm from source commit {p.commit} (recipe {p.recipe}, build key "
                f"{p.build_key or 'n/a'}), provenance signed by builder key {p.keyid}"
            )
            entry["comment"] = "origin: farm"
        else:
            entry["supplier"] = "Organization: Debian"
            entry["sourceInfo"] = "pinned from the Debian archive (version and sha256 from the signed Packages index)"
            entry["comment"] = "origin: archive"
            if p.reason:  # stands in for a farm build that was older than the archive's version
                entry["sourceInfo"] += f"; taken instead of the farm build: {p.reason}"
                entry["comment"] = f"origin: archive; reason: {p.reason}"
        packages.append(entry)
    return {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": name,
        "documentNamespace": f"https://mangos.dev/spdx/{name}-{inputs.digest}",
        "creationInfo": {"created": created, "creators": ["Tool: mangos-farm"]},
        "documentDescribes": [p["SPDXID"] for p in packages],
        "packages": packages,
    }


__all__ = [
    "ARCHIVE",
    "BASE_PACKAGES",
    "FARM",
    "PROFILES",
    "Inputs",
    "Package",
    "archive_debs",
    "deb_fields",
    "debian_recipe_digests",
    "debian_recipes",
    "farm_debs",
    "fetch_pinned",
    "gather",
    "is_image_deb",
    "latest_record",
    "profile_names",
    "requested_packages",
    "spdx",
    "verify_local",
]

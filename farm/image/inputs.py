"""What goes into the image, and proof of where each piece came from.

Farm-built .debs are taken from the store for every Debian recipe at its pinned commit, written next to their
DSSE envelope and checked with :func:`farm.verify.verify_file` against the trusted builder keys: an unverified or
altered .deb stops the build. Every other package of the image's dependency closure comes from the Debian archive,
pinned by exact version and the sha256 that apt's signed Packages index gives (the same path as pinned
build-dependencies, :mod:`farm.archive`). The closure is what ``apt-get -s`` installs on an empty system for the
Essential set plus the requested packages; the result is one package per name, so the root tree built from it
(:mod:`farm.image.rootfs`) cannot pick anything else. The SPDX document lists each package with its origin.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import json
import logging
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from farm import keyring
from farm.archive import Pin, archive_checksums, deb_name, download_pins, parse_simulation
from farm.errors import E, FarmError
from farm.keys import PublicKey
from farm.log import step
from farm.run import run
from farm.sources.dsc import APT_LISTS, apt_cat_argv
from farm.store import BuildRecord, Store
from farm.verify import ENVELOPE_SUFFIX, verify_file

log = logging.getLogger(__name__)

FARM = "farm"
ARCHIVE = "archive"
# What every MANGOS image carries beyond the Essential set and the boot payload: the farm's demonstration package.
BASE_PACKAGES: tuple[str, ...] = ("hello",)
PROFILES: dict[str, tuple[str, ...]] = {"docker": ("docker.io",)}


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    arch: str
    sha256: str
    origin: str  # FARM or ARCHIVE
    path: Path
    recipe: str = ""
    commit: str = ""
    build_key: str = ""
    builder: str = ""
    keyid: str = ""
    statement: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def filename(self) -> str:
        return self.path.name

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "arch": self.arch,
            "sha256": self.sha256,
            "origin": self.origin,
            "file": self.filename,
        }
        if self.origin == FARM:
            data |= {
                "recipe": self.recipe,
                "commit": self.commit,
                "build_key": self.build_key,
                "builder": self.builder,
                "keyid": self.keyid,
            }
        return data


@dataclass(frozen=True)
class Inputs:
    packages: tuple[Package, ...]
    requested: tuple[str, ...]

    @property
    def digest(self) -> str:
        """Identifies the package set: the rootfs cache key and the image version derive from it."""
        doc = [[p.name, p.version, p.arch, p.sha256] for p in self.packages]
        return hashlib.sha256(json.dumps([doc, list(self.requested)]).encode()).hexdigest()

    def farm(self) -> list[Package]:
        return [p for p in self.packages if p.origin == FARM]

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "requested": list(self.requested),
            "packages": [p.to_json() for p in self.packages],
        }


# -- farm-built .debs ---------------------------------------------------------------------------------------------
def debian_recipes(recipes_dir: Path) -> dict[str, str]:
    """name -> pinned commit of every Debian recipe (``[build] kind = "debian"``) in the directory tree."""
    found = {}
    for path in sorted(recipes_dir.rglob("*.toml")):
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise FarmError(E.RECIPE_SYNTAX, f"cannot read recipe: {exc}", file=path, hint="fix the TOML") from None
        if data.get("build", {}).get("kind") == "debian" and data.get("source", {}).get("commit"):
            found[str(data["name"])] = str(data["source"]["commit"])
    return found


def deb_fields(path: Path) -> tuple[str, str, str]:
    out = run(["dpkg-deb", "--show", "--showformat=${Package}\t${Version}\t${Architecture}", str(path)]).text
    name, version, arch = out.split("\t")
    return name, version, arch


def is_image_deb(name: str) -> bool:
    """Debug symbols never go into the image; the rest of a recipe's .debs are candidates."""
    return name.endswith(".deb") and "-dbgsym_" not in name


def latest_record(store: Store, recipe: str, commit: str) -> BuildRecord | None:
    records = [r for r in store.records_for_recipe(recipe) if r.commit == commit]
    return max(records, key=lambda r: (r.finished, r.build_key)) if records else None


def _statement(envelope_path: Path) -> dict[str, Any]:
    envelope = json.loads(envelope_path.read_bytes())
    stmt: dict[str, Any] = json.loads(base64.b64decode(envelope["payload"]))
    return stmt


def farm_debs(store: Store, recipes_dir: Path, trusted: Sequence[PublicKey], dest: Path) -> dict[str, Package]:
    """package name -> verified farm-built .deb, for the Debian recipes that have a build at their commit."""
    dest.mkdir(parents=True, exist_ok=True)
    found: dict[str, Package] = {}
    for recipe, commit in debian_recipes(recipes_dir).items():
        record = latest_record(store, recipe, commit)
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
            if (verified.recipe, verified.commit) != (recipe, commit):
                raise FarmError(
                    E.ARTIFACT_REFUSED,
                    f"{artifact.name} is signed as {verified.recipe} at {verified.commit[:12]}, but the store's "
                    f"index lists it for {recipe} at {commit[:12]}",
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
                statement=_statement(envelope_path),
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
def essential_packages(lists_dir: Path = APT_LISTS) -> list[str]:
    """Every ``Essential: yes`` package of the archive's Packages indexes (what a Debian system cannot lack)."""
    names: set[str] = set()
    for path in sorted(glob.glob(str(lists_dir / "*_Packages*"))):
        current = ""
        for line in run(apt_cat_argv(Path(path))).text.splitlines():
            if line.startswith("Package: "):
                current = line[9:].strip()
            elif line.strip() == "Essential: yes" and current:
                names.add(current)
    if not names:
        raise FarmError(
            E.ARCHIVE_UNKNOWN,
            f"no Packages index with Essential packages in {lists_dir}",
            hint="run 'apt-get update' (make apt sets up the archive)",
        )
    return sorted(names)


def closure_argv(status: Path, packages: Sequence[str]) -> list[str]:
    """apt on an empty dpkg status, in simulate mode: the exact versions a fresh install would get."""
    return [
        "apt-get", "-s", "-q", "--no-install-recommends",
        "-o", f"Dir::State::status={status}",
        "-o", "Debug::NoLocking=1",
        "-o", "APT::Get::Show-User-Simulation-Note=false",
        "install", *packages,
    ]  # fmt: skip


def closure(packages: Sequence[str], work: Path) -> list[Pin]:
    status = work / "empty-status"
    status.write_bytes(b"")
    result = run(closure_argv(status, packages), check=False, env={"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/bin"})
    if result.returncode != 0:
        raise FarmError(
            E.ARCHIVE_UNSATISFIABLE,
            "the image's packages cannot be installed together: " + result.stdout.decode()[-1500:].strip(),
            hint="check the package names (payload, profile) and run 'apt-get update'",
        )
    return parse_simulation(result.text)


def archive_debs(pins: Sequence[Pin], store: Store, dest: Path) -> list[Package]:
    """The pins' .debs from the store, downloading (and checking against the archive index) what is missing."""
    sums = archive_checksums(pins)
    pinned, missing = [], []
    for pin in pins:
        candidates = sums.get((pin.package, pin.version, pin.arch), set())
        known = sorted(s for s in candidates if store.has_blob(s))
        if known:
            pinned.append(Pin(pin.package, pin.version, pin.arch, known[0]))
        else:
            missing.append(pin)
    if missing:
        with step("downloading archive packages", log, count=len(missing)):
            pinned.extend(download_pins(missing, store))
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for pin in sorted(pinned):
        path = dest / deb_name(pin).replace("%3a", "_")
        store.fetch_blob(pin.sha256, path)  # checks the bytes against the pinned sha256
        out.append(Package(pin.package, pin.version, pin.arch, pin.sha256, ARCHIVE, path))
    return out


def requested_packages(extra: Sequence[str], payload: Sequence[str], lists_dir: Path = APT_LISTS) -> list[str]:
    return sorted({*essential_packages(lists_dir), *BASE_PACKAGES, *payload, *extra})


def gather(
    *,
    store: Store,
    recipes_dir: Path,
    trusted: Sequence[PublicKey],
    work: Path,
    payload: Sequence[str],
    extra: Sequence[str] = (),
    local_debs: Sequence[Path] = (),
) -> Inputs:
    """Resolve, fetch and verify every package of the image; farm builds replace archive packages of that name."""
    work.mkdir(parents=True, exist_ok=True)
    with step("verifying farm-built packages", log):
        farm = farm_debs(store, recipes_dir, trusted, work / "farm") if recipes_dir.is_dir() else {}
        farm |= verify_local(local_debs, trusted)
    requested = requested_packages(extra, payload)
    with step("resolving the package closure", log, requested=len(requested)):
        pins = closure(requested, work)
    from_archive = [p for p in pins if p.package not in farm]
    packages = [farm[p.package] for p in pins if p.package in farm]
    with step("pinning archive packages", log, count=len(from_archive)):
        packages += archive_debs(from_archive, store, work / "archive")
    return Inputs(tuple(sorted(packages, key=lambda p: p.name)), tuple(requested))


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

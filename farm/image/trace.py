"""``trace``: from a file in an image to the source commit it was built from, checking signatures on the way.

file -> owning package (the dpkg database inside the image's root, and the file's md5 against the package's
md5sums) -> the image manifest (which .deb, by sha256, and its origin) -> the farm's signed provenance for that
.deb (embedded in the root, checked against the trusted builder keys, its subject digest equal to the manifest's)
-> the source commit, and the patches the recipe applied on top of it. The root is read from the image's erofs
partition with ``fsck.erofs --extract``: no mount.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from farm.errors import E, FarmError
from farm.image import gpt
from farm.image.assemble import MANIFEST_DIR
from farm.image.inputs import FARM
from farm.image.payload import FACTORY_VAR
from farm.run import require_tool, run
from farm.trust.keys import PublicKey
from farm.trust.provenance import verify_envelope
from farm.trust.verify import ENVELOPE_SUFFIX

log = logging.getLogger(__name__)

# merged-/usr: dpkg may list a file under either name
ALIASES = {"/bin": "/usr/bin", "/sbin": "/usr/sbin", "/lib": "/usr/lib", "/lib64": "/usr/lib64"}


def candidates(path: str) -> list[str]:
    p = str(PurePosixPath("/") / path.lstrip("/"))
    names = {p}
    for short, long in ALIASES.items():
        if p.startswith(short + "/"):
            names.add(long + p[len(short) :])
        if p.startswith(long + "/"):
            names.add(short + p[len(long) :])
    return sorted(names)


def dpkg_info(root: Path) -> Path:
    """The dpkg database's ``info`` directory in an unpacked root: the image keeps /var empty (a mount point for the
    first-boot /var partition) and carries its content in /usr/share/factory/var; older images have it in /var."""
    for base in (FACTORY_VAR, "var"):
        info = root / base / "lib/dpkg/info"
        if info.is_dir():
            return info
    raise FarmError(
        E.IMAGE_TRACE,
        f"the image has no dpkg database (neither /{FACTORY_VAR}/lib/dpkg nor /var/lib/dpkg)",
        hint="is this a MANGOS image?",
    )


def owner(root: Path, path: str) -> tuple[str, str]:
    """(package, the name dpkg lists) owning ``path`` in the unpacked root."""
    wanted = set(candidates(path))
    for lst in sorted(dpkg_info(root).glob("*.list")):
        for line in lst.read_text(errors="replace").splitlines():
            if line in wanted:
                return lst.name[: -len(".list")].split(":")[0], line
    raise FarmError(
        E.IMAGE_TRACE,
        f"no package in the image owns {path}",
        hint="it may be generated at build time (machine-id, manifest) or not be in the image at all",
    )


def md5_matches(root: Path, package: str, listed: str) -> bool | None:
    sums = dpkg_info(root) / f"{package}.md5sums"
    if not sums.is_file():
        return None
    rel = listed.lstrip("/")
    for line in sums.read_text().splitlines():
        digest, _, name = line.partition("  ")
        if name == rel:
            target = root / rel
            return target.is_file() and hashlib.md5(target.read_bytes()).hexdigest() == digest  # noqa: S324
    return None


def extract_root(raw: Path, dest: Path) -> Path:
    require_tool("fsck.erofs")
    table = gpt.read_table(raw)
    live = [e for e in table if e.type == gpt.ROOT_X86_64 and e.name != gpt.EMPTY_LABEL]
    if not live:
        raise FarmError(E.IMAGE_TRACE, "the image has no root partition", file=raw, hint="is this a MANGOS image?")
    part = dest / "root.erofs"
    with raw.open("rb") as src, part.open("wb") as out:
        src.seek(live[0].start)
        left = live[0].size
        while left > 0:
            chunk = src.read(min(left, 1 << 20))
            if not chunk:
                break
            out.write(chunk)
            left -= len(chunk)
    tree = dest / "root"
    run(["fsck.erofs", f"--extract={tree}", str(part)])
    part.unlink()
    return tree


def trace(raw: Path, path: str, trusted: Sequence[PublicKey], cert: Path | None = None) -> dict[str, Any]:
    """Trace ``path``; with the release ``cert``, first check that the root read is the one the release key signed
    (so the manifest and provenance read from it are the image's own)."""
    if not raw.is_file():
        raise FarmError(E.IMAGE_TRACE, "no such image file", file=raw, hint="check the path")
    image_root_hash = ""
    if cert is not None:
        from farm.image.verify import verify_image

        report = verify_image(raw, cert=cert)
        failed = [c.name for c in report.checks if not c.ok and c.name in ("verity-tree", "signature", "certificate")]
        if failed:
            raise FarmError(
                E.IMAGE_TRACE,
                f"the image's root does not verify with {cert.name} ({', '.join(failed)})",
                hint="run 'mangos-farm image verify' for details; do not trust what this image says about itself",
            )
        image_root_hash = report.root_hash
    with tempfile.TemporaryDirectory(prefix="mangos-trace-") as tmp:
        root = extract_root(raw, Path(tmp))
        result = trace_tree(root, path, trusted)
    if image_root_hash:
        result["image_root_hash"] = image_root_hash
        result["image_signature"] = "verified"
    return result


def trace_tree(root: Path, path: str, trusted: Sequence[PublicKey]) -> dict[str, Any]:
    package, listed = owner(root, path)
    try:
        manifest = json.loads((root / MANIFEST_DIR / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise FarmError(E.IMAGE_TRACE, f"the image carries no readable manifest: {exc}", hint="rebuild it") from None
    entries = {p["name"]: p for p in manifest["packages"]}
    if package not in entries:
        raise FarmError(E.IMAGE_TRACE, f"package {package} is installed but not in the image manifest")
    entry = entries[package]
    result: dict[str, Any] = {
        "path": path,
        "listed_as": listed,
        "package": package,
        "version": entry["version"],
        "deb": entry["file"],
        "deb_sha256": entry["sha256"],
        "origin": entry["origin"],
        "file_matches_package": md5_matches(root, package, listed),
    }
    if entry["origin"] != FARM:
        result["note"] = "pinned from the Debian archive: no farm build to trace"
        if entry.get("reason"):
            result["note"] += f" (taken instead of the farm build: {entry['reason']})"
        return result
    envelope_path = root / MANIFEST_DIR / "provenance" / (entry["file"] + ENVELOPE_SUFFIX)
    try:
        envelope = json.loads(envelope_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise FarmError(E.IMAGE_TRACE, f"no provenance for {entry['file']} in the image: {exc}") from None
    verified = verify_envelope(envelope, trusted)
    signed = verified.subjects().get(entry["file"])
    if signed != entry["sha256"]:
        raise FarmError(
            E.IMAGE_TRACE,
            f"the signed provenance names {entry['file']} with sha256 {signed}, the image manifest {entry['sha256']}",
            hint="the image's inputs do not match what the farm built: do not trust this image",
        )
    params = verified.statement["predicate"]["buildDefinition"]["externalParameters"]
    result |= {
        "recipe": params.get("recipe", {}).get("name", ""),
        "source": params.get("source", {}).get("git", ""),
        "commit": params.get("source", {}).get("commit", ""),
        "build_key": entry.get("build_key", ""),
        "builder": verified.statement["predicate"]["runDetails"]["builder"]["id"],
        "signed_by": verified.keyid,
        "signature": "verified",
    }
    patches = params.get("recipe", {}).get("patches", [])
    if patches:  # applied on top of the commit, in this order: signed as part of the recipe
        result["patches"] = [{"name": p.get("file", ""), "sha256": p.get("sha256", "")} for p in patches]
    return result

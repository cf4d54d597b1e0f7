"""``trace``: from a file in an image to the source commit it was built from, checking signatures on the way.

file -> owning package (the dpkg database inside the image's root, and the file's md5 against the package's
md5sums) -> the image manifest (which .deb, by sha256, and its origin) -> the farm's signed provenance for that
.deb (embedded in the root, checked against the trusted builder keys, its subject digest equal to the manifest's)
-> the source commit, and the patches the recipe applied on top of it. The root is read from the image's erofs
partition with ``fsck.erofs --extract``: no mount.

The kernel has no package: :data:`KERNEL` (``uki:.linux``) traces the ``.linux`` section of the image's UKI (read
from the ESP with mtools) to the signed provenance of ``linux-image-mangos``'s ``vmlinuz`` the root carries
(``farm.image.kernel``): its digest must be the section's, and the provenance names the source commit, the compiled
``linux-mangos`` build and the digest of the certificate inserted into the kernel.

:func:`trace_all` (``trace --all``) walks every file of the root the same way: each to its package, each farm
package to its verified build and commit, with counts of what reaches a commit, what is the archive's and what no
package owns.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
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

KERNEL = "uki:.linux"  # the path that means the UKI's kernel

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


def checked_root_hash(raw: Path, cert: Path | None) -> str:
    """With the release ``cert``, the root hash the release key signed, once the root verifies with it (else "")."""
    if not raw.is_file():
        raise FarmError(E.IMAGE_TRACE, "no such image file", file=raw, hint="check the path")
    if cert is None:
        return ""
    from farm.image.verify import verify_image

    report = verify_image(raw, cert=cert)
    failed = [c.name for c in report.checks if not c.ok and c.name in ("verity-tree", "signature", "certificate")]
    if failed:
        raise FarmError(
            E.IMAGE_TRACE,
            f"the image's root does not verify with {cert.name} ({', '.join(failed)})",
            hint="run 'mangos-farm image verify' for details; do not trust what this image says about itself",
        )
    return report.root_hash


def trace(raw: Path, path: str, trusted: Sequence[PublicKey], cert: Path | None = None) -> dict[str, Any]:
    """Trace ``path``; with the release ``cert``, first check that the root read is the one the release key signed
    (so the manifest and provenance read from it are the image's own)."""
    image_root_hash = checked_root_hash(raw, cert)
    with tempfile.TemporaryDirectory(prefix="mangos-trace-") as tmp:
        root = extract_root(raw, Path(tmp))
        if path == KERNEL:
            result = trace_kernel(root, uki_linux(raw, Path(tmp)), trusted, cert)
        else:
            result = trace_tree(root, path, trusted)
    if image_root_hash:
        result["image_root_hash"] = image_root_hash
        result["image_signature"] = "verified"
    return result


def trace_tree(root: Path, path: str, trusted: Sequence[PublicKey]) -> dict[str, Any]:
    package, listed = owner(root, path)
    entries = manifest_entries(root)
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
    return result | farm_trail(root, entry, trusted)


def manifest_entries(root: Path) -> dict[str, dict[str, Any]]:
    """package name -> its entry in the manifest the image carries (version, .deb, sha256, origin, build)."""
    try:
        manifest = json.loads((root / MANIFEST_DIR / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise FarmError(E.IMAGE_TRACE, f"the image carries no readable manifest: {exc}", hint="rebuild it") from None
    return {p["name"]: p for p in manifest["packages"]}


def farm_trail(root: Path, entry: dict[str, Any], trusted: Sequence[PublicKey]) -> dict[str, Any]:
    """A farm package's manifest entry -> its build and source commit, from the signed provenance in the root."""
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
    result: dict[str, Any] = {
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
    upstream = params.get("source", {}).get("upstream")
    if upstream:  # signed too: the .dsc (URL, sha256), its orig tarballs and the upstream project it declares
        result["upstream"] = upstream
    return result


def uki_linux(raw: Path, work: Path) -> bytes:
    """The ``.linux`` section of the image's UKI on its ESP."""
    from farm.image.uki import section
    from farm.image.verify import extract_esp_file

    esp = [e for e in gpt.read_table(raw) if e.type == gpt.ESP]
    found = extract_esp_file(raw, esp[0], r"mangos_.*\.efi", work) if esp else None
    if found is None:
        raise FarmError(E.IMAGE_TRACE, "the image has no UKI on its ESP", file=raw, hint="is this a MANGOS image?")
    return section(found, ".linux")


def trace_kernel(root: Path, linux: bytes, trusted: Sequence[PublicKey], cert: Path | None) -> dict[str, Any]:
    """The UKI's kernel (``linux``, the ``.linux`` bytes) back to its build, source commit and certificate."""
    from farm.image.kernel import CERTIFICATE_INPUT, COMPILE_RECIPE, IMAGE_DIR, KBUILD, dependencies

    digest = hashlib.sha256(linux).hexdigest()
    envelope_path = root / IMAGE_DIR / ("vmlinuz" + ENVELOPE_SUFFIX)
    if not envelope_path.is_file():
        raise FarmError(
            E.IMAGE_TRACE,
            "the image carries no kernel provenance: its kernel is Debian's (linux-image-amd64), not a farm build",
            hint="build the image with 'image build --kernel' to trace its kernel",
        )
    verified = verify_envelope(json.loads(envelope_path.read_bytes()), trusted)
    signed = verified.subjects().get("vmlinuz")
    if signed != digest:
        raise FarmError(
            E.IMAGE_TRACE,
            f"the UKI's .linux has sha256 {digest}, the signed provenance names vmlinuz {signed}",
            hint="the UKI's kernel is not the farm build the image says: do not trust this image",
        )
    definition = verified.statement["predicate"]["buildDefinition"]
    params = definition["externalParameters"]
    deps = dependencies(verified.statement)
    compiled = deps.get(f"{COMPILE_RECIPE}/{KBUILD}", {})
    result: dict[str, Any] = {
        "path": KERNEL,
        "kernel": "vmlinuz",
        "linux_sha256": digest,
        "recipe": params.get("recipe", {}).get("name", ""),
        "version": params.get("recipe", {}).get("version", ""),
        "source": params.get("source", {}).get("git", ""),
        "commit": params.get("source", {}).get("commit", ""),
        "build_key": definition.get("internalParameters", {}).get("buildKey", ""),
        "compiled_by": {"recipe": COMPILE_RECIPE, "build_key": compiled.get("annotations", {}).get("buildKey", "")},
        "certificate_sha256": deps.get(CERTIFICATE_INPUT, {}).get("digest", {}).get("sha256", ""),
        "builder": verified.statement["predicate"]["runDetails"]["builder"]["id"],
        "signed_by": verified.keyid,
        "signature": "verified",
    }
    if cert is not None:  # the kernel enforces the root's signature with this certificate: is it the release one?
        result["certificate_is_release_cert"] = (
            hashlib.sha256(cert.read_bytes()).hexdigest() == (result["certificate_sha256"])
        )
    return result


# -- every file ---------------------------------------------------------------------------------------------------
def trace_all(raw: Path, trusted: Sequence[PublicKey], cert: Path | None = None) -> dict[str, Any]:
    """Every file of the image's root (:func:`trace_every_file`); with ``cert``, first the check :func:`trace`
    makes that the root read is the signed one."""
    image_root_hash = checked_root_hash(raw, cert)
    with tempfile.TemporaryDirectory(prefix="mangos-trace-") as tmp:
        result = trace_every_file(extract_root(raw, Path(tmp)), trusted)
    result["image"] = str(raw)
    if image_root_hash:
        result |= {"image_root_hash": image_root_hash, "image_signature": "verified"}
    return result


def listed_files(root: Path) -> dict[str, str]:
    """Every path dpkg lists in the unpacked root -> the package that ships it."""
    owners: dict[str, str] = {}
    for lst in sorted(dpkg_info(root).glob("*.list")):
        package = lst.name[: -len(".list")].split(":")[0]
        for line in lst.read_text(errors="replace").splitlines():
            owners.setdefault(line, package)
    return owners


def tree_files(root: Path) -> list[str]:
    """Every non-directory entry of the root (files, symlinks, devices), as absolute paths inside it, sorted."""
    found = []
    for top, dirs, files in os.walk(root):
        rel = "/" + os.path.relpath(top, root).removeprefix(".").lstrip("/")
        found += [os.path.join(rel, name) for name in files]
        found += [os.path.join(rel, name) for name in dirs if os.path.islink(os.path.join(top, name))]
    return sorted(found)


def _md5sums(root: Path, package: str) -> dict[str, str]:
    sums = dpkg_info(root) / f"{package}.md5sums"
    if not sums.is_file():
        return {}
    return {name: digest for digest, _, name in (line.partition("  ") for line in sums.read_text().splitlines())}


def trace_every_file(root: Path, trusted: Sequence[PublicKey]) -> dict[str, Any]:
    """file -> owning package (dpkg's .list files) -> for a farm package its verified build and source commit.

    Invariants: every file is counted once, as a file of a farm package, of an archive package, or of none (written
    at build time: the manifest, machine-id, caches); a farm package's provenance is verified once, and a package
    installed but missing from the manifest stops the trace (the image would be lying about itself)."""
    entries = manifest_entries(root)
    owners = listed_files(root)
    unlisted = sorted(set(owners.values()) - set(entries))
    if unlisted:
        raise FarmError(
            E.IMAGE_TRACE,
            f"installed but not in the image manifest: {', '.join(unlisted)}",
            hint="the image's manifest does not describe its root: do not trust this image",
        )
    packages: dict[str, dict[str, Any]] = {}
    files: list[dict[str, Any]] = []
    sums: dict[str, dict[str, str]] = {}
    for path in tree_files(root):
        package = next((owners[c] for c in candidates(path) if c in owners), None)
        if package is None:
            files.append({"path": path, "package": None, "origin": None})
            continue
        if package not in packages:
            entry = entries[package]
            packages[package] = {"package": package, "version": entry["version"], "origin": entry["origin"], "files": 0}
            if entry["origin"] == FARM:
                packages[package] |= farm_trail(root, entry, trusted)
            elif entry.get("reason"):
                packages[package]["reason"] = entry["reason"]
            sums[package] = _md5sums(root, package)
        trail = packages[package]
        trail["files"] += 1
        row: dict[str, Any] = {"path": path, "package": package, "origin": trail["origin"]}
        digest = sums[package].get(path.lstrip("/"))
        target = root / path.lstrip("/")
        if digest and not target.is_symlink() and hashlib.md5(target.read_bytes()).hexdigest() != digest:  # noqa: S324
            row["modified"] = True  # not the bytes the package shipped (a conffile edited at build time, or worse)
        files.append(row)
    farm = [f for f in files if f["origin"] == FARM]
    summary = {
        "files": len(files),
        "farm_files": len(farm),
        "farm_files_with_commit": sum(1 for f in farm if packages[f["package"]].get("commit")),
        "archive_files": sum(1 for f in files if f["origin"] not in (FARM, None)),
        "unowned_files": sum(1 for f in files if f["package"] is None),
        "modified_files": sum(1 for f in files if f.get("modified")),
        "packages": len(packages),
        "farm_packages": sum(1 for p in packages.values() if p["origin"] == FARM),
    }
    return {"summary": summary, "packages": sorted(packages.values(), key=lambda p: p["package"]), "files": files}


def summary_line(summary: dict[str, int]) -> str:
    s = summary
    return (
        f"{s['files']} files: {s['farm_files_with_commit']} of farm-built packages reaching a commit"
        f" (of {s['farm_files']}), {s['archive_files']} of archive packages, {s['unowned_files']} of no package"
        f" (written at build time); {s['farm_packages']} of {s['packages']} packages farm-built"
        + (f"; {s['modified_files']} differ from their package's md5sums" if s["modified_files"] else "")
    )

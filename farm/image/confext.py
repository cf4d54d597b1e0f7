"""Configuration extensions as the kernel checks them: signed by a given key, or not signed at all.

:func:`farm.image.sysext.build` always signs with the release verity key. The kernel-enforced image
(:mod:`farm.image.extensions`) must also be shown what it refuses, so :func:`build` takes the signer explicitly: the
release key ("ours", whose certificate is built into the farm's kernel), any other key ("foreign": a valid PKCS#7 the
kernel's keyring cannot verify), or ``None`` ("unsigned": data and verity partitions only, which the image policy
``root=signed`` refuses; its root hash goes beside it as ``NAME.roothash``, so systemd can set up verity for it, and the
policy refuses it for lacking the signature, not the hash tree). The disk is the same GPT as a sysext's (root data, root
verity, root verity signature), named after the extension, so ``systemd-confext`` finds
``etc/extension-release.d/extension-release.NAME`` in an image called ``NAME.raw``.

:func:`add_to_esp` copies such a ``.raw`` onto the EFI system partition of a disk image (mtools at the partition's
offset, no mount): the image's ``mangos-extensions-esp.service`` stages ``/efi/mangos/confexts/*.raw`` into
``/run/confexts`` before ``systemd-confext`` merges them. The ESP is not trusted: whatever it carries must pass the
kernel's signature check and the image policy.

:func:`check` is the host-side view of the same decision: the verity tree must match the data (``veritysetup verify``)
and the signature, if any, must verify with the certificate given.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from farm.errors import E, FarmError
from farm.image import erofs, gpt, signature, sysext, verity
from farm.run import require_tool, run

KIND = "confext"
ESP_DIR = "mangos/confexts"  # on the ESP; the image stages it into /run/confexts (mangos-extensions-esp)
Signer = tuple[rsa.RSAPrivateKey, x509.Certificate]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")  # no dot: the image name is the file name less .raw


@dataclass(frozen=True)
class Confext:
    name: str
    raw: Path
    root_hash: str
    signed: bool
    roothash_file: Path | None = None  # unsigned: NAME.roothash beside NAME.raw (verity without a signature)


def build(name: str, tree: Path, out_dir: Path, *, signer: Signer | None, sde: int) -> Confext:
    """``out_dir/NAME.raw`` from ``tree`` (which holds only ``etc/``); signed by ``signer``, or unsigned if None."""
    if not _NAME.match(name):
        raise FarmError(E.IMAGE_INPUT, f"extension name {name!r} is not valid", hint="letters, digits, _ -")
    sysext.check_tree(tree, KIND)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mangos-confext-", dir=out_dir) as tmp:
        work = Path(tmp)
        staged = work / "tree"
        shutil.copytree(tree, staged, symlinks=True)
        rel = staged / sysext.release_path(name, KIND)
        rel.parent.mkdir(parents=True, exist_ok=True)
        rel.write_text(sysext.release_text(name, KIND))
        for p in [staged, *staged.rglob("*")]:
            os.utime(p, (sde, sde), follow_symlinks=False)
        seed = f"{KIND}:{name}"
        data = erofs.make(staged, work / "data.erofs", sde=sde, seed=seed)
        hashes = work / "data.verity"
        v = verity.format_file(data, hashes, seed=seed)
        data_uuid, verity_uuid = gpt.root_uuids(v.root_hash)
        parts = [
            gpt.Partition(name, gpt.ROOT_X86_64, data_uuid, gpt.align(data.stat().st_size), data),
            gpt.Partition(
                f"{name}-verity", gpt.ROOT_X86_64_VERITY, verity_uuid, gpt.align(hashes.stat().st_size), hashes
            ),
        ]
        if signer is not None:
            sig = work / "data.sig"
            signature.write_partition(sig, v.root_hash, signer[0], signer[1])
            sig_uuid = gpt.derived_uuid(v.root_hash, "sig")
            parts.append(gpt.Partition(f"{name}-verity-sig", gpt.ROOT_X86_64_VERITY_SIG, sig_uuid, 16384, sig))
        raw = out_dir / f"{name}.raw"
        gpt.write_disk(raw, parts, label_id=gpt.derived_uuid(v.root_hash, "disk"))
    sidecar = None
    if signer is None:
        sidecar = out_dir / f"{name}.roothash"
        sidecar.write_text(v.root_hash + "\n")
    return Confext(name, raw, v.root_hash, signer is not None, sidecar)


@dataclass(frozen=True)
class Check:
    """What a host sees in a confext: its root hash, whether the tree matches, and whose signature it carries."""

    root_hash: str
    tree_ok: bool
    signature: str  # "verified" (by the certificate given), "other-key", or "none"


def check(raw: Path, cert: x509.Certificate, work: Path) -> Check:
    """``veritysetup verify`` of the data against its hash partition, and the signature partition against ``cert``."""
    require_tool("veritysetup")
    table = {e.type: e for e in gpt.read_table(raw)}
    missing = {gpt.ROOT_X86_64, gpt.ROOT_X86_64_VERITY} - set(table)
    if missing:
        raise FarmError(E.IMAGE_VERIFY, "not a confext disk: no root data/verity partition", file=raw)
    work.mkdir(parents=True, exist_ok=True)
    data, hashes = work / "data", work / "verity"
    data.write_bytes(gpt.read_partition(raw, table[gpt.ROOT_X86_64]))
    hash_bytes = gpt.read_partition(raw, table[gpt.ROOT_X86_64_VERITY])
    hashes.write_bytes(hash_bytes)
    sig_entry = table.get(gpt.ROOT_X86_64_VERITY_SIG)
    sig_doc = (
        signature.parse_partition(gpt.read_partition(raw, sig_entry, limit=signature.PARTITION_SIZE))
        if sig_entry
        else None
    )
    superblock = verity.read_superblock(hash_bytes)
    with data.open("rb") as fh:
        root_hash = verity.root_hash_stream(fh, int(superblock["data_blocks"]), str(superblock["salt"]))
    tree_ok = run(verity.verify_argv(data, hashes, root_hash), check=False).returncode == 0
    state = "none"
    if sig_doc is not None:
        try:
            if sig_doc["rootHash"] != root_hash:
                raise FarmError(E.IMAGE_VERIFY, "the signature is over another root hash")
            signature.verify_root_hash(root_hash, base64.b64decode(sig_doc["signature"]), cert)
            state = "verified"
        except FarmError:
            state = "other-key"
    return Check(root_hash, tree_ok, state)


def esp_entry(disk: Path) -> gpt.TableEntry:
    esps = [e for e in gpt.read_table(disk) if e.type == gpt.ESP]
    if len(esps) != 1:
        raise FarmError(E.IMAGE_INPUT, f"{len(esps)} EFI system partitions in the disk", file=disk)
    return esps[0]


def add_to_esp(disk: Path, ext: Path, *, name: str | None = None) -> str:
    """Copy ``ext`` to ``/mangos/confexts/NAME.raw`` on ``disk``'s ESP (in place: pass a copy), with its
    ``.roothash`` sidecar if there is one; returns the image's path on the ESP."""
    require_tool("mcopy")
    entry = esp_entry(disk)
    target = f"::/{ESP_DIR}/{name or ext.stem}.raw"
    image = f"{disk}@@{entry.start}"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MTOOLS_SKIP_CHECK": "1", "TZ": "UTC"}
    have = run(["mdir", "-b", "-i", image, f"::/{ESP_DIR}"], env=env, check=False).returncode == 0
    if not have:
        run(["mmd", "-D", "s", "-i", image, "::/mangos"], env=env, check=False)  # may exist already
        run(["mmd", "-i", image, f"::/{ESP_DIR}"], env=env)
    run(["mcopy", "-o", "-i", image, str(ext), target], env=env)
    sidecar = ext.with_suffix(".roothash")
    if sidecar.is_file():
        run(["mcopy", "-o", "-i", image, str(sidecar), target[: -len(".raw")] + ".roothash"], env=env)
    return target[2:]

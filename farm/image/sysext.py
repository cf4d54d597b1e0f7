"""System and configuration extensions: erofs + dm-verity + DPS signature, one signed ``.raw`` per extension.

A sysext carries ``usr/`` (and ``opt/``), a confext ``etc/``; each names itself in
``usr/lib/extension-release.d/extension-release.NAME`` (``etc/extension-release.d/`` for a confext) with
``ID=_any`` so systemd-sysext merges it on any MANGOS version. The disk is a GPT with the root (data), verity
and signature partitions, the layout ``systemd-dissect`` and ``systemd-sysext`` read; the root hash is signed
with the release verity key.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm.errors import E, FarmError
from farm.image import erofs, gpt, signature, verity
from farm.trust.release_keys import ReleaseKeys, load_cert, load_key

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
TOP = {"sysext": ("usr", "opt"), "confext": ("etc",)}


@dataclass(frozen=True)
class Extension:
    name: str
    kind: str
    raw: Path
    root_hash: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.kind, "raw": str(self.raw), "root_hash": self.root_hash}


def release_path(name: str, kind: str) -> str:
    base = "usr/lib/extension-release.d" if kind == "sysext" else "etc/extension-release.d"
    return f"{base}/extension-release.{name}"


def release_text(name: str, kind: str) -> str:
    scope = "SYSEXT_SCOPE" if kind == "sysext" else "CONFEXT_SCOPE"
    return f"ID=_any\n{scope}=system\nMANGOS_EXTENSION={name}\n"


def check_tree(tree: Path, kind: str) -> None:
    if not tree.is_dir():
        raise FarmError(E.IMAGE_INPUT, "not a directory", file=tree, hint="pass the tree to ship")
    allowed = TOP[kind]
    stray = sorted(p.name for p in tree.iterdir() if p.name not in allowed)
    if stray:
        raise FarmError(
            E.IMAGE_INPUT,
            f"a {kind} may only contain {', '.join(allowed)}/, found {', '.join(stray)}",
            file=tree,
            hint="move the files under " + " or ".join(f"{a}/" for a in allowed),
        )


def build(name: str, tree: Path, out_dir: Path, *, keys: ReleaseKeys, kind: str = "sysext", sde: int) -> Extension:
    if not _NAME.match(name):
        raise FarmError(E.IMAGE_INPUT, f"extension name {name!r} is not valid", hint="letters, digits, . _ -")
    check_tree(tree, kind)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mangos-ext-", dir=out_dir) as tmp:
        work = Path(tmp)
        staged = work / "tree"
        shutil.copytree(tree, staged, symlinks=True)
        rel = staged / release_path(name, kind)
        rel.parent.mkdir(parents=True, exist_ok=True)
        rel.write_text(release_text(name, kind))
        for p in [staged, *staged.rglob("*")]:
            os.utime(p, (sde, sde), follow_symlinks=False)
        seed = f"{kind}:{name}"
        data = erofs.make(staged, work / "data.erofs", sde=sde, seed=seed)
        hashes = work / "data.verity"
        v = verity.format_file(data, hashes, seed=seed)
        sig = work / "data.sig"
        signature.write_partition(sig, v.root_hash, load_key(keys.verity_key), load_cert(keys.verity_cert))
        data_uuid, verity_uuid = gpt.root_uuids(v.root_hash)
        parts = [
            gpt.Partition(name, gpt.ROOT_X86_64, data_uuid, gpt.align(data.stat().st_size), data),
            gpt.Partition(
                f"{name}-verity", gpt.ROOT_X86_64_VERITY, verity_uuid, gpt.align(hashes.stat().st_size), hashes
            ),
            gpt.Partition(
                f"{name}-verity-sig", gpt.ROOT_X86_64_VERITY_SIG, gpt.derived_uuid(v.root_hash, "sig"), 16384, sig
            ),
        ]
        raw = out_dir / f"{name}.{'raw' if kind == 'sysext' else 'confext.raw'}"
        gpt.write_disk(raw, parts, label_id=gpt.derived_uuid(v.root_hash, "disk"))
    return Extension(name, kind, raw, v.root_hash)


# merged-/usr: a .deb may still ship /lib, /bin, /sbin paths; in the image they live under /usr
MERGED = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}


def unpack_debs(debs: list[Path], tree: Path) -> list[str]:
    """Unpack .debs (data only: a sysext cannot run maintainer scripts) into a sysext tree; returns what was
    left out (anything outside /usr and /opt, e.g. /etc, which belongs in a confext)."""
    from farm.run import run

    staging = tree.parent / (tree.name + ".unpack")
    for deb in debs:
        run(["dpkg-deb", "--extract", str(deb), str(staging)])
    dropped = []
    for top in sorted(staging.iterdir()):
        if top.name in TOP["sysext"] or top.name in MERGED:
            dest = tree / MERGED.get(top.name, top.name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(top, dest, symlinks=True, dirs_exist_ok=True)
        else:
            dropped.append(top.name)
    shutil.rmtree(staging)
    return dropped

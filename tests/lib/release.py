"""A small built image in ``out/`` as ``image build`` leaves it, without a build: the same GPT layout (ESP, root A
data/verity/signature, slot B ``_empty``, sparse headroom and free space), random payloads of a few MiB,
SHA256SUMS and its PKCS#7 by the release key. For channel and streaming tests that need the shape, not a system.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from farm.image import gpt
from farm.image.sums import sha256sums, sign_detached
from farm.trust.release_keys import ReleaseKeys, generate

MIB = gpt.MIB


@dataclass(frozen=True)
class Built:
    out: Path
    version: str
    raw: Path
    keys: ReleaseKeys

    def built(self, suffix: str) -> Path:
        return self.out / f"mangos_{self.version}{suffix}"


def release_keys(directory: Path) -> ReleaseKeys:
    return generate(directory) if not (directory / "verity.key").exists() else ReleaseKeys(directory)


def build_out(out: Path, version: str, keys: ReleaseKeys, *, root_mib: int = 3, seed: bytes = b"") -> Built:
    """``out/mangos_VERSION.*`` as image build writes them (a .raw of about 20 MiB, ~6 MiB allocated)."""
    out.mkdir(parents=True, exist_ok=True)
    name = f"mangos_{version}"
    files = {
        ".efi": os.urandom(MIB + 123),
        ".root.erofs": seed + os.urandom(root_mib * MIB + 8 * 4096 - len(seed)),
        ".root.verity": os.urandom(64 * 1024),
        ".root.verity.sig": b'{"rootHash":"00"}'.ljust(4096, b"\0"),
    }
    for suffix, data in files.items():
        (out / f"{name}{suffix}").write_bytes(data)
    esp = out.parent / f".{name}.esp.img"
    esp.write_bytes(os.urandom(2 * MIB))
    seed_id = version
    parts = [
        gpt.Partition("esp", gpt.ESP, gpt.derived_uuid(seed_id, "esp"), 2 * MIB, esp),
        gpt.Partition(f"root-{version}", gpt.ROOT_X86_64, gpt.derived_uuid(seed_id, "root"),
                      gpt.slot_size((root_mib + 1) * MIB), out / f"{name}.root.erofs"),
        gpt.Partition(f"verity-{version}", gpt.ROOT_X86_64_VERITY, gpt.derived_uuid(seed_id, "verity"), MIB,
                      out / f"{name}.root.verity"),
        gpt.Partition(f"verity-sig-{version}", gpt.ROOT_X86_64_VERITY_SIG, gpt.derived_uuid(seed_id, "sig"),
                      16 * 1024, out / f"{name}.root.verity.sig"),
        gpt.Partition(gpt.EMPTY_LABEL, gpt.ROOT_X86_64, gpt.derived_uuid(seed_id, "root-b"),
                      gpt.slot_size((root_mib + 1) * MIB)),
        gpt.Partition(gpt.EMPTY_LABEL, gpt.ROOT_X86_64_VERITY, gpt.derived_uuid(seed_id, "verity-b"), MIB),
        gpt.Partition(gpt.EMPTY_LABEL, gpt.ROOT_X86_64_VERITY_SIG, gpt.derived_uuid(seed_id, "sig-b"), 16 * 1024),
    ]  # fmt: skip
    raw = out / f"{name}.raw"
    gpt.write_disk(raw, parts, label_id=gpt.derived_uuid(seed_id, "disk"), free=4 * MIB)
    esp.unlink()
    listed = sorted(p for p in out.iterdir() if p.name.startswith(name))
    (out / "SHA256SUMS").write_text(sha256sums(listed))
    (out / "SHA256SUMS.p7s").write_bytes(sign_detached((out / "SHA256SUMS").read_bytes(), keys))
    return Built(out, version, raw, keys)

"""The farm-built MANGOS kernel and an image carrying it, shared by the ``test_kernel_*`` tests (one per session).

The kernel is compiled once per machine and kept in a persistent farm home, :func:`kernel_home`
(``MANGOS_KERNEL_HOME``, default ``~/mangos-kernel``): ``make kernel`` there is ~20 min cold on 2 cores and seconds
warm (the store has both builds; only the fetch runs). ``.ci/run`` runs it before ``make test``; the fixture runs it
again, a no-op then, and builds the kernel itself when nothing did. The image is built in that same home (its builder
key signed the kernel, its release verity certificate is the one inside the kernel), from archive packages only.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from farm.image import gpt, signature
from farm.trust.release_keys import ReleaseKeys, generate, load_cert, load_key
from tests.lib.cli import REPO
from tests.lib.tools import require

KERNEL_BUILD_TIMEOUT = 3 * 3600
SOURCE_DATE_EPOCH = "1700000000"


def kernel_home() -> Path:
    return Path(os.environ.get("MANGOS_KERNEL_HOME") or Path.home() / "mangos-kernel")


def farm_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANGOS_FARM_")}
    return env | {"MANGOS_FARM_HOME": str(home), "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH}


def make_kernel(home: Path, out: Path) -> Path:
    """``make kernel`` in ``home`` with the fetched kernel in ``out`` (vmlinuz, kernel.release, provenance)."""
    require("make")
    subprocess.run(
        ["make", "-s", "kernel", f"MANGOS_FARM_HOME={home}", f"KERNEL_OUT={out}"],
        cwd=REPO,
        env=farm_env(home),
        check=True,
        timeout=KERNEL_BUILD_TIMEOUT,
    )
    return out


@dataclass(frozen=True)
class KernelImage:
    home: Path
    kernel: Path  # make kernel's output directory
    out: Path
    raw: Path
    uki: Path
    root_hash: str
    release: Path  # the home's release keys: verity.crt is the certificate inside the kernel

    @property
    def verity_cert(self) -> Path:
        return self.release / "verity.crt"


def build_kernel_image(home: Path, kernel: Path, out: Path) -> KernelImage:
    for tool in ("mmdebstrap", "mkfs.erofs", "veritysetup", "sfdisk", "mkfs.vfat", "mcopy", "sbsign", "objcopy"):
        require(tool)
    argv = [str(REPO / ".venv/bin/mangos-farm"), "image", "build", "-o", str(out), "--kernel", str(kernel)]
    argv += ["--recipes", str(out / "no-recipes"), "--json"]  # archive packages only: no farm .debs to build
    done = subprocess.run(argv, cwd=REPO, env=farm_env(home), check=False, capture_output=True, text=True)
    assert done.returncode == 0, f"image build --kernel failed:\n{done.stderr[-3000:]}"
    result = json.loads(done.stdout)
    return KernelImage(
        home=home,
        kernel=kernel,
        out=out,
        raw=Path(result["raw"]),
        uki=Path(result["uki"]),
        root_hash=str(result["root_hash"]),
        release=home / "release",
    )


def foreign_signed_copy(raw: Path, dest: Path, keys_dir: Path) -> Path:
    """A sparse copy of ``raw`` whose live verity signature partition holds a valid signature of the same root hash
    by another key (a fresh release key pair in ``keys_dir``): everything else is the original image."""
    other: ReleaseKeys = generate(keys_dir)
    key = load_key(other.verity_key)
    cert = load_cert(other.verity_cert)
    gpt.sparse_copy(raw, dest)
    live = [e for e in gpt.read_table(dest) if e.type == gpt.ROOT_X86_64_VERITY_SIG and e.name != gpt.EMPTY_LABEL]
    assert len(live) == 1, live
    original = signature.parse_partition(gpt.read_partition(dest, live[0], limit=signature.PARTITION_SIZE))
    data = signature.partition_bytes(
        original["rootHash"], signature.sign_root_hash(original["rootHash"], key, cert), cert
    )
    with dest.open("r+b") as fh:
        fh.seek(live[0].start)
        fh.write(data)
    return dest

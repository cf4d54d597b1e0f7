"""Image assembly time by stage, and the image's size.

``python -m bench.bench_image [--home DIR] [--recipes recipes] [--cold] [--json]``

Uses a farm home that already holds farm-built .debs (``make demo`` or a ``rebuild``) and release keys (made if
missing). Runs ``image build`` through the CLI and reads the per-stage durations it records in ``build.json``;
then times ``image verify`` and ``trace``. ``--cold`` moves the cached root tree aside for the run (and back), so
the mmdebstrap stage is measured too; otherwise the second and later builds reuse it, as users do.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ORDER = (
    "inputs",
    "rootfs",
    "unpack",
    "customize",
    "erofs",
    "verity",
    "signature",
    "uki",
    "esp",
    "gpt",
    "profile",
    "sums",
)
CLI = str(Path(sys.executable).parent / "mangos-farm")


def farm(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANGOS_FARM_")}
    env |= {"MANGOS_FARM_HOME": str(home), "SOURCE_DATE_EPOCH": "1700000000"}
    return subprocess.run([CLI, *args], cwd=REPO, env=env, capture_output=True, text=True, check=True)


def timed(home: Path, *args: str) -> float:
    t0 = time.monotonic()
    farm(home, *args)
    return round(time.monotonic() - t0, 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--home", default=os.environ.get("MANGOS_FARM_HOME", str(REPO / ".mangos")))
    parser.add_argument("--recipes", default="recipes")
    parser.add_argument("--cold", action="store_true", help="rebuild the root tree (mmdebstrap) too")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    home = Path(args.home).resolve()
    if not (home / "release" / "verity.key").exists():
        farm(home, "keys", "generate", "--release")
    cache = home / "cache" / "image-rootfs"
    aside = Path(tempfile.mkdtemp(prefix="mangos-bench-rootfs-", dir=home))
    out = Path(tempfile.mkdtemp(prefix="mangos-bench-image-"))
    try:
        if args.cold and cache.exists():
            cache.rename(aside / "image-rootfs")
        t0 = time.monotonic()
        farm(home, "image", "build", "--recipes", args.recipes, "-o", str(out))
        total = round(time.monotonic() - t0, 2)
        build: dict[str, Any] = json.loads((out / "build.json").read_text())
        raw = Path(build["raw"])
        same_tree = None
        if args.cold and (aside / "image-rootfs").exists():  # the fresh root tarball vs the one cached before
            fresh = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in cache.glob("*.tar")}
            old = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (aside / "image-rootfs").glob("*.tar")}
            same_tree = all(old.get(name) == digest for name, digest in fresh.items()) if fresh.keys() & old else None
        allocated = raw.stat().st_blocks * 512  # the disk file is sparse: slot B and slack are holes
        result = {
            "cold": args.cold,
            "total_seconds": total,
            "stages": build["stages"],
            "sizes": build["sizes"],
            "raw_allocated": allocated,
            "root_tree_identical_to_cached": same_tree,
            "verify_seconds": timed(home, "image", "verify", str(raw), "--cert", str(home / "release/verity.crt")),
            "trace_seconds": timed(home, "trace", str(raw), "/usr/bin/hello"),
        }
    finally:
        if (aside / "image-rootfs").exists():
            if cache.exists():
                shutil.rmtree(cache)
            (aside / "image-rootfs").rename(cache)
        shutil.rmtree(aside, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"image build ({'cold' if args.cold else 'root tree cached'}): {total:.1f}s")
    for stage in sorted(result["stages"], key=lambda s: ORDER.index(s) if s in ORDER else len(ORDER)):
        print(f"  {stage:12} {result['stages'][stage]:7.2f}s")
    for name, size in sorted(result["sizes"].items()):
        print(f"  {name:48} {size / 1e6:9.1f} MB")
    print(f"  (the .raw is sparse: {result['raw_allocated'] / 1e6:.1f} MB allocated)")
    if same_tree is not None:
        verdict = "identical to" if same_tree else "DIFFERENT from"
        print(f"  root tarball made again from scratch is {verdict} the cached one")
    print(f"image verify {result['verify_seconds']:.1f}s, trace {result['trace_seconds']:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

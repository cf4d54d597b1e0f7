"""Image assembly time by stage, and the image's size.

``python -m bench.bench_image [--home DIR] [--recipes recipes] [--cold] [--check-inputs] [--json]``

Uses a farm home that already holds farm-built .debs (``make demo`` or a ``rebuild``) and release keys (made if
missing). Runs ``image build`` through the CLI and reads the per-stage durations it records in ``build.json``;
then times ``image verify`` and ``trace``. ``--cold`` moves the cached root tree aside for the run (and back), so
the mmdebstrap stage is measured too; otherwise the second and later builds reuse it, as users do. The baseline of
the same run is the input check alone (``image build --check-inputs``): the report gives the build against it.

``--check-inputs`` stops after that baseline: the set-up (release keys) and the input check, timed, with the
build's keys reported empty; a full build takes minutes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import parser
from tests.lib.cli import REPO, Farm

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


def timed(farm: Farm, *args: str) -> float:
    t0 = time.monotonic()
    farm.run(*args)
    return round(time.monotonic() - t0, 2)


def check_inputs(farm: Farm, recipes: str, out: Path) -> dict[str, Any]:
    t0 = time.monotonic()
    found = farm.json("image", "build", "--check-inputs", "--recipes", recipes, "-o", str(out))
    return {"seconds": round(time.monotonic() - t0, 2), "packages": len(found["packages"]), "digest": found["digest"]}


def build(farm: Farm, recipes: str, out: Path, cold: bool) -> dict[str, Any]:
    home = farm.home
    cache = home / "cache" / "image-rootfs"
    aside = Path(tempfile.mkdtemp(prefix="mangos-bench-rootfs-", dir=home))
    try:
        if cold and cache.exists():
            cache.rename(aside / "image-rootfs")
        total = timed(farm, "image", "build", "--recipes", recipes, "-o", str(out))
        built: dict[str, Any] = json.loads((out / "build.json").read_text())
        raw = Path(built["raw"])
        same_tree = None
        if cold and (aside / "image-rootfs").exists():  # the fresh root tarball vs the one cached before
            fresh = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in cache.glob("*.tar")}
            old = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (aside / "image-rootfs").glob("*.tar")}
            same_tree = all(old.get(name) == digest for name, digest in fresh.items()) if fresh.keys() & old else None
        return {
            "total_seconds": total,
            "stages": built["stages"],
            "sizes": built["sizes"],
            "raw_allocated": raw.stat().st_blocks * 512,  # the disk file is sparse: slot B and slack are holes
            "root_tree_identical_to_cached": same_tree,
            "verify_seconds": timed(farm, "image", "verify", str(raw), "--cert", str(home / "release/verity.crt")),
            "trace_seconds": timed(farm, "trace", str(raw), "/usr/bin/hello"),
        }
    finally:
        if (aside / "image-rootfs").exists():
            if cache.exists():
                shutil.rmtree(cache)
            (aside / "image-rootfs").rename(cache)
        shutil.rmtree(aside, ignore_errors=True)


def render(result: dict[str, Any]) -> str:
    inputs = result["check_inputs"]
    lines = [f"input check: {inputs['packages']} packages in {inputs['seconds']:.1f}s"]
    if result["total_seconds"] is None:
        return "\n".join([*lines, "(--check-inputs: no image built)"])
    lines.append(
        f"image build ({'cold' if result['cold'] else 'root tree cached'}): {result['total_seconds']:.1f}s "
        f"({result['ratio_build_to_input_check']:.1f}x the input check)"
    )
    for stage in sorted(result["stages"], key=lambda s: ORDER.index(s) if s in ORDER else len(ORDER)):
        lines.append(f"  {stage:12} {result['stages'][stage]:7.2f}s")
    for name, size in sorted(result["sizes"].items()):
        lines.append(f"  {name:48} {size / 1e6:9.1f} MB")
    lines.append(f"  (the .raw is sparse: {result['raw_allocated'] / 1e6:.1f} MB allocated)")
    same_tree = result["root_tree_identical_to_cached"]
    if same_tree is not None:
        verdict = "identical to" if same_tree else "DIFFERENT from"
        lines.append(f"  root tarball made again from scratch is {verdict} the cached one")
    lines.append(f"image verify {result['verify_seconds']:.1f}s, trace {result['trace_seconds']:.1f}s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = parser("bench_image", __doc__)
    p.add_argument("--home", default=os.environ.get("MANGOS_FARM_HOME", str(REPO / ".mangos")), help="farm home")
    p.add_argument("--recipes", default="recipes", help="Debian recipes whose farm builds go in (default recipes)")
    p.add_argument("--cold", action="store_true", help="rebuild the root tree (mmdebstrap) too")
    p.add_argument("--check-inputs", action="store_true", help="set-up and the input check only: no image built")
    args = p.parse_args(argv)
    home = Path(args.home).resolve()
    farm = Farm.at(REPO, home, SOURCE_DATE_EPOCH="1700000000")
    if not (home / "release" / "verity.key").exists():
        farm.run("keys", "generate", "--release")
    out = Path(tempfile.mkdtemp(prefix="mangos-bench-image-"))
    try:
        result: dict[str, Any] = {
            "cold": args.cold,
            "check_inputs": check_inputs(farm, args.recipes, out),
            "total_seconds": None,
            "ratio_build_to_input_check": None,
            "stages": {},
            "sizes": {},
        }
        if not args.check_inputs:
            result |= build(farm, args.recipes, out, args.cold)
            result["ratio_build_to_input_check"] = round(result["total_seconds"] / result["check_inputs"]["seconds"], 2)
    finally:
        if args.keep:
            print(f"[bench] kept {out}", file=sys.stderr)
        else:
            shutil.rmtree(out, ignore_errors=True)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

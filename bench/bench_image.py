"""Image assembly time by stage, cold and warm, side by side with mkosi 24.3 building the same package set.

``python -m bench.bench_image [--home DIR] [--recipes recipes] [--mode both|warm|cold] [--no-mkosi]
[--check-inputs] [--json]``

Uses a farm home with release keys (made if missing) and a builder key. Runs ``image build`` through the CLI and
reads the per-stage durations it records in ``build.json`` (``initrd`` runs beside ``erofs``, so stages can add up
to more than the total); then times ``image verify``. **warm** changes one package: a ``hello`` .deb (the archive's,
with a new version and one file more, signed by the home's builder key, given with ``--deb``) that no build has
seen, against caches a previous build filled (if its initrd was not cached, the cache was cold: it runs once more).
**cold** moves the image build's caches (images, stored trees, apt's list cache) aside for the run; the fresh
ones stay. Both give a signed bootable image.
The baseline of the same run is mkosi 24.3 from bookworm-backports, run in an mmdebstrap chroot that has
backports' systemd (the host keeps its own), building the same requested packages into a signed UKI disk image
(:mod:`bench._image_mkosi`): cold (empty package cache) and warm (its cache filled; mkosi builds everything else
again each time); ratios are ours over mkosi's. A baseline that cannot run reports why.

``--check-inputs`` stops after the set-up (release keys) and the input check, timed; a full build takes minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import parser, progress
from tests.lib.cli import REPO, Farm
from tests.lib.debvariant import variant_deb

ORDER = ("inputs", "rootfs", "customize", "erofs", "initrd", "verity", "signature", "uki", "esp", "gpt", "profile",
         "sums")  # fmt: skip
SDE = "1700000000"


def timed(farm: Farm, *args: str) -> float:
    t0 = time.monotonic()
    farm.run(*args)
    return round(time.monotonic() - t0, 2)


# A farm build older than the archive's version (a home whose zlib predates bookworm-security's) would stop the
# build (E-IMAGE-DOWNGRADE): the bench times assembly, so the archive's binary stands in, as the SBOM says.
FALLBACK = "--allow-archive-fallback"


def check_inputs(farm: Farm, recipes: str, out: Path) -> dict[str, Any]:
    t0 = time.monotonic()
    found = farm.json("image", "build", "--check-inputs", FALLBACK, "--recipes", recipes, "-o", str(out))
    return {"seconds": round(time.monotonic() - t0, 2), "packages": len(found["packages"]), "digest": found["digest"]}


def build(farm: Farm, recipes: str, out: Path, deb: Path) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    total = timed(farm, "image", "build", FALLBACK, "--recipes", recipes, "--deb", str(deb), "-o", str(out))
    built: dict[str, Any] = json.loads((out / "build.json").read_text())
    raw = Path(built["raw"])
    return {
        "total_seconds": total,
        "stages": built["stages"],
        "cached": built.get("cached", {}),
        "tree": built.get("tree", ""),  # how the root tree was made (fresh, stored, "delta: ...")
        "sizes": built["sizes"],
        "raw_allocated": raw.stat().st_blocks * 512,  # the disk file is sparse: slot B and slack are holes
        "verify_seconds": timed(farm, "image", "verify", str(raw), "--cert", str(farm.home / "release/verity.crt")),
    }


def ours(farm: Farm, recipes: str, work: Path, mode: str) -> dict[str, Any]:
    """Our cold build (the image build's caches moved aside: images, stored trees, apt's list cache; the fresh ones
    are kept, the old ones dropped after) and warm."""
    caches = [farm.home / "cache" / name for name in ("image", "apt")]
    runs: dict[str, Any] = {}
    if mode in ("both", "cold"):
        aside = Path(tempfile.mkdtemp(prefix="mangos-bench-cache-", dir=farm.home))
        try:
            for cache in caches:
                if cache.exists():
                    cache.rename(aside / cache.name)
            progress("our build, cold (empty image and apt caches)")
            runs["cold"] = build(farm, recipes, work / "cold", variant_deb(farm.home, work / "debs", "cold"))
        except BaseException:
            for cache in caches:
                if (aside / cache.name).exists():
                    shutil.rmtree(cache, ignore_errors=True)
                    (aside / cache.name).rename(cache)
            raise
        finally:
            shutil.rmtree(aside, ignore_errors=True)
    if mode in ("both", "warm"):
        for attempt in range(2):  # a cache filled by other code (or none) misses once: it is filled then
            progress("our build, warm (one package changed)")
            run = build(farm, recipes, work / "warm", variant_deb(farm.home, work / "debs", f"w{time.time_ns()}"))
            if run["cached"].get("initrd") or attempt:
                runs["warm"] = run
                break
            progress("the initrd was not cached yet (now it is): once more")
    return runs


def render(result: dict[str, Any]) -> str:
    inputs = result["check_inputs"]
    lines = [f"input check: {inputs['packages']} packages in {inputs['seconds']:.1f}s (load {result['load']})"]
    if result["total_seconds"] is None:
        return "\n".join([*lines, "(--check-inputs: no image built)"])
    mk = result.get("mkosi", {})
    for mode, run in result["runs"].items():
        base = mk.get(mode, {}).get("total_seconds")
        vs = f", mkosi {base:.1f}s: ratio {run['total_seconds'] / base:.2f}" if base else ""
        lines.append(f"{mode}: {run['total_seconds']:.1f}s{vs} (tree: {run.get('tree') or '?'})")
        stages = sorted(run["stages"], key=lambda s: ORDER.index(s) if s in ORDER else len(ORDER))
        lines += [f"  {stage:12} {run['stages'][stage]:7.2f}s" for stage in stages]
        lines.append(f"  raw {run['raw_allocated'] / 1e6:.0f} MB allocated; verify {run['verify_seconds']:.1f}s")
        if mk.get(mode, {}).get("stages"):
            lines += [f"  mkosi {k:12} {v:7.2f}s" for k, v in mk[mode]["stages"].items()]
    if mk.get("error"):
        lines.append(f"mkosi baseline: {mk['error']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = parser("bench_image", __doc__)
    p.add_argument("--home", default=os.environ.get("MANGOS_FARM_HOME", str(REPO / ".mangos")), help="farm home")
    p.add_argument("--recipes", default="recipes", help="Debian recipes whose farm builds go in (default recipes)")
    p.add_argument("--mode", choices=["both", "warm", "cold"], default="both", help="which builds (default both)")
    p.add_argument("--no-mkosi", action="store_true", help="skip the mkosi baseline")
    p.add_argument("--check-inputs", action="store_true", help="set-up and the input check only: no image built")
    args = p.parse_args(argv)
    home = Path(args.home).resolve()
    farm = Farm.at(REPO, home, SOURCE_DATE_EPOCH=SDE)
    if not (home / "release" / "verity.key").exists():
        farm.run("keys", "generate", "--release")
    if not (home / "keys" / "builder.key").exists():
        farm.run("keys", "generate")
    work = Path(tempfile.mkdtemp(prefix="mangos-bench-image-"))
    try:
        result: dict[str, Any] = {
            "load": os.getloadavg()[0],
            "check_inputs": check_inputs(farm, args.recipes, work / "check"),
            "total_seconds": None,
            "ratio_build_to_input_check": None,
            "stages": {},
            "sizes": {},
            "runs": {},
        }
        if not args.check_inputs:
            result["runs"] = ours(farm, args.recipes, work, args.mode)
            main_run = result["runs"].get("warm") or result["runs"]["cold"]
            result |= {k: main_run[k] for k in ("total_seconds", "stages", "sizes")}
            result["ratio_build_to_input_check"] = round(result["total_seconds"] / result["check_inputs"]["seconds"], 2)
            if not args.no_mkosi:
                from bench import _image_mkosi

                result["mkosi"] = _image_mkosi.baseline(home, work / "mkosi", args.mode, keep=args.keep)
                result["ratio_to_mkosi"] = {
                    mode: round(run["total_seconds"] / result["mkosi"][mode]["total_seconds"], 2)
                    for mode, run in result["runs"].items()
                    if result["mkosi"].get(mode, {}).get("total_seconds")
                }
            result["load_after"] = os.getloadavg()[0]
    finally:
        if args.keep:
            print(f"[bench] kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

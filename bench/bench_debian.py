"""Per-package wall time of the Debian set: environment setup vs build.

``python -m bench.bench_debian [--recipes recipes/debian] [--workers 1] [--json]``

In a fresh farm home: times ``env build`` (the one-off environment), then ``rebuild --force`` of the set, and
splits each package's time from its build log's phase markers into: stage (environment unpack / local
repository), build-deps (apt-get build-dep, offline), dpkg-buildpackage, and the rest (source export, packing,
signing, upload). One worker by default, so packages do not compete for the two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from farm.store import open_store

REPO = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "mangos-farm")
PHASE = re.compile(r"^==> phase (\S+) ([0-9.]+)$", re.M)


def farm(home: Path, *args: str, workers: int) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANGOS_FARM_")}
    env |= {"MANGOS_FARM_HOME": str(home), "MANGOS_FARM_WORKERS": str(workers)}
    return subprocess.run([CLI, *args], cwd=REPO, env=env, capture_output=True, text=True, check=True)


def phases(log: str) -> dict[str, float]:
    marks = [(m.group(1), float(m.group(2))) for m in PHASE.finditer(log)]
    return {name: round(marks[i + 1][1] - t, 2) for i, (name, t) in enumerate(marks[:-1])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipes", default="recipes/debian")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="mangos-bench-debian-"))
    try:
        farm(home, "keys", "generate", workers=args.workers)
        t0 = time.monotonic()
        farm(home, "env", "build", "bookworm-amd64", workers=args.workers)
        env_seconds = time.monotonic() - t0
        t0 = time.monotonic()
        result: dict[str, Any] = json.loads(
            farm(home, "rebuild", args.recipes, "--force", "--json", workers=args.workers).stdout
        )
        set_seconds = time.monotonic() - t0
        store = open_store(str(home / "store"))
        rows = []
        for b in result["builds"]:
            record = store.get_record(b["build_key"]) if b["build_key"] else None
            split = phases(store.get_bytes(record.log).decode()) if record else {}
            total = float(b.get("seconds") or 0)
            stage_and_deps = split.get("build-deps", 0.0)
            rows.append(
                {
                    "recipe": b["recipe"],
                    "state": b["state"],
                    "total_s": round(total, 2),
                    "build_deps_s": stage_and_deps,
                    "dpkg_buildpackage_s": split.get("dpkg-buildpackage", 0.0),
                    "other_s": round(total - stage_and_deps - split.get("dpkg-buildpackage", 0.0), 2),
                }
            )
        report = {"environment_build_s": round(env_seconds, 2), "set_wall_s": round(set_seconds, 2), "builds": rows}
        if args.json:
            print(json.dumps(report, indent=2))
            return 0
        print(
            f"environment (mmdebstrap, once): {env_seconds:.1f}s; the set with {args.workers} worker(s): "
            f"{set_seconds:.1f}s wall"
        )
        print(f"{'package':<10} {'total':>8} {'build-deps':>11} {'dpkg-buildpackage':>18} {'other':>7}")
        for r in rows:
            print(
                f"{r['recipe']:<10} {r['total_s']:>7.1f}s {r['build_deps_s']:>10.1f}s "
                f"{r['dpkg_buildpackage_s']:>17.1f}s {r['other_s']:>6.1f}s"
            )
        return 0
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

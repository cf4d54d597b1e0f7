"""Per-package wall time of the Debian set: environment setup vs build.

``python -m bench.bench_debian [--recipes recipes/debian] [--workers 1] [--dry-run] [--json]``

In a fresh farm home: times ``env build`` (the one-off environment), then ``rebuild --force`` of the set, and
splits each package's time from its build log's phase markers into: stage (environment unpack / local
repository), build-deps (apt-get build-dep, offline), dpkg-buildpackage, and the rest (source export, packing,
signing, upload). One worker by default, so packages do not compete for the two cores. The baseline of the same
run is the environment build: the report gives the set's wall time against it.

``--dry-run`` does the set-up only (fresh home, builder key, the set checked with ``recipes check``) and reports
the same keys with no timings: the environment build alone takes minutes (mmdebstrap from a Debian mirror).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from bench._common import parser, progress, workdir
from farm.store import open_store
from tests.lib.cli import REPO, Farm

PHASE = re.compile(r"^==> phase (\S+) ([0-9.]+)$", re.M)
ENVIRONMENT = "bookworm-amd64"


def phases(log: str) -> dict[str, float]:
    marks = [(m.group(1), float(m.group(2))) for m in PHASE.finditer(log)]
    return {name: round(marks[i + 1][1] - t, 2) for i, (name, t) in enumerate(marks[:-1])}


def build_rows(farm: Farm, result: dict[str, Any]) -> list[dict[str, Any]]:
    store = open_store(str(farm.home / "store"))
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
    return rows


def measure(farm: Farm, recipes: str, dry_run: bool) -> dict[str, Any]:
    farm.run("keys", "generate")
    checked: dict[str, Any] = farm.json("recipes", "check", recipes)
    report: dict[str, Any] = {
        "dry_run": dry_run,
        "recipes": sorted(checked["recipes"]),
        "environment_build_s": None,
        "set_wall_s": None,
        "ratio_set_to_environment": None,
        "builds": [],
    }
    if dry_run:
        progress(f"dry run: would time `env build {ENVIRONMENT}` and `rebuild {recipes} --force`")
        return report
    t0 = time.monotonic()
    farm.run("env", "build", ENVIRONMENT)
    env_seconds = time.monotonic() - t0
    t0 = time.monotonic()
    result: dict[str, Any] = farm.json("rebuild", recipes, "--force")
    set_seconds = time.monotonic() - t0
    report |= {
        "environment_build_s": round(env_seconds, 2),
        "set_wall_s": round(set_seconds, 2),
        "ratio_set_to_environment": round(set_seconds / env_seconds, 2),
        "builds": build_rows(farm, result),
    }
    return report


def render(report: dict[str, Any], workers: int) -> str:
    if report["dry_run"]:
        return f"dry run: set-up only, {len(report['recipes'])} recipes checked: {', '.join(report['recipes'])}"
    lines = [
        f"environment (mmdebstrap, once): {report['environment_build_s']:.1f}s; the set with {workers} worker(s): "
        f"{report['set_wall_s']:.1f}s wall ({report['ratio_set_to_environment']:.1f}x the environment)",
        f"{'package':<10} {'total':>8} {'build-deps':>11} {'dpkg-buildpackage':>18} {'other':>7}",
    ]
    for r in report["builds"]:
        lines.append(
            f"{r['recipe']:<10} {r['total_s']:>7.1f}s {r['build_deps_s']:>10.1f}s "
            f"{r['dpkg_buildpackage_s']:>17.1f}s {r['other_s']:>6.1f}s"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = parser("bench_debian", __doc__)
    p.add_argument("--recipes", default="recipes/debian", help="the Debian recipe set (default recipes/debian)")
    p.add_argument("--workers", type=int, default=1, help="MANGOS_FARM_WORKERS (default 1)")
    p.add_argument("--dry-run", action="store_true", help="set-up only: no environment, no builds, no timings")
    args = p.parse_args(argv)
    with workdir("mangos-bench-debian-", args.keep) as home:
        farm = Farm.at(REPO, home, MANGOS_FARM_WORKERS=str(args.workers))
        report = measure(farm, str(Path(args.recipes)), args.dry_run)
    print(json.dumps(report, indent=2) if args.json else render(report, args.workers))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Plan a recipes directory once, then submit it as runs on request: what ``mangos-farm rebuild DIR`` does, with
the plan and each submission timed apart (the CLI does both in one process and reports neither).

Run by :mod:`bench.bench_archive` in the fleet client's environment (MANGOS_FARM_HOME, _BROKER, _STATE, _STORE)::

    python -m bench._archive_submit DIR [--profile FILE]

It plans DIR (``farm.coordinator.planning.plan_recipes``, as ``rebuild`` does) and prints one JSON line
``{"event": "planned", ...}``; then, for each line ``ARCH [force]`` read from stdin, submits the plan as one run
for that architecture on the rebuild lane and prints ``{"event": "submitted", "run": ID, ...}``. EOF ends it.
With ``--profile FILE`` the planning runs under cProfile (slower) and FILE gets its statistics.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path
from typing import Any


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event} | fields), flush=True)


def top_functions(profile: cProfile.Profile, out: Path, count: int = 25) -> list[dict[str, Any]]:
    """The ``count`` functions with the most cumulative time, also written as pstats text to ``out``."""
    buf = io.StringIO()
    stats = pstats.Stats(profile, stream=buf).sort_stats("cumulative")
    stats.print_stats(60)
    out.write_text(buf.getvalue())
    rows = []
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (file, line, func), (_cc, calls, tottime, cumtime, _callers) in sorted(raw.items(), key=lambda kv: -kv[1][3]):
        rows.append({"function": f"{func} ({Path(file).name}:{line})", "calls": calls, "own_s": round(tottime, 3),
                     "cumulative_s": round(cumtime, 3)})  # fmt: skip
        if len(rows) == count:
            break
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench._archive_submit", description=__doc__.split("\n\n")[0])
    p.add_argument("dir", type=Path)
    p.add_argument("--profile", type=Path, help="cProfile the planning; pstats text to this file")
    args = p.parse_args(argv)

    start = time.monotonic()
    from farm.coordinator.planning import plan_recipes
    from farm.coordinator.policy import Lane
    from farm.settings import Settings
    from farm.trust import keys as keymod
    from workers.fleet import open_fleet

    settings = Settings.from_env()
    keymod.load_builder(settings.keys_dir)
    imported = time.monotonic() - start

    profile = cProfile.Profile() if args.profile else None
    t0 = time.monotonic()
    if profile:
        profile.enable()
    plan, store = plan_recipes(args.dir, settings)
    if profile:
        profile.disable()
    plan_s = time.monotonic() - t0
    top = top_functions(profile, args.profile) if profile and args.profile else []
    emit("planned", plan_s=round(plan_s, 3), import_s=round(imported, 3), builds=len(plan.order),
         to_build=len(plan.to_build), profile=top)  # fmt: skip

    fleet = open_fleet(settings, store)
    for line in sys.stdin:
        words = line.split()
        if not words:
            break
        t0 = time.monotonic()
        run = fleet.coordinator.submit(plan, lane=Lane.REBUILD, arch=words[0], force="force" in words[1:])
        emit("submitted", arch=words[0], run=run.id, submit_s=round(time.monotonic() - t0, 3), at=time.time())
    fleet.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

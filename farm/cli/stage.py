"""``rebuild --stage 1``: the self-hosting check of a set with bootstrap edges (:mod:`farm.coordinator.stage`).

Each recipe with a bootstrap edge is built again against the farm's stage-0 builds of those dependencies (one run
per recipe, all submitted at once) and its .debs compared with its stage-0 .debs (:mod:`farm.crossval.stage1`).
Exit 0 when every such recipe is equal at both stages, 1 when one differs or could not be built (stage 0 missing
included).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from farm.cli.common import print_json
from farm.errors import E
from farm.settings import Settings


def cmd_stage1(args: argparse.Namespace, settings: Settings) -> int:
    from farm.cli.progress import Progress
    from farm.coordinator.planning import plan_recipes
    from farm.coordinator.policy import Lane
    from farm.coordinator.stage import stage1_plans
    from farm.crossval.stage1 import verdict
    from farm.trust import keys as keymod
    from workers.fleet import open_fleet

    keymod.check_builder(settings.keys_dir)
    plan, store = plan_recipes(Path(args.dir), settings)
    stages = stage1_plans(plan, store.get_records, force=args.force, where=args.dir)
    progress = Progress(sum(len(s.plan.order) for s in stages if s.plan), quiet_cached=not args.verbose)
    fleet = open_fleet(settings, store, progress)
    coordinator = fleet.coordinator
    lane = Lane(args.lane or settings.lane)
    start = time.monotonic()
    runs: dict[str, str] = {}
    try:
        for s in stages:
            if s.plan is not None:
                reason = f"stage 1 of {s.recipe}: against the farm's {', '.join(s.depends_on_farm)}"
                run = coordinator.submit(s.plan, lane=lane, arch=settings.build_arch, force=False, reason=reason)
                runs[s.recipe] = run.id
                fleet.worker_log = settings.runs_dir / run.id / "workers.log"
        for run_id in runs.values():
            if settings.embedded_broker:
                coordinator.run_until_done(run_id)
            else:
                while coordinator.runs.get(run_id).status == "active":
                    time.sleep(0.5)
    finally:
        progress.close()
        fleet.close()
    entries = []
    for s in stages:
        record, error = None, None
        if s.recipe in runs:
            job = _job(coordinator.status(runs[s.recipe]), s.recipe)
            record = store.get_record(s.build.key) if s.build and s.build.key else None
            error = job.get("error") or {"message": f"stage 1 build {job.get('state')}: {job.get('why', '')}"}
        entries.append(verdict(s, record, error, store, settings.home / "stage1") | {"run": runs.get(s.recipe)})
    result = _result(entries, time.monotonic() - start)
    out = settings.home / "stage1" / "result.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, sort_keys=True, separators=(",", ":")) + "\n")
    if args.json:
        print_json(result)
    else:
        _print(result)
    return 0 if result["ok"] else 1


def _job(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next((b for b in status["builds"] if b["recipe"] == name), {})


def _result(entries: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    summary = {k: sum(1 for e in entries if e["outcome"] == k) for k in ("equal", "different", "failed")}
    return {
        "ok": summary["equal"] == len(entries),
        "stage": 1,
        "stage1": entries,
        "summary": summary,
        "seconds": round(seconds, 3),
    }


def _print(result: dict[str, Any]) -> None:
    s = result["summary"]
    print(f"stage 1: {len(result['stage1'])} recipes with bootstrap edges: "
          f"{s['equal']} equal, {s['different']} different, {s['failed']} failed")  # fmt: skip
    for e in result["stage1"]:
        against = ", ".join(e["depends_on_farm"])
        print(f"{e['outcome']:<9} {e['recipe']} (against the farm's {against})")
        if e["error"]:
            print(f"    error[{e['error'].get('code', E.BUILD_FAILED)}]: {e['error'].get('message', '')}")
            if e["error"].get("hint"):
                print(f"    hint: {e['error']['hint']}")
        for d in e["differences"]:
            side = "" if d["stage0"] and d["stage1"] else f" (only in stage {0 if d['stage0'] else 1})"
            print(f"    differs: {d['file']}{side}")
            for line in d.get("excerpt", [])[:6]:
                print(f"      {line}")
            if d.get("report", {}).get("text"):
                print(f"      diffoscope report: blob {d['report']['text']}")

"""``recipes update``: the Debian recipes compared with the archive, what moved re-imported, reported, recorded in the
coordinator state (for the ``mangos_recipes_behind_archive`` gauges) and, with ``--queue``, rebuilt on the security
lane together with everything that depends on it."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from farm.cli.common import built_environment, print_json
from farm.settings import Settings

if TYPE_CHECKING:
    from farm.archive.update import Outcome, Reimport
    from farm.envs.debian import EnvRecord


def recipes_update(args: argparse.Namespace, settings: Settings) -> int:
    from farm.archive.update import Status, update_recipes
    from farm.coordinator.kv import open_kv
    from farm.coordinator.updates import LagBoard
    from farm.envs.debian import load_records

    recipes_dir = Path(args.dir)
    record = {r.name: r for r in load_records(settings.home / "envs")}.get(args.env)
    arch = _arch(record) or settings.build_arch

    def importer(names: Sequence[str]) -> list[Reimport]:
        from farm.archive.update import archive_importer

        env, store = built_environment(args, settings)
        return archive_importer(
            recipes_dir,
            env_name=env.name,
            env_digest=env.digest,
            store=store,
            cache_dir=settings.cache_dir,
            arch=arch,
        )(names)

    outcomes = update_recipes(recipes_dir, importer, arch=arch)
    waiting = LagBoard(open_kv(settings.state_url)).record(outcomes, time.time())
    queued = None
    if args.queue and any(o.status is Status.UPDATED for o in outcomes):
        queued = queue_updates(recipes_dir, outcomes, settings)
    failed = any(o.status is Status.FAILED for o in outcomes)
    if args.json:
        print_json(
            {
                "ok": not failed,
                "recipes": [o.to_json() for o in outcomes],
                "summary": summary(outcomes),
                "waiting": [lag.to_json() for lag in waiting],
                "queued": queued,
            }
        )
        return 1 if failed else 0
    for o in outcomes:
        print_outcome(o)
    counts = summary(outcomes)
    print(f"{len(outcomes)} Debian recipe(s) in {recipes_dir}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    if queued:
        print(f"queued run {queued['run']} on the {queued['lane']} lane: {', '.join(queued['builds'])}")
        print(f"  queued because: {queued['reason']}")
    elif any(o.status is Status.UPDATED for o in outcomes):
        print(f"rebuild them with: mangos-farm recipes update --queue --dir {recipes_dir} (or mangos-farm rebuild)")
    return 1 if failed else 0


def _arch(record: EnvRecord | None) -> str | None:
    """The build architecture of the environment (as ``recipes import`` takes it), None when unknown."""
    if record is None:
        return None
    return str(record.spec.get("architecture") or "") or None


def summary(outcomes: list[Outcome]) -> dict[str, int]:
    from farm.archive.update import Status

    return {s.value: sum(1 for o in outcomes if o.status is s) for s in Status}


def print_outcome(o: Outcome) -> None:
    from farm.archive.update import Status

    if o.status is Status.UP_TO_DATE:
        print(f"{o.name}: up to date at {o.current}")
        return
    where = f" ({o.suite})" if o.suite else ""
    if o.status is Status.UPDATED:
        print(f"{o.name}: {o.reason}{where}: updated, wrote {o.path}")
        for entry in o.changelog:
            print(f"    {entry['version']} ({entry['distributions']}; urgency={entry['urgency']})")
            for line in entry["changes"]:
                print(f"      {line.strip()}")
        return
    error = o.error or {}
    at = f" at {o.archive}{where}" if o.archive else ""
    print(f"{o.name}: {o.status.value}{at} (recipe at {o.current}): error[{error.get('code')}]: {error.get('message')}")


def queue_updates(recipes_dir: Path, outcomes: list[Outcome], settings: Settings) -> dict[str, Any]:
    """Submit the rebuild of the updated recipes and of every recipe that depends on them on the security lane,
    through ``rebuild``'s path (plan, fleet, submit); with the embedded broker, drive it to its end here."""
    from farm.archive.update import build_reasons, read_recipes, run_reason
    from farm.coordinator.planning import plan_recipes
    from farm.coordinator.policy import Lane
    from farm.trust import keys as keymod
    from workers.fleet import open_fleet

    keymod.check_builder(settings.keys_dir)  # fail now, not in every worker, if there is no key
    reasons = build_reasons(outcomes, read_recipes(recipes_dir))
    plan, store = plan_recipes(recipes_dir, settings)
    fleet = open_fleet(settings, store)
    try:
        lane, reason = Lane.SECURITY, run_reason(outcomes)
        run = fleet.coordinator.submit(
            plan.only(reasons), lane=lane, arch=settings.build_arch, force=False, reason=reason, reasons=reasons
        )
        fleet.worker_log = settings.runs_dir / run.id / "workers.log"
        fleet.worker_log.parent.mkdir(parents=True, exist_ok=True)
        if settings.embedded_broker:  # no coordinator service: this process drives the run
            run = fleet.coordinator.run_until_done(run.id)
    finally:
        fleet.close()
    return {"run": run.id, "lane": lane.value, "builds": sorted(reasons), "reason": reason, "status": run.status}

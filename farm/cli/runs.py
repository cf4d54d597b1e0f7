"""``rebuild``, ``status``, ``cancel``, ``retry``: runs of the farm, from submitting one to its last build."""

from __future__ import annotations

import argparse
import gc
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from farm.cli.common import Subparsers, add_command, json_flag, print_json
from farm.errors import E
from farm.settings import Settings

if TYPE_CHECKING:
    from farm.coordinator.engine import Coordinator

TEXT_LIMIT = 50  # builds per page of `status` as text; --json lists every build the filters select unless limited


def cmd_rebuild(args: argparse.Namespace, settings: Settings) -> int:
    if args.stage == 1:  # the self-hosting check: its own module
        from farm.cli.stage import cmd_stage1

        return cmd_stage1(args, settings)
    with _collector_paused():
        from farm.cli.progress import Progress
        from farm.coordinator.planning import plan_recipes
        from farm.coordinator.policy import Lane
        from farm.trust import keys as keymod
        from workers.fleet import open_fleet

        keymod.check_builder(settings.keys_dir)  # fail now, not in every worker, if there is no key
        plan, store = plan_recipes(Path(args.dir), settings, force=args.force)
        progress = Progress(len(plan.order), quiet_cached=not args.verbose)
        lane = Lane(args.lane or settings.lane)
        fleet = open_fleet(settings, store, progress)
        coordinator = fleet.coordinator
        run = coordinator.submit(plan, lane=lane, arch=settings.build_arch, force=args.force)
    run_dir = settings.runs_dir / run.id
    fleet.worker_log = run_dir / "workers.log"
    if not settings.embedded_broker and not args.wait:
        print(run.id)
        return 0
    start = time.monotonic()
    try:
        if settings.embedded_broker:
            coordinator.run_until_done(run.id)
        else:
            _follow(coordinator, run.id, progress)
    finally:
        progress.close()
        fleet.close()
    status = coordinator.status(run.id)
    status["seconds"] = round(time.monotonic() - start, 3)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Compact: the indenting encoder is pure Python and took longer than a 1,000-build cached run itself.
    (run_dir / "result.json").write_text(json.dumps(status, sort_keys=True, separators=(",", ":")) + "\n")
    if args.json:
        print_json(status)
    else:
        _print_summary(status)
    return 0 if status["ok"] else 1


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused while a rebuild imports, plans and submits, and as it was after.

    Those steps make tens of thousands of objects that live as long as the run (recipes, records, jobs) and hold
    no garbage cycles worth finding; with the collector on, allocating them triggers collections that scan them
    again and again (about a sixth of a fully cached 1,000-recipe rebuild). What they made is then moved out of
    the collector's sight (``gc.freeze``, as the coordinator does with a run it loaded), so that the long run that
    may follow (real builds) does not scan it either. Only the steps inside are affected: the collector is back
    to its previous state (on, normally) before the run is driven, even when planning fails."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        gc.freeze()
    finally:
        if enabled:
            gc.enable()


def _print_summary(status: dict[str, Any]) -> None:
    s = status["summary"]
    print(
        f"run {status['run']}: {s['built']} built, {s['cached']} cached, {s['failed']} failed, "
        f"{s['blocked']} blocked" + (f", {s['cancelled']} cancelled" if s["cancelled"] else "")
    )
    for b in status["builds"]:
        if b["state"] == "failed":
            err = b.get("error") or {}
            print(f"\n--- {b['recipe']} failed: error[{err.get('code', E.BUILD_FAILED)}]: {err.get('message', '')}")
            if err.get("hint"):
                print(f"    hint: {err['hint']}")
            if b.get("log"):
                print(f"    full log: blob {b['log']}")
            tail = (b.get("log_tail") or "").splitlines()[-25:]
            if tail:
                print("    log tail:\n" + "\n".join("    | " + ln for ln in tail))
        elif b["state"] == "blocked":
            print(f"--- {b['recipe']} not built: {b['why']}")


def _follow(coordinator: Coordinator, run_id: str, progress: Any) -> None:
    """Watch a run that the fleet's coordinator drives, reporting each change."""
    seen: dict[str, str] = {}
    while True:
        jobs = coordinator.runs.jobs(run_id, recipes=False)
        for job in jobs.values():
            if seen.get(job.name) != job.state.value + job.why:
                seen[job.name] = job.state.value + job.why
                progress(job, jobs)
        if coordinator.runs.get(run_id).status != "active":
            return
        time.sleep(0.5)


def _coordinator(settings: Settings) -> Coordinator:
    """The coordinator over this farm's state and store, for commands that dispatch nothing themselves."""
    from farm.store import open_store
    from workers.fleet import open_fleet

    return open_fleet(settings, open_store(settings.store_url)).coordinator


def _run_id(coordinator: Coordinator, run: str | None) -> str:
    return str(run or coordinator.runs.latest().id)


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from farm.coordinator.kv import open_kv
    from farm.coordinator.runs import RunStore
    from farm.coordinator.views import StatusQuery, run_status, slots
    from farm.crossval.results import update_metrics

    query = StatusQuery.parse(
        state=args.state,
        lane=args.lane,
        name=args.name,
        limit=args.limit,
        page=args.page,
        default_limit=None if args.json else TEXT_LIMIT,
    )
    kv = open_kv(settings.state_url)
    runs = RunStore(kv)
    run_id = args.run or runs.latest().id
    status = run_status(runs, run_id, query, slots=slots(kv, settings.lease_timeout), aging=settings.aging)
    reproducibility = update_metrics(settings)  # from 'mangos-farm recheck' results, per recipe and "all"
    if args.json:
        print_json(status | {"reproducibility": reproducibility})
        return 0
    _print_status(status)
    if reproducibility:
        print(
            "reproducibility (recheck): "
            + ", ".join(
                f"{n} {r['reproducible']}/{r['checked']}"
                + (f" ({r['rate']:.0%})" if r["rate"] is not None else "")
                + (f", {r['failed']} failed to build" if r["failed"] else "")
                for n, r in reproducibility.items()
            )
        )
    return 0


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    minutes = int(seconds // 60)
    return f"{minutes}m" if minutes < 120 else f"{minutes // 60}h {minutes % 60:02d}m"


def _print_status(status: dict[str, Any]) -> None:
    """The header (counts, done of total, critical path, ETA), then the page of builds the query selected."""
    s = status["summary"]
    print(
        f"run {status['run']} ({status['status']}, lane {status['lane']}, arch {status['arch']}): "
        + ", ".join(f"{v} {k}" for k, v in s.items() if v)
        + f"; oldest waiting {status['oldest_waiting_seconds']:.0f}s"
        + (f"\nqueued because: {status['reason']}" if status.get("reason") else "")
    )
    path, eta = status["critical_path"], status["eta"]
    line = f"done {status['done']} of {status['total']}"
    if path["builds"]:
        took = f", ~{_duration(path['seconds'])}" if path["seconds"] is not None else ""
        line += f"; critical path {path['builds']} builds{took} (from {path['first']})"
    if eta["seconds"] is not None and status["done"] < status["total"]:
        line += f"; ETA ~{_duration(eta['seconds'])} on {eta['slots']} slots"
    elif eta["why"] and status["done"] < status["total"]:
        line += f"; no ETA: {eta['why']}"
    print(line)
    query, builds = status["query"], status["builds"]
    filters = [f"{k} {','.join(v) if isinstance(v, list) else v}" for k in ("state", "lane", "name")
               if (v := query[k])]  # fmt: skip
    first = (status["page"] - 1) * (query["limit"] or 0) + 1
    shown = f"{first}-{first + len(builds) - 1}" if builds else "none"
    print(
        f"builds {shown} of {status['matched']}"
        + (f" ({'; '.join(filters)})" if filters else "")
        + (f", page {status['page']} of {status['pages']}" if status["pages"] > 1 or status["page"] > 1 else "")
        + f"; {status['order']}"
    )
    width = max((len(b["recipe"]) for b in builds), default=0)
    for b in builds:
        extra = f" [{b['worker']}]" if b.get("worker") and b["state"] in ("running", "built") else ""
        print(f"{b['state']:<9} {b['recipe']:<{width}}  {b['why']}{extra}")
        if b.get("reason"):
            print(f"{'':<9} {'':<{width}}  queued because: {b['reason']}")
    if status["page"] < status["pages"]:
        print(f"more: --page {status['page'] + 1} (or --limit 0 for all)")


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    run = _coordinator(settings).cancel(args.run)  # by the coordinator driving the state, if one does
    print(f"run {run.id} {run.status}")
    return 0


def cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    coordinator = _coordinator(settings)
    run_id, _, name = args.build.rpartition("/")
    run_id = run_id or _run_id(coordinator, None)
    coordinator.retry(run_id, name)
    print(f"build {name} of run {run_id} will be retried")
    return 0


def add_rebuild(sub: Subparsers) -> None:
    sp = add_command(sub, "rebuild", cmd_rebuild, "build everything not already built, in dependency order")
    sp.add_argument("dir", nargs="?", default="recipes")
    sp.add_argument("--force", action="store_true", help="rebuild even what is cached")
    sp.add_argument("--workers", type=int, help="local build processes (env MANGOS_FARM_WORKERS)")
    sp.add_argument("--lane", choices=["security", "interactive", "rebuild"], help="priority lane (default rebuild)")
    sp.add_argument("--wait", action="store_true", help="with a fleet: follow the run to its end, exit 1 on failure")
    sp.add_argument(
        "--stage",
        type=int,
        choices=[0, 1],
        default=0,
        help="1: rebuild each recipe with a bootstrap edge against the farm's stage-0 builds and compare (exit 1 "
        "if any differs or fails)",
    )
    json_flag(sp)


def add_status(sub: Subparsers) -> None:
    sp = add_command(sub, "status", cmd_status, "a run's progress and its builds, with why each waiting one waits")
    sp.description = (
        "a run: counts by state, done of total, the critical path remaining and an ETA (from the durations of "
        "builds already done), then one page of its builds, failures first, then the oldest waiting, then the rest "
        "in plan order, each with its state and, when waiting, why."
    )
    sp.add_argument("run", nargs="?", help="run id (default: the latest)")
    sp.add_argument("--state", help="only builds in this state (several: failed,blocked)")
    sp.add_argument("--lane", help="only builds competing in this lane now (security, interactive, rebuild)")
    sp.add_argument("--name", metavar="GLOB", help="only builds whose recipe name matches GLOB")
    sp.add_argument("--limit", metavar="N", help=f"builds per page (default {TEXT_LIMIT}; with --json all; 0: all)")
    sp.add_argument("--page", metavar="P", help="which page of builds (default 1)")
    json_flag(sp)


def add_cancel(sub: Subparsers) -> None:
    sp = add_command(sub, "cancel", cmd_cancel, "cancel a run: nothing more is dispatched, running builds are revoked")
    sp.add_argument("run")


def add_retry(sub: Subparsers) -> None:
    sp = add_command(sub, "retry", cmd_retry, "retry a failed build (and what it blocked)")
    sp.add_argument("build", help="RUN/RECIPE, or RECIPE for the latest run")


COMMANDS = {"rebuild": add_rebuild, "status": add_status, "cancel": add_cancel, "retry": add_retry}

"""``recheck``, ``publish``, ``compare``, ``bundle``, ``rebuild-bundle``: cross-validation of builds, by rebuilding
them (here, on another worker, in a varied environment, or offline at another organization) and by comparing
signed attestations with trusted peers."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from farm.cli.common import Subparsers, add_command, json_flag, print_json
from farm.settings import Settings


def _context(settings: Settings, variation: Any = None, keys: list[str] | None = None) -> Any:
    """A worker context in this process, exactly as a worker builds it."""
    from farm.build.context import WorkerContext

    return WorkerContext.from_settings(settings, variation=variation, extra_keys=[Path(k) for k in keys or []])


def _plan(recipes_dir: str, settings: Settings) -> Any:
    from farm.coordinator.planning import plan_recipes

    plan, _ = plan_recipes(Path(recipes_dir), settings)
    return plan


def cmd_recheck(args: argparse.Namespace, settings: Settings) -> int:
    from farm.build.variation import Variation
    from farm.crossval.recheck import recheck_one, requests_from_plan
    from farm.crossval.results import update_metrics
    from farm.errors import E, FarmError

    if not args.recipes and not args.all:
        raise FarmError(
            E.RECHECK, "name the recipes to recheck, or pass --all", hint="mangos-farm recheck --all --vary"
        )
    variation = Variation() if args.vary else Variation.unvaried()
    plan = _plan(args.dir, settings)
    pairs = requests_from_plan(plan, [] if args.all else args.recipes)
    fleet = not settings.embedded_broker
    if fleet:  # on the fleet's workers, each recheck on a worker other than the original builder
        results = _FleetRecheck(settings, len(pairs)).run(pairs, variation, args)
    else:  # the embedded farm: in this process, as a worker would
        ctx = _context(settings, variation)
        results = [
            recheck_one(
                req, record, ctx, settings, max_report_size=args.max_report_size, diff_timeout=args.diffoscope_timeout
            )
            for req, record in pairs
        ]
    if not args.json:
        for result in results:
            _print_result(result, settings, fleet)
    table = update_metrics(settings)
    checked = [r for r in results]
    ok = sum(r.reproducible for r in checked)
    if args.json:
        print_json(
            {"results": [r.to_json() for r in checked], "reproducibility": table, "variation": variation.to_json()}
        )
    else:
        failed = sum(1 for r in checked if r.error)
        mode = "the varied" if args.vary else "the same"
        print(
            f"{ok} of {len(checked) - failed} reproducible under {mode} environment"
            + (f"; {failed} failed to build in it" if failed else "")
        )
    return 0 if ok == len(checked) else 1


def _print_result(result: Any, settings: Settings, fleet: bool) -> None:
    verdict = "reproducible" if result.reproducible else "NOT reproducible"
    print(f"{result.recipe:<20} {verdict if not result.error else 'FAILED to build when varied'}")
    if fleet:
        same = " (the same worker: no other was alive)" if result.worker == result.original else ""
        print(f"  rechecked on {result.worker}, built by {result.original}{same}")
    if result.error:
        print(f"  {result.error} (build log: store blob {result.log})")
    for name in result.differing:
        print(f"  {name}: {result.outputs.get(name, '-')[:16]} != {result.varied.get(name, '-')[:16]}")
        rep = result.reports.get(name, {})
        if rep.get("text"):
            print(f"    diffoscope: {settings.home}/crossval/recheck/{result.build_key}/{name}.diffoscope.txt")
            print(f"    (store blobs: text {rep['text']}, html {rep.get('html', '-')})")
        if rep.get("note"):
            print(f"    {rep['note']}")
    if result.ignored:
        print(f"  (differs by design, not compared: {', '.join(result.ignored)})")
    if result.causes and not result.reproducible:
        print(f"  likely cause: {', '.join(result.causes)}")


NO_WORKER_GRACE = 60.0  # seconds without any live worker before a fleet recheck gives up


class _FleetRecheck:
    """Rechecks as signed tasks on the fleet, each sent to a live worker other than the one that built the
    published record (through that worker's own queue; see workers.tasks), results awaited with progress. A chosen
    worker that leaves the fleet before answering has its recheck sent again, to another. Why a queue per worker
    rather than a task that bounces off its original builder: the choice is made once, by the one process that
    knows the live workers, so it is deterministic (a bounced task can land on the same worker again and again)."""

    def __init__(self, settings: Settings, total: int) -> None:
        from farm.cli.progress import Progress
        from farm.coordinator.kv import open_kv
        from farm.coordinator.leases import LeaseBoard
        from farm.coordinator.runs import RunStore
        from farm.crossval.dispatch import original_workers
        from farm.store import open_store
        from workers.fleet import celery_dispatcher

        self.settings = settings
        kv = open_kv(settings.state_url)
        self.board = LeaseBoard(kv, settings.lease_timeout)
        runs = RunStore(kv)
        self.built_by = original_workers(job for run in runs.all_runs() for job in runs.jobs(run.id).values())
        self.dispatcher = celery_dispatcher(settings)
        self.store = open_store(settings.store_url)
        self.progress = Progress(total, quiet_cached=False)
        self.assigned: dict[str, int] = {}
        self.pending: dict[str, tuple[dict[str, Any], str | None, Any]] = {}  # task -> (payload, target, job)
        self.results: dict[str, Any] = {}

    def live(self) -> list[str]:
        arch = self.settings.build_arch
        return sorted(w.name for w in self.board.workers() if not w.disabled and w.arch == arch)

    def send(self, payload: dict[str, Any], job: Any, workers: list[str]) -> None:
        from farm.coordinator.runs import State
        from farm.crossval.dispatch import choose_worker, recheck_queue
        from workers.app import build_queue

        target = choose_worker(str(payload["original"]), workers, self.assigned)
        queue = recheck_queue(target) if target else build_queue(self.settings.build_arch)
        if target:
            self.assigned[target] = self.assigned.get(target, 0) + 1
        self.pending[self.dispatcher.submit_recheck(payload, queue=queue)] = (payload, target, job)
        job.state, job.why = State.QUEUED, f"recheck on {target or 'any worker'}"
        self.progress(job, {})

    def collect(self, task_id: str) -> None:
        from farm.coordinator.runs import State
        from farm.crossval.results import RecheckResult, save_result
        from farm.errors import E, FarmError

        answer = self.dispatcher.recheck_outcome(task_id)
        if answer is None:
            return
        _, _, job = self.pending.pop(task_id)
        if "error" in answer:
            err = answer["error"]
            raise FarmError(
                E.RECHECK,
                f"worker {answer.get('worker') or '?'} did not recheck {job.name}: "
                f"[{err.get('code')}] {err.get('message')}",
                hint="a refused task means the workers' keys/coordinator.pub is not this home's coordinator key; "
                "otherwise see the worker's log",
            )
        result = RecheckResult.from_json(answer["result"])
        save_result(self.settings, self.store, result)
        self.results[result.build_key] = result
        job.state = State.BUILT if result.reproducible else State.FAILED
        job.why = f"{'reproducible' if result.reproducible else result.error or 'NOT reproducible'}, on {result.worker}"
        self.progress(job, {})

    def resend_orphans(self, workers: list[str]) -> None:
        for task_id, (payload, target, job) in list(self.pending.items()):
            if target is not None and target not in workers:  # its worker left the fleet: send it to another
                from farm.coordinator.runs import State

                self.dispatcher.revoke(task_id)
                del self.pending[task_id]
                job.state, job.why = State.WAITING, f"{target} left the fleet before rechecking it"
                self.progress(job, {})
                self.send(payload, job, workers)

    def run(self, pairs: list[Any], variation: Any, args: argparse.Namespace) -> list[Any]:
        import time

        from farm.coordinator.runs import Job
        from farm.crossval.dispatch import recheck_payload
        from farm.errors import E, FarmError

        workers = self.live()
        try:
            for req, record in pairs:
                original = self.built_by.get(record.build_key, record.builder)
                payload = recheck_payload(
                    req, record, variation, original=original,
                    max_report_size=args.max_report_size, diff_timeout=args.diffoscope_timeout,
                )  # fmt: skip
                job = Job(record.recipe, record.version, {}, req.recipe_path, req.fetch_url, record.commit,
                          record.tree, [], 0.0, key=record.build_key)  # fmt: skip
                self.send(payload, job, workers)
            lonely_since: float | None = None
            checked_live = time.monotonic()
            while self.pending:
                self.dispatcher.wait_for_outcome(1.0)
                for task_id in list(self.pending):
                    self.collect(task_id)
                if not self.pending or time.monotonic() - checked_live < self.settings.lease_timeout:
                    continue
                checked_live, workers = time.monotonic(), self.live()
                if workers:
                    lonely_since = None
                    self.resend_orphans(workers)
                    continue
                lonely_since = lonely_since or time.monotonic()
                if time.monotonic() - lonely_since > NO_WORKER_GRACE:
                    raise FarmError(
                        E.RECHECK,
                        f"no worker alive for {NO_WORKER_GRACE:g}s; {len(self.pending)} recheck(s) not done",
                        hint="start workers with 'mangos-farm worker' and run recheck again",
                    )
        finally:
            self.progress.close()
        return [self.results[record.build_key] for _, record in pairs]


def cmd_publish(args: argparse.Namespace, settings: Settings) -> int:
    from farm.crossval.publish import publish

    own = publish(settings, args.output)
    if args.json:
        print_json({"entries": len(own.entries), "destination": args.output})
    else:
        print(f"published {len(own.entries)} attestation(s) to {args.output}")
    return 0


def cmd_compare(args: argparse.Namespace, settings: Settings) -> int:
    from farm.crossval.compare import check_trust_file, compare

    report = compare(settings, check_trust_file(Path(args.trust)))
    if args.json:
        print_json(report)
        return int(report["exit"])
    for name, peer in report["peers"].items():
        line = f"peer {name}: {peer['status']}, {peer['entries']} entries"
        if peer["error"]:
            line += f" -- error[{peer['error']['code']}]: {peer['error']['message']}"
        print(line)
    for row in report["keys"]:
        for name, verdict in sorted(row["peers"].items()):
            if verdict["status"] == "agree":
                continue
            detail = ""
            if verdict["status"] == "disagree":
                pairs = sorted(set(row["self"]) | set(verdict["outputs"]))
                detail = "; ".join(
                    f"{a}: ours {row['self'].get(a, '-')[:16]} theirs {verdict['outputs'].get(a, '-')[:16]}"
                    for a in pairs
                    if row["self"].get(a) != verdict["outputs"].get(a)
                )
            print(f"{verdict['status']:<9} {row['recipe']} {row['version']} [{name}] {detail}".rstrip())
    t = report["totals"]
    print(f"{t['agree']} agree, {t['disagree']} disagree, {t['missing']} missing")
    return int(report["exit"])


def cmd_bundle(args: argparse.Namespace, settings: Settings) -> int:
    from farm.crossval.bundle import make_bundle
    from farm.crossval.recheck import requests_from_plan
    from farm.sources.git import SourceCache
    from farm.store import open_store

    plan = _plan(args.dir, settings)
    [(req, record)] = requests_from_plan(plan, [args.recipe])
    manifest = make_bundle(
        req,
        record,
        store=open_store(settings.store_url),
        sources=SourceCache(Path(settings.cache_dir) / "git"),
        arch=settings.build_arch,
        output=Path(args.output),
        with_env=args.with_env,
    )
    if args.json:
        print_json(manifest)
    else:
        print(f"{args.output}: {record.recipe} {record.version} at {record.commit[:12]}, {manifest['blobs']} blobs")
        for name, digest in sorted(record.outputs().items()):
            print(f"  expects {name} {digest}")
    return 0


def cmd_rebuild_bundle(args: argparse.Namespace, settings: Settings) -> int:
    from farm.crossval.bundle import rebuild_bundle

    ctx = _context(settings, keys=args.key)
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bundle-", dir=settings.work_dir) as tmp:
        result = rebuild_bundle(Path(args.bundle), ctx, Path(tmp))
    if args.json:
        print_json(result.to_json())
    else:
        for name in sorted(set(result.expected) | set(result.rebuilt)):
            mark = "same" if result.expected.get(name) == result.rebuilt.get(name) else "DIFFERENT"
            print(f"{mark:<9} {result.recipe}/{name} {result.rebuilt.get(name, '-')}")
        print("the rebuild gives the bundle's digests" if result.same else "the rebuild differs from the bundle")
    return 0 if result.same else 1


def add_recheck(sub: Subparsers) -> None:
    from farm.crossval.diffreport import DEFAULT_DIFF_TIMEOUT, DEFAULT_MAX_REPORT

    sp = add_command(
        sub, "recheck", cmd_recheck, "rebuild published builds in a varied environment and compare digests"
    )
    sp.add_argument("recipes", nargs="*", help="recipe names (default: none; see --all)")
    sp.add_argument("--all", action="store_true", help="every recipe in the directory")
    sp.add_argument("--dir", default="recipes", help="the recipe directory (default: recipes)")
    sp.add_argument(
        "--vary",
        action="store_true",
        help="vary build path, hostname, TZ, locale, umask, uid, parallelism and the clock (+400 days)",
    )
    sp.add_argument("--max-report-size", type=int, default=DEFAULT_MAX_REPORT, help="diffoscope report size cap")
    sp.add_argument("--diffoscope-timeout", type=float, default=DEFAULT_DIFF_TIMEOUT, help="seconds per diffoscope")
    json_flag(sp)


def add_publish(sub: Subparsers) -> None:
    sp = add_command(sub, "publish", cmd_publish, "sign and publish this organization's attestation log")
    sp.add_argument("-o", "--output", required=True, help="a directory or an s3://BUCKET/PREFIX URL")
    json_flag(sp)


def add_compare(sub: Subparsers) -> None:
    sp = add_command(
        sub, "compare", cmd_compare, "compare attestations with trusted peers (exit 0 agree, 1 differ, 2 error)"
    )
    sp.add_argument("--trust", required=True, help="peers.toml: [peers.NAME] key = PEM, log = DIR|URL")
    json_flag(sp)


def add_bundle(sub: Subparsers) -> None:
    sp = add_command(sub, "bundle", cmd_bundle, "write what another organization needs to rebuild a recipe offline")
    sp.add_argument("recipe", help="the recipe (it must be built)")
    sp.add_argument("-o", "--output", required=True, help="the bundle tar to write")
    sp.add_argument("--dir", default="recipes", help="the recipe directory (default: recipes)")
    sp.add_argument("--with-env", action="store_true", help="include the Debian build-environment tarball")
    json_flag(sp)


def add_rebuild_bundle(sub: Subparsers) -> None:
    sp = add_command(sub, "rebuild-bundle", cmd_rebuild_bundle, "rebuild from a bundle offline and compare its digests")
    sp.add_argument("bundle", help="a tar made by 'mangos-farm bundle'")
    sp.add_argument("--key", action="append", help="the bundling organization's builder public key (PEM); repeatable")
    json_flag(sp)


COMMANDS = {
    "recheck": add_recheck,
    "publish": add_publish,
    "compare": add_compare,
    "bundle": add_bundle,
    "rebuild-bundle": add_rebuild_bundle,
}

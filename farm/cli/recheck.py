"""``recheck``: rebuild published builds (here, or on another worker of the fleet) in a deliberately varied
environment, compare digests, and sign the verdict as rebuild attestations (:mod:`farm.crossval.attest`).

``recheck --all`` resumes: a build whose stored result is attested under the current variation table (and varied,
or not, as asked) is not rebuilt again (``--force`` rebuilds it). Progress and an ETA, estimated from earlier
rechecks' durations, go to stderr."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from farm.cli.common import Subparsers, add_command, json_flag, print_json
from farm.cli.crossval import plan_of, worker_context
from farm.settings import Settings


def _clock(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 3600}h{whole // 60 % 60:02d}m" if whole >= 3600 else f"{whole // 60}m{whole % 60:02d}s"


class Eta:
    """Remaining time of a recheck run: each build's last recheck duration (or its recipe's), else the mean of
    those known (earlier or in this run); unknown until one is known."""

    def __init__(self, earlier: list[Any]) -> None:
        self.by_key: dict[str, float] = {r.build_key: r.seconds for r in earlier if r.seconds}
        self.by_recipe: dict[str, float] = {r.recipe: r.seconds for r in earlier if r.seconds}

    def estimate(self, record: Any) -> float | None:
        known = self.by_key.get(record.build_key) or self.by_recipe.get(record.recipe)
        if known:
            return known
        seen = list(self.by_recipe.values())
        return sum(seen) / len(seen) if seen else None

    def remaining(self, records: list[Any]) -> str:
        guesses = [self.estimate(r) for r in records]
        if any(g is None for g in guesses):
            return "ETA unknown"
        return f"ETA {_clock(sum(g or 0.0 for g in guesses))}"

    def learn(self, result: Any) -> None:
        if result.seconds:
            self.by_key[result.build_key] = self.by_recipe[result.recipe] = result.seconds


def _in_process(pairs: list[Any], variation: Any, args: argparse.Namespace, settings: Settings) -> list[Any]:
    from farm.crossval.recheck import recheck_one
    from farm.crossval.results import load_results

    ctx = worker_context(settings, variation)
    eta = Eta(load_results(settings))
    results = []
    for n, (req, record) in enumerate(pairs, start=1):
        left = [r for _, r in pairs[n - 1 :]]
        print(f"[{n}/{len(pairs)}] rechecking {record.recipe} ({eta.remaining(left)})", file=sys.stderr, flush=True)
        start = time.monotonic()
        result = recheck_one(
            req, record, ctx, settings, max_report_size=args.max_report_size, diff_timeout=args.diffoscope_timeout
        )
        eta.learn(result)
        took = time.monotonic() - start
        print(f"[{n}/{len(pairs)}] {record.recipe}: {result.outcome} in {_clock(took)}", file=sys.stderr, flush=True)
        results.append(result)
    return results


def _as_json(result: Any, skipped: bool) -> dict[str, Any]:
    from farm.crossval.attest import envelope_digest

    data: dict[str, Any] = result.to_json()
    data["attestations"] = {k: envelope_digest(v) for k, v in result.attestations.items()}
    return data | {"outcome": result.outcome, "skipped": skipped}


def cmd_recheck(args: argparse.Namespace, settings: Settings) -> int:
    from farm.build.variation import VARIATIONS_VERSION, Variation
    from farm.crossval.recheck import requests_from_plan
    from farm.crossval.results import load_result, update_metrics
    from farm.errors import E, FarmError

    if not args.recipes and not args.all:
        raise FarmError(
            E.RECHECK, "name the recipes to recheck, or pass --all", hint="mangos-farm recheck --all --vary"
        )
    variation = Variation() if args.vary else Variation.unvaried()
    pairs = requests_from_plan(plan_of(args.dir, settings), [] if args.all else args.recipes)
    earlier = {}
    if args.all and not args.force:
        for _, record in pairs:
            prior = load_result(settings, record.build_key)
            if prior is not None and prior.current(args.vary):
                earlier[record.build_key] = prior
    todo = [(req, record) for req, record in pairs if record.build_key not in earlier]
    if earlier:
        print(
            f"{len(earlier)} of {len(pairs)} already rechecked under variation table v{VARIATIONS_VERSION}: skipped "
            "(--force rechecks them again)",
            file=sys.stderr,
        )
    fleet = not settings.embedded_broker
    if not todo:
        done = []
    elif fleet:  # on the fleet's workers, each recheck on a worker other than the original builder
        done = _FleetRecheck(settings, len(todo)).run(todo, variation, args)
    else:  # the embedded farm: in this process, as a worker would
        done = _in_process(todo, variation, args, settings)
    fresh = {r.build_key: r for r in done}
    results = [(fresh.get(rec.build_key) or earlier[rec.build_key], rec.build_key in earlier) for _, rec in pairs]
    table = update_metrics(settings)
    ok = sum(r.reproducible for r, _ in results)
    failed = sum(1 for r, _ in results if r.error)
    if args.json:
        totals = {"checked": len(results), "reproducible": ok, "failed": failed, "skipped": len(earlier)}
        totals["not_reproducible"] = len(results) - ok - failed
        print_json(
            {
                "results": [_as_json(r, skipped) for r, skipped in results],
                "totals": totals,
                "reproducibility": table,
                "variation": variation.to_json() | {"table_version": VARIATIONS_VERSION},
            }
        )
    else:
        for result, skipped in results:
            _print_result(result, settings, fleet and not skipped, skipped)
        mode = "the varied" if args.vary else "the same"
        print(
            f"{ok} of {len(results) - failed} reproducible under {mode} environment"
            + (f"; {failed} failed to build in it" if failed else "")
        )
    return 0 if ok == len(results) else 1


def _print_result(result: Any, settings: Settings, fleet: bool, skipped: bool = False) -> None:
    verdict = "reproducible" if result.reproducible else "NOT reproducible"
    verdict = verdict if not result.error else "FAILED to build when varied"
    print(f"{result.recipe:<20} {verdict}" + (f" (rechecked {result.checked}, skipped)" if skipped else ""))
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


def add_recheck(sub: Subparsers) -> None:
    from farm.crossval.diffreport import DEFAULT_DIFF_TIMEOUT, DEFAULT_MAX_REPORT

    sp = add_command(
        sub,
        "recheck",
        cmd_recheck,
        "rebuild published builds in a varied environment, compare digests and sign the verdict",
    )
    sp.add_argument("recipes", nargs="*", help="recipe names (default: none; see --all)")
    sp.add_argument("--all", action="store_true", help="every recipe in the directory (skips those already rechecked)")
    sp.add_argument("--force", action="store_true", help="with --all: recheck again what was rechecked already")
    sp.add_argument("--dir", default="recipes", help="the recipe directory (default: recipes)")
    sp.add_argument(
        "--vary",
        action="store_true",
        help="vary every dimension of the variation table (README): build path, locale, time zone, umask, user, "
        "host, kernel, CPUs, file order, the clock",
    )
    sp.add_argument("--max-report-size", type=int, default=DEFAULT_MAX_REPORT, help="diffoscope report size cap")
    sp.add_argument("--diffoscope-timeout", type=float, default=DEFAULT_DIFF_TIMEOUT, help="seconds per diffoscope")
    json_flag(sp)


COMMANDS = {"recheck": add_recheck}

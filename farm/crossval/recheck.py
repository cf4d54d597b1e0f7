"""Recheck: rebuild an already published build in a deliberately varied environment and compare output digests.

The rebuild goes through the ordinary build code (``farm.build.execute.execute_build``) with a
:class:`~farm.build.variation.Variation` in the worker context; it is never published. When an output differs,
diffoscope explains how (text and HTML, bounded by ``--max-report-size`` and a timeout, both stored in the store
and next to the result), and the difference is classified by likely cause. Results live under
``$MANGOS_FARM_HOME/crossval/recheck/BUILD_KEY.json`` and feed ``status`` and the reproducibility metric.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from farm import metrics
from farm.build.execute import BuildOutcome, BuildRequest, DependencyInput, WorkerContext, execute_build
from farm.build.variation import Variation
from farm.coordinator.runs import Job
from farm.coordinator.runs import State as JobState
from farm.crossval.log import comparable
from farm.errors import E, FarmError
from farm.fsutil import atomic_write
from farm.log import step
from farm.run import require_tool, run
from farm.settings import Settings
from farm.store import BuildRecord, Store

log = logging.getLogger(__name__)

CAUSES = ("timestamps", "build-id", "paths", "file order", "locale", "other")
DEFAULT_MAX_REPORT = 2 * 1024 * 1024
DEFAULT_DIFF_TIMEOUT = 300.0

_BOX = re.compile(r"^(?:[│├└┄─╎]+ ?)*")  # diffoscope's tree prefix; what follows is a unified diff line
_TOKEN = re.compile(r"0x[0-9a-fA-F]+|\d{4}-\d\d-\d\d|\d\d:\d\d:\d\d(?:\.\d+)?|[+-]\d{4}\b|\w+")
_NAME = re.compile(r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec|Mon|Tue|Wed|Thu|Fri|Sat|Sun)[a-z]*")
_CLOCKISH = re.compile(r"\d{4}-\d\d-\d\d|\d\d:\d\d:\d\d(?:\.\d+)?|[+-]\d{4}")


def _timey(token: str) -> bool:
    """A token that reads as a date, a time, a year (decimal or hex, as compilers embed it) or an epoch."""
    if _CLOCKISH.fullmatch(token) or _NAME.fullmatch(token):
        return True
    try:
        value = int(token, 16) if token.startswith("0x") else int(token)
    except ValueError:
        return False
    return 1970 <= value <= 2100 or 10**9 <= value < 5 * 10**9


def _time_change(minus: str, plus: str) -> bool:
    """Two versions of a line that differ only in date/time tokens (and the day/month numbers beside them)."""
    a, b = _TOKEN.findall(minus), _TOKEN.findall(plus)
    if len(a) != len(b):
        return False
    changed = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
    small = re.compile(r"\d{1,2}")
    return any(_timey(x) and _timey(y) for x, y in changed) and all(
        (_timey(x) and _timey(y)) or (small.fullmatch(x) and small.fullmatch(y)) for x, y in changed
    )


def results_dir(settings: Settings) -> Path:
    return settings.home / "crossval" / "recheck"


def diffoscope_argv(a: Path, b: Path, text: Path, html: Path, max_report_size: int) -> list[str]:
    """The diffoscope command line (pure, unit-tested): text and HTML reports, both size-bounded."""
    return [
        "diffoscope",
        "--text",
        str(text),
        "--html",
        str(html),
        "--max-report-size",
        str(max_report_size),
        "--max-text-report-size",
        str(max_report_size),
        "--exclude-directory-metadata",
        "yes",  # the two temporary copies' own mtimes are not the build's difference
        str(a),
        str(b),
    ]


def _blocks(report: str) -> list[tuple[list[str], list[str]]]:
    """The changed lines of a diffoscope text report, as (removed, added) per contiguous change."""
    blocks: list[tuple[list[str], list[str]]] = []
    current: tuple[list[str], list[str]] | None = None
    for raw in report.splitlines():
        line = _BOX.sub("", raw)
        if line.startswith(("---", "+++")) or not line.startswith(("-", "+")):
            current = None
            continue
        if current is None:
            current = ([], [])
            blocks.append(current)
        current[0 if line.startswith("-") else 1].append(line[1:])
    return blocks


def _changed_lines(report: str) -> tuple[list[str], list[str]]:
    blocks = _blocks(report)
    return [m for b in blocks for m in b[0]], [p for b in blocks for p in b[1]]


def classify(report: str, variation: Variation) -> list[str]:
    """Likely causes of a difference, from diffoscope's text report (most specific first; 'other' if none)."""
    minus, plus = _changed_lines(report)
    changed = minus + plus
    causes: list[str] = []
    pairs = [pair for removed, added in _blocks(report) for pair in zip(removed, added, strict=False)]
    if any(_time_change(m, p) for m, p in pairs):
        causes.append("timestamps")
    if re.search(r"build.?id", report, re.IGNORECASE):
        causes.append("build-id")
    if any(variation.build_path in line for line in changed):  # inside the sandbox the paths are fixed
        causes.append("paths")
    if minus and sorted(minus) == sorted(plus) and minus != plus:  # the same lines (or members), reordered
        causes.append("file order")
    if any(variation.tz in line or variation.locale in line.split() or "LC_" in line for line in changed):
        causes.append("locale")
    return causes or ["other"]


@dataclass(frozen=True)
class RecheckResult:
    recipe: str
    build_key: str
    reproducible: bool
    outputs: dict[str, str]
    varied: dict[str, str]
    differing: list[str]
    causes: list[str]
    reports: dict[str, dict[str, str]]  # artifact -> {"text": digest, "html": digest, "note": ...}
    variation: dict[str, Any]
    checked: str
    error: str = ""
    log: str = ""  # the varied build's log (a blob in the store)
    ignored: list[str] = field(default_factory=list)  # differing outputs that record the environment (.buildinfo)
    worker: str = ""  # who rebuilt it: the fleet worker's name, or this host's builder id when rechecked in-process
    original: str = ""  # who made the published build: the worker named in the run that built it, else its builder

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RecheckResult:
        return cls(**data)


def requests_from_plan(plan: Any, names: Sequence[str]) -> list[tuple[BuildRequest, BuildRecord]]:
    """For each named recipe (all when empty), the request that reproduces its published build, in order."""
    wanted = list(names) or list(plan.order)
    unknown = [n for n in wanted if n not in plan.builds]
    if unknown:
        raise FarmError(
            E.RECHECK,
            f"no recipe named {', '.join(unknown)}",
            hint="name recipes from the recipe directory (or pass --all)",
        )
    missing = [n for n in wanted if plan.builds[n].record is None]
    if missing:
        raise FarmError(
            E.RECHECK,
            f"not built yet, nothing to recheck: {', '.join(missing)}",
            hint="build them first with 'mangos-farm rebuild', then recheck",
        )
    found = []
    for name in plan.order:
        if name not in wanted:
            continue
        pb = plan.builds[name]
        deps = tuple(
            DependencyInput(d, plan.builds[d].key or "", plan.builds[d].record.outputs())
            for d in pb.recipe.build_depends
        )
        req = BuildRequest(
            build_key=pb.key,
            recipe=pb.recipe.content(),
            recipe_path=str(pb.recipe.path),
            fetch_url=pb.recipe.git_location,
            tree=pb.source.tree,
            environment=pb.environment,
            dependencies=deps,
        )
        found.append((req, pb.record))
    return found


def _diff(
    store: Store, name: str, digests: tuple[str, str], dest: Path, *, max_report_size: int, timeout: float
) -> tuple[str, dict[str, str]]:
    """Run diffoscope on the two versions of an artifact; return its text report and the stored report digests."""
    require_tool("diffoscope", "diffoscope-minimal")
    with tempfile.TemporaryDirectory(prefix="recheck-") as tmp:
        left, right = Path(tmp) / "published" / name, Path(tmp) / "varied" / name
        store.fetch_blob(digests[0], left)
        store.fetch_blob(digests[1], right)
        text, html = dest / f"{name}.diffoscope.txt", dest / f"{name}.diffoscope.html"
        dest.mkdir(parents=True, exist_ok=True)
        result = run(diffoscope_argv(left, right, text, html, max_report_size), check=False, timeout=timeout)
    note = ""
    if result.timed_out:
        note = f"diffoscope stopped after {timeout:g}s; the report is incomplete"
    elif result.returncode not in (0, 1):
        note = f"diffoscope exited {result.returncode}: {result.stderr.decode(errors='replace')[-500:]}"
    if text.exists() and text.stat().st_size > max_report_size:  # diffoscope's cap is checked between blocks only
        with text.open("r+b") as fh:
            fh.truncate(max_report_size)
            fh.seek(0, 2)
            fh.write(f"\n[report truncated at {max_report_size} bytes by mangos-farm]\n".encode())
    report = text.read_text(errors="replace") if text.exists() else ""
    stored = {"note": note}
    for kind, path in (("text", text), ("html", html)):
        if path.exists():
            stored[kind] = store.put_file(path).digest
    return report, stored


def recheck_one(
    req: BuildRequest,
    record: BuildRecord,
    ctx: WorkerContext,
    settings: Settings,
    *,
    max_report_size: int = DEFAULT_MAX_REPORT,
    diff_timeout: float = DEFAULT_DIFF_TIMEOUT,
    save: bool = True,
    worker: str = "",
    original: str = "",
) -> RecheckResult:
    """Rebuild ``req`` in ``ctx``'s variation and compare with ``record``. ``save`` is False on a fleet worker: its
    home is not the one the CLI reads, so the result travels back in the task's result and the CLI saves it."""
    variation = ctx.variation or Variation()
    with step("recheck", log, recipe=record.recipe, key=record.build_key[:16]):
        outcome: BuildOutcome = execute_build(req, ctx)
    checked = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    base: dict[str, Any] = {
        "log": outcome.log_digest or "",
        "recipe": record.recipe,
        "build_key": record.build_key,
        "outputs": record.outputs(),
        "variation": variation.to_json(),
        "checked": checked,
        "worker": worker or ctx.builder_id,
        "original": original or record.builder,
    }
    if not outcome.ok or outcome.record is None:
        why = (outcome.error or {}).get("message", "the build failed")
        result = RecheckResult(
            **base, reproducible=False, varied={}, differing=[], causes=[], reports={}, error=str(why)
        )
        if save:
            _save(settings, result)
        return result
    varied = BuildRecord.from_json(outcome.record).outputs()
    changed = sorted(n for n in set(varied) | set(record.outputs()) if varied.get(n) != record.outputs().get(n))
    must_match = comparable({n: "" for n in changed})
    differing = [n for n in changed if n in must_match]
    ignored = [n for n in changed if n not in must_match]  # .buildinfo: records the environment by design
    causes: list[str] = []
    reports: dict[str, dict[str, str]] = {}
    dest = results_dir(settings) / record.build_key
    for name in differing:
        if name not in varied or name not in record.outputs():
            causes.append("other")
            continue
        pair = (record.outputs()[name], varied[name])
        text, stored = _diff(ctx.store, name, pair, dest, max_report_size=max_report_size, timeout=diff_timeout)
        reports[name] = stored
        causes += [c for c in classify(text, variation) if c not in causes]
    result = RecheckResult(
        **base,
        reproducible=not differing,
        varied=varied,
        differing=differing,
        causes=sorted(set(causes), key=CAUSES.index),
        reports=reports,
        ignored=ignored,
    )
    if save:
        _save(settings, result)
    return result


def _save(settings: Settings, result: RecheckResult) -> None:
    atomic_write(results_dir(settings) / f"{result.build_key}.json", json.dumps(result.to_json(), indent=1).encode())
    update_metrics(settings)


def save_result(settings: Settings, store: Store, result: RecheckResult) -> Path:
    """Save a result that a fleet worker computed, with its diffoscope reports copied from the store next to it
    (where the in-process recheck writes them), so the CLI, ``status`` and the metric read it like a local one."""
    dest = results_dir(settings) / result.build_key
    for name, stored in result.reports.items():
        for kind, suffix in (("text", "txt"), ("html", "html")):
            if stored.get(kind):
                store.fetch_blob(stored[kind], dest / f"{name}.diffoscope.{suffix}")
    _save(settings, result)
    return dest


def load_results(settings: Settings) -> list[RecheckResult]:
    folder = results_dir(settings)
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*.json")):
        try:
            found.append(RecheckResult.from_json(json.loads(path.read_text())))
        except (ValueError, TypeError) as exc:
            log.warning("ignoring unreadable recheck result %s: %s", path, exc)
    return found


def rates(results: Iterable[RecheckResult]) -> dict[str, dict[str, Any]]:
    """Reproducibility per recipe and overall ('all'): compared builds, reproducible ones, their ratio.

    A varied build that failed to build at all (a test suite that trips over the shifted clock, say) compared
    nothing: it is counted as failed, outside the ratio (None when nothing was compared)."""
    table: dict[str, list[int]] = {}
    for r in results:
        for name in (r.recipe, "all"):
            row = table.setdefault(name, [0, 0, 0])
            row[0 if not r.error else 2] += 1
            row[1] += int(r.reproducible)
    return {
        n: {"checked": c, "reproducible": ok, "failed": failed, "rate": ok / c if c else None}
        for n, (c, ok, failed) in sorted(table.items())
    }


def update_metrics(settings: Settings) -> dict[str, dict[str, Any]]:
    """Set the reproducibility gauge (per recipe, and 'all') from the stored results."""
    table = rates(load_results(settings))
    for name, row in table.items():
        if row["rate"] is not None:
            metrics.reproducibility.labels(name).set(row["rate"])
    return table


def clean_workdirs(ctx: WorkerContext) -> None:
    if ctx.variation is not None:
        shutil.rmtree(ctx.work_root / ctx.variation.build_path.split("/")[0], ignore_errors=True)


def watch_metrics(settings: Settings, interval: float = 30.0) -> threading.Thread:
    """Keep the reproducibility gauge of a long-running process (the coordinator) current with new rechecks."""

    def loop() -> None:
        while True:
            try:
                update_metrics(settings)
            except OSError as exc:  # an unreadable results directory must not stop the coordinator
                log.warning("cannot read recheck results: %s", exc)
            time.sleep(interval)

    thread = threading.Thread(target=loop, name="reproducibility-metrics", daemon=True)
    thread.start()
    return thread


# -- rechecks on the fleet -------------------------------------------------------------------------------------
RECHECK_TASK = "mangos.recheck"


def recheck_queue(worker: str) -> str:
    """The queue only ``worker`` consumes (workers.tasks adds it at start): a recheck is sent to a chosen worker."""
    return f"mangos.recheck.{worker}"


def variation_from_json(data: Mapping[str, Any]) -> Variation:
    """The inverse of :meth:`Variation.to_json` (the umask travels as an octal string)."""
    values = dict(data)
    umask = values.get("umask", "0022")
    values["umask"] = int(umask, 8) if isinstance(umask, str) else int(umask)
    return Variation(**values)


def recheck_payload(
    req: BuildRequest,
    record: BuildRecord,
    variation: Variation,
    *,
    original: str,
    max_report_size: int = DEFAULT_MAX_REPORT,
    diff_timeout: float = DEFAULT_DIFF_TIMEOUT,
) -> dict[str, Any]:
    """What a recheck task carries (all of it covered by the coordinator's signature, farm.trust.tasksig)."""
    return {
        "request": req.to_json(),
        "record": record.to_json(),
        "variation": variation.to_json(),
        "original": original,
        "max_report_size": max_report_size,
        "diff_timeout": diff_timeout,
    }


def recheck_from_payload(
    payload: Mapping[str, Any], ctx: WorkerContext, settings: Settings, worker: str
) -> RecheckResult:
    """A fleet worker's side of a recheck: the payload's build, varied, compared; not saved (the CLI saves it)."""
    variation = variation_from_json(payload["variation"])
    varied_ctx = replace(ctx, variation=variation)
    try:
        return recheck_one(
            BuildRequest.from_json(payload["request"]),
            BuildRecord.from_json(payload["record"]),
            varied_ctx,
            settings,
            max_report_size=int(payload["max_report_size"]),
            diff_timeout=float(payload["diff_timeout"]),
            save=False,
            worker=worker,
            original=str(payload["original"]),
        )
    finally:
        clean_workdirs(varied_ctx)


def original_workers(jobs: Iterable[Job]) -> dict[str, str]:
    """Build key -> the worker that built it, from the coordinator's runs (the latest build wins). A cached job
    names no worker; a key built by no run here (another farm's, or an embedded build) is absent."""
    found: dict[str, tuple[float, str]] = {}
    for job in jobs:
        if job.state is not JobState.BUILT or not job.key or not job.worker:
            continue
        when = job.finished_at or 0.0
        if job.key not in found or when >= found[job.key][0]:
            found[job.key] = (when, job.worker)
    return {key: worker for key, (_, worker) in found.items()}


def choose_worker(original: str, live: Sequence[str], assigned: Mapping[str, int]) -> str | None:
    """The worker to recheck on: a live one other than the original builder, the least loaded by this recheck
    (then by name, for a stable choice). None when no other worker is alive: then any worker will do."""
    others = sorted((w for w in live if w != original), key=lambda w: (assigned.get(w, 0), w))
    return others[0] if others else None

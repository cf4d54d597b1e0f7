"""Recheck: rebuild an already published build in a deliberately varied environment and compare output digests.

The rebuild goes through the ordinary build code (``farm.build.execute.execute_build``) with a
:class:`~farm.build.variation.Variation` in the worker context; it is never published. When an output differs,
diffoscope explains how (text and HTML, bounded by ``--max-report-size`` and a timeout, both stored in the store
and next to the result), and the difference is classified by likely cause (:mod:`farm.crossval.diffreport`).
Every result carries its rebuild and equivalence attestations, signed by the rechecking builder's key
(:mod:`farm.crossval.attest`).
Results live under ``$MANGOS_FARM_HOME/crossval/recheck/BUILD_KEY.json`` (:mod:`farm.crossval.results`) and feed
``status`` and the reproducibility metric. On a fleet, :mod:`farm.crossval.dispatch` sends the recheck to a worker
and :func:`recheck_from_payload` is that worker's side.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from farm.build import BuildOutcome, BuildRequest, DependencyInput
from farm.build.context import WorkerContext
from farm.build.execute import execute_build
from farm.build.variation import VARIATIONS_VERSION, Variation
from farm.crossval import attest
from farm.crossval.diffreport import CAUSES, DEFAULT_DIFF_TIMEOUT, DEFAULT_MAX_REPORT, classify, diff
from farm.crossval.dispatch import variation_from_json
from farm.crossval.log import comparable
from farm.crossval.results import RecheckResult, results_dir, write_result
from farm.errors import E, FarmError
from farm.log import step
from farm.settings import Settings
from farm.store import BuildRecord

log = logging.getLogger(__name__)


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
    started = time.monotonic()
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
        "variation_version": VARIATIONS_VERSION,
        "vary": _differs_from_normal(variation),
    }
    if not outcome.ok or outcome.record is None:
        why = (outcome.error or {}).get("message", "the build failed")
        result = _attested(
            RecheckResult(**base, reproducible=False, varied={}, differing=[], causes=[], reports={}, error=str(why)),
            record,
            ctx,
            started,
        )
        if save:
            write_result(settings, result)
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
        text, stored = diff(ctx.store, name, pair, dest, max_report_size=max_report_size, timeout=diff_timeout)
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
    result = _attested(result, record, ctx, started)
    if save:
        write_result(settings, result)
    return result


def _differs_from_normal(variation: Variation) -> bool:
    """Whether the build saw anything but the normal environment (the host work directory is never seen)."""
    seen, normal = variation.to_json(), Variation.unvaried().to_json()
    return any(seen[k] != normal[k] for k in seen if k != "build_path")


def _attested(result: RecheckResult, record: BuildRecord, ctx: WorkerContext, started: float) -> RecheckResult:
    """The result with its rebuild and equivalence envelopes, signed by this builder's key."""
    rebuild = attest.Rebuild(
        build_key=record.build_key,
        provenance=record.provenance,
        original_builder=result.original,
        outputs=record.outputs(),
        rebuilt=result.varied,
        variation=result.variation,
        variation_version=result.variation_version,
        varied=result.vary,
        verdict=result.outcome,
        differing=result.differing,
        causes=result.causes,
        log=result.log,
        builder_id=result.worker,
    )
    original = attest.original_statement(ctx.store.get_bytes(record.provenance))
    envelopes = attest.sign_rebuild(rebuild, original, ctx.builder_key)
    return replace(result, attestations=envelopes, seconds=round(time.monotonic() - started, 3))


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


def clean_workdirs(ctx: WorkerContext) -> None:
    if ctx.variation is not None:
        shutil.rmtree(ctx.work_root / ctx.variation.build_path.split("/")[0], ignore_errors=True)

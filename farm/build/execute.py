"""Executing one build on a worker: source at the pinned commit with the recipe's patches, sandboxed steps,
packed outputs, signed provenance, then publication to the store (blobs first, record last, put-if-absent).

This is plain code with no Celery in it; ``workers.tasks`` only deserialises a request and calls
:func:`execute_build`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from farm import metrics
from farm.build import (
    BuildFailure,
    BuildOutcome,
    BuildRequest,
    attest,
    buildd,
    failure,
    outputs,
    sandbox,
    script_env,
    staging,
    trees,
    workdirs,
)
from farm.build import debian as debian_build
from farm.build.context import WorkerContext
from farm.build.variation import source_view
from farm.errors import E, FarmError, StoreError
from farm.log import step
from farm.recipes import Recipe, patches
from farm.run import require_tool, tail
from farm.sources import upstream
from farm.store import BuildRecord
from farm.trust import audit

log = logging.getLogger(__name__)

LOG_TAIL = 3000


@contextmanager
def _timed(phase: str, arch: str) -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    finally:
        metrics.build_phase_seconds.labels(phase, arch).observe(time.monotonic() - start)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(exc: FarmError, logpath: Path) -> dict[str, Any]:
    """The failure's error with its classified cause (:mod:`farm.build.failure`) and that cause's hint, both also
    written to the end of the log."""
    with logpath.open("rb") as fh:
        fh.seek(max(0, os.fstat(fh.fileno()).st_size - failure.WINDOW))
        cause = failure.classify(exc.code, exc.message, fh.read())
    hint = failure.hint(cause, exc.hint)
    with logpath.open("ab") as fh:
        fh.write(f"!!! cause: {cause.kind}: {cause.evidence}\n!!! hint: {hint}\n".encode())
    return exc.to_json() | {"hint": hint, "cause": cause.to_json()}


def _log_tail(logfh: IO[bytes]) -> bytes:
    """The last bytes of the build log written so far (to recognise a limit's message)."""
    try:
        logfh.flush()
        with open(logfh.name, "rb") as fh:
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - 4096))
            return fh.read()
    except (OSError, AttributeError, TypeError):
        return b""


def _limit_hit(ctx: WorkerContext, recipe: Recipe, limit: str, detail: str) -> BuildFailure:
    audit.record(ctx.audit_log, audit.SANDBOX_LIMIT, who=ctx.builder_id, what=recipe.name, limit=limit, detail=detail)
    return BuildFailure(
        E.SANDBOX_LIMIT,
        f"the build exceeded its {limit} limit: {detail}",
        file=recipe.path,
        field="build.steps",
        hint="fix the build; if it is legitimate, raise the MANGOS_FARM_BUILD_* limit on the workers",
    )


def _tree_size(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def _run_steps(
    recipe: Recipe, spec: sandbox.SandboxSpec, logfh: IO[bytes], deadline: float, ctx: WorkerContext
) -> None:
    limits = spec.limits
    with sandbox.LimitedRunner(limits) as runner:  # the build's cgroup, made once for all its steps
        for i, script in enumerate(recipe.steps, 1):
            _run_step(runner, i, script, recipe=recipe, spec=spec, logfh=logfh, deadline=deadline, ctx=ctx)


def _run_step(
    runner: sandbox.LimitedRunner,
    i: int,
    script: str,
    *,
    recipe: Recipe,
    spec: sandbox.SandboxSpec,
    logfh: IO[bytes],
    deadline: float,
    ctx: WorkerContext,
) -> None:
    limits = spec.limits
    logfh.write(f"==> step {i}/{len(recipe.steps)}: {script}\n".encode())
    logfh.flush()
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise BuildFailure(
            E.BUILD_FAILED,
            f"build timed out before step {i}",
            file=recipe.path,
            hint="raise MANGOS_FARM_BUILD_TIMEOUT or speed up the build",
        )
    # bwrap's own processes (pid 1 of the sandbox among them) keep the environment they were started with,
    # and the build can read their /proc/N/environ: start them with nothing of the worker's. Whatever outlives
    # the step (it cannot: bwrap owns a pid namespace) is killed by the runner, through the build's cgroup.
    result, hit = runner.run(
        sandbox.bwrap_argv(spec, _step_command(script, ctx)),
        logfh=logfh,
        timeout=remaining,
        env=sandbox.launcher_env(),
        umask=ctx.variation.umask if ctx.variation else -1,
    )
    if result.timed_out:
        audit.record(ctx.audit_log, audit.SANDBOX_LIMIT, who=ctx.builder_id, what=recipe.name, limit="time")
        raise BuildFailure(
            E.SANDBOX_LIMIT,
            f"step {i} timed out after {ctx.timeout:g}s and was killed with all its processes: {script}",
            file=recipe.path,
            field="build.steps",
            hint="raise MANGOS_FARM_BUILD_TIMEOUT or speed up the build",
        )
    if "processes" in hit:
        raise _limit_hit(ctx, recipe, "process", f"step {i} tried to run more than {limits.processes} tasks")
    if "memory" in hit and result.returncode != 0:
        raise _limit_hit(ctx, recipe, "memory", f"step {i} used more than {limits.memory // sandbox.MIB} MiB")
    if result.returncode in (128 + signal.SIGXFSZ, -signal.SIGXFSZ) or b"File too large" in _log_tail(logfh):
        raise _limit_hit(ctx, recipe, "disk", f"step {i} wrote a file over {limits.scratch // sandbox.MIB} MiB")
    used = _tree_size(spec.src.parent)
    if used > limits.scratch:
        raise _limit_hit(ctx, recipe, "disk", f"the build directory holds {used // sandbox.MIB} MiB after step {i}")
    if result.returncode != 0:
        raise BuildFailure(
            E.BUILD_FAILED,
            f"step {i} failed with exit {result.returncode}: {script}",
            file=recipe.path,
            field="build.steps",
            hint="read the log tail below; reproduce with 'mangos-farm rebuild --force'",
        )


def _apply_patches(recipe: Recipe, ctx: WorkerContext, src: Path, mtime: int, logfh: IO[bytes]) -> None:
    """The recipe's patches on top of the exported source, every mtime then back at the source's time. A patch is
    read next to the recipe or, on a worker without the recipe's files, from the store by its sha256 (planning puts
    it there); either way it ends up in the store, so the patch a provenance names by digest can be fetched."""
    found = []
    for patch in recipe.patches:
        data = patches.read_local(patch, recipe.path)
        stored = ctx.store.has_blob(patch.sha256)
        if data is None and stored:
            data = ctx.store.get_bytes(patch.sha256)
        if data is None:
            raise BuildFailure(
                E.RECIPE_PATCH,
                f"patch {patch.file} (sha256 {patch.sha256}) is neither beside the recipe nor in the store",
                file=recipe.path,
                field="patches",
                hint="run workers where the recipes and their patches are, or build once where they are",
            )
        if not stored:
            ctx.store.put_bytes(data)
        logfh.write(f"==> patch {patch.file} sha256 {patch.sha256}\n".encode())
        found.append((patch, data))
    patches.apply(found, src, mtime=mtime, recipe_path=recipe.path)


def _step_command(script: str, ctx: WorkerContext) -> list[str]:
    command = sandbox.step_command(script)
    return ctx.variation.wrap(command) if ctx.variation else command


def execute_build(req: BuildRequest, ctx: WorkerContext) -> BuildOutcome:
    """Run one build end to end. Never raises for a build problem: failures come back as an outcome."""
    recipe = Recipe.from_content(req.recipe, Path(req.recipe_path))
    started_clock = time.monotonic()
    started = _now()
    work_root = ctx.work_root / ctx.variation.build_path if ctx.variation else ctx.work_root
    work_root.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(dir=work_root, prefix=f"{recipe.name}-"))
    logpath = workdir / "build.log"
    try:
        with logpath.open("wb") as logfh, step("build", log, recipe=recipe.name, key=req.build_key[:16]):
            logfh.write(
                f"mangos-farm build {recipe.name} {recipe.version}\nkey {req.build_key}\n"
                f"source {recipe.source.git} @ {recipe.source.commit}\nbuilder {ctx.builder_id}\n".encode()
            )
            try:
                record = _build(
                    req,
                    recipe=recipe,
                    ctx=ctx,
                    workdir=workdir,
                    logfh=logfh,
                    started=started,
                    started_clock=started_clock,
                )
            except FarmError as exc:
                if exc.code in StoreError.ids:  # by id: a BuildFailure may carry a store error's id
                    metrics.store_errors.labels("build").inc()
                logfh.write(f"\n!!! {exc.render()}\n".encode())
                logfh.flush()
                return BuildOutcome(
                    build_key=req.build_key,
                    lease=req.lease,
                    recipe=recipe.name,
                    ok=False,
                    error=_error(exc, logpath),
                    log_digest=ctx.store.put_file(logpath).digest,
                    log_tail=tail(logpath.read_bytes(), LOG_TAIL),
                    worker=ctx.builder_id,
                    duration=time.monotonic() - started_clock,
                )
        published = ctx.variation is None and ctx.store.put_record(record)  # a recheck never publishes
        if not published and ctx.variation is None:
            existing = ctx.store.get_record(req.build_key)
            assert existing is not None
            if existing.outputs() != record.outputs():
                log.warning(
                    "build %s of %s differs from the published one (not reproducible); the published record stays",
                    req.build_key[:16],
                    recipe.name,
                )
            record = existing
        return BuildOutcome(
            build_key=req.build_key,
            lease=req.lease,
            recipe=recipe.name,
            ok=True,
            record=record.to_json(),
            published=published,
            log_digest=record.log,
            worker=ctx.builder_id,
            duration=time.monotonic() - started_clock,
        )
    finally:
        if not ctx.keep_workdir:
            workdirs.discard(workdir, ctx.work_root)  # gone from the work root now, its files deleted in the background


def _debian_provenance(recipe: Recipe, ctx: WorkerContext, src: Path) -> dict[str, Any]:
    """What a Debian build's provenance adds: where its source comes from upstream, and what it ran with."""
    v = ctx.variation
    return {
        "upstream": upstream.of_source(recipe.source.dsc, recipe.version, src, ctx.sources.root.parent),
        "parameters": buildd.provenance_parameters(
            options=recipe.options,
            profiles=recipe.profiles,
            jobs=v.jobs if v else ctx.jobs,
            memory=ctx.limits.memory,
            timeout=ctx.timeout,
        ),
    }


def _build(
    req: BuildRequest,
    *,
    recipe: Recipe,
    ctx: WorkerContext,
    workdir: Path,
    logfh: IO[bytes],
    started: str,
    started_clock: float,
) -> BuildRecord:
    debian = recipe.kind == "debian"
    if not debian:
        require_tool("bwrap")
    if not debian and not recipe.environment and ctx.environment.digest != req.environment:
        raise BuildFailure(
            E.WORKER,
            f"this worker's build environment {ctx.environment.digest[:16]} is not the planned {req.environment[:16]}",
            hint="run workers on machines with the same packages as the coordinator, or re-plan",
        )
    src, out, home, deps, arts = (workdir / d for d in ("src", "out", "home", "deps", "artifacts"))
    for d in (out, home, deps, arts):
        d.mkdir()
    with step("source", log, commit=recipe.source.commit[:12]), _timed("source", ctx.arch):
        resolved = trees.checkout(ctx.sources, ctx.trees, req, recipe.source, src)
    if recipe.patches:
        with step("patches", log, count=len(recipe.patches)), _timed("source", ctx.arch):
            _apply_patches(recipe, ctx, src, resolved.commit_time, logfh)
    with step("dependencies", log, count=len(req.dependencies)), _timed("dependencies", ctx.arch):
        staging.stage_dependencies(req, ctx, deps)
    deadline = started_clock + ctx.timeout
    if debian:
        with step("environment", log, digest=req.environment[:12]), _timed("environment", ctx.arch):
            lower = debian_build.env_root(ctx.store, req.environment, ctx.sources.root.parent)
            repo = workdir / "repo"
            count = debian_build.stage_repo(repo, recipe, ctx.store, debian_build.dependency_debs(deps))
            logfh.write(f"==> local repository: {count} pinned and dependency packages\n".encode())
        # The file-order view of a Debian build is mounted in the build's own namespace (farm.build.debian).
        with step("dpkg-buildpackage", log), _timed("build", ctx.arch):
            debian_build.run_debian_build(
                recipe,
                env_lower=lower,
                workdir=workdir,
                src=src,
                repo=repo,
                out=out,
                epoch=resolved.commit_time,
                jobs=ctx.jobs,
                logfh=logfh,
                timeout=max(1.0, deadline - time.monotonic()),
                variation=ctx.variation,
                limits=ctx.limits,
            )
    else:
        v = ctx.variation
        env = sandbox.base_env(resolved.commit_time, v.jobs if v else ctx.jobs) | dict(recipe.env)
        env |= v.env() if v else {}
        spec = sandbox.SandboxSpec(src=src, out=out, home=home, deps=deps, env=env, limits=ctx.limits)
        spec = script_env.prepare(  # a pinned environment's /usr instead of the host's; the recipe's inputs
            spec,
            recipe,
            environment=req.environment,
            store=ctx.store,
            cache=ctx.sources.root.parent,
            workdir=workdir,
            logfh=logfh,
        )
        with step("sandbox", log, steps=len(recipe.steps)), _timed("build", ctx.arch), source_view(src, v) as view:
            if v is not None:
                spec = v.sandbox(replace(spec, src=view))
            _run_steps(recipe, spec, logfh, deadline, ctx)
    with step("pack", log), _timed("upload", ctx.arch), attest.Uploads(ctx.store) as uploads:
        files = outputs.collect_outputs(recipe, out, arts, resolved.commit_time)
        size = sum(f.size for f in files)
        if size > ctx.limits.output:
            raise _limit_hit(ctx, recipe, "output size", f"the outputs total {size // sandbox.MIB} MiB")
        artifacts = uploads.files(files)
        metrics.store_bytes.labels("up").inc(sum(a.size for a in artifacts))
        finished = _now()
        envelope = attest.provenance_envelope(
            req,
            recipe=recipe,
            resolved=resolved,
            artifacts=artifacts,
            key=ctx.builder_key,
            builder_id=ctx.builder_id,
            started=started,
            finished=finished,
            **(_debian_provenance(recipe, ctx, src) if debian else {}),
        )
        logfh.write(f"==> outputs: {', '.join(f'{a.name} {a.digest}' for a in artifacts)}\n".encode())
        logfh.flush()
        envelope_digest, log_digest = uploads.bytes_and_file(envelope, workdir / "build.log")
    return attest.build_record(
        req,
        recipe=recipe,
        resolved=resolved,
        artifacts=artifacts,
        provenance_digest=envelope_digest,
        log_digest=log_digest,
        builder_id=ctx.builder_id,
        started=started,
        finished=finished,
    )

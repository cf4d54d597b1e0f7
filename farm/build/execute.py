"""Executing one build on a worker: source at the pinned commit, sandboxed steps, packed outputs, signed
provenance, then publication to the store (blobs first, record last, put-if-absent).

This is plain code with no Celery in it; ``workers.tasks`` only deserialises a request and calls
:func:`execute_build`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from farm import metrics
from farm.build import debian as debian_build
from farm.build import sandbox
from farm.envs.host import Environment
from farm.errors import E, FarmError
from farm.identity import build_key_inputs
from farm.log import step
from farm.pack import check_tree_entry, pack_dir, safe_extract
from farm.recipes import Recipe
from farm.run import require_tool, run, tail
from farm.sources.git import SourceCache
from farm.store import BuildRecord, Store
from farm.trust import audit, keyring, provenance
from farm.trust.keys import BuilderKey, PublicKey

if TYPE_CHECKING:
    from farm.build.variation import Variation
    from farm.settings import Settings

log = logging.getLogger(__name__)

LOG_TAIL = 3000


@dataclass(frozen=True)
class DependencyInput:
    recipe: str
    build_key: str
    artifacts: Mapping[str, str]  # artifact name -> sha256


@dataclass(frozen=True)
class BuildRequest:
    """Everything a worker needs, decided by the coordinator; JSON-serialisable for the task message."""

    build_key: str
    recipe: Mapping[str, Any]
    recipe_path: str
    fetch_url: str
    tree: str
    environment: str
    dependencies: Sequence[DependencyInput] = ()
    lease: str = ""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["dependencies"] = [asdict(d) for d in self.dependencies]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BuildRequest:
        data = dict(data)
        data["dependencies"] = tuple(DependencyInput(**d) for d in data.get("dependencies", ()))
        return cls(**data)

    def dependency_outputs(self) -> dict[str, dict[str, str]]:
        return {d.recipe: dict(d.artifacts) for d in self.dependencies}


@dataclass(frozen=True)
class BuildOutcome:
    build_key: str
    recipe: str
    ok: bool
    record: dict[str, Any] | None = None
    published: bool = False
    error: dict[str, Any] | None = None
    log_digest: str | None = None
    log_tail: str = ""
    worker: str = ""
    duration: float = 0.0
    lease: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BuildOutcome:
        return cls(**data)


@dataclass
class WorkerContext:
    store: Store
    builder_key: BuilderKey
    sources: SourceCache
    work_root: Path
    builder_id: str
    environment: Environment
    timeout: float = 3600.0
    jobs: int = 1
    arch: str = ""
    keep_workdir: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    # The builder keyring dependencies are checked against (None: this worker's own key only) and where security
    # events go (None: counted and logged only).
    trusted: Sequence[PublicKey] | None = None
    audit_log: Path | None = None
    limits: sandbox.Limits = field(default_factory=sandbox.Limits)
    # A recheck (farm.crossval.recheck): build in a deliberately varied environment and do not publish the record.
    variation: Variation | None = None

    def keyring(self) -> Sequence[PublicKey]:
        return self.trusted if self.trusted is not None else [self.builder_key.public]

    @classmethod
    def from_settings(
        cls, s: Settings, *, variation: Variation | None = None, extra_keys: Sequence[Path] = ()
    ) -> WorkerContext:
        """The context a worker builds with, from its settings: one definition for Celery workers and for builds
        the CLI runs itself (recheck), so both get the same keyring, audit log and limits."""
        from farm.envs.host import host_environment
        from farm.store import open_store
        from farm.trust.keys import load_builder, trusted_keys

        return cls(
            store=open_store(s.store_url),
            builder_key=load_builder(s.keys_dir),
            sources=SourceCache(Path(s.cache_dir) / "git"),
            work_root=Path(s.work_dir),
            builder_id=s.builder,
            environment=host_environment(),
            timeout=float(s.build_timeout),
            arch=s.build_arch,
            trusted=trusted_keys(s.keys_dir, s.trusted_keys_dir, list(extra_keys)),
            audit_log=audit.audit_path(s.home),
            limits=sandbox.Limits(
                memory=s.build_memory_mb * sandbox.MIB,
                processes=s.build_processes,
                scratch=s.build_scratch_mb * sandbox.MIB,
                output=s.build_output_mb * sandbox.MIB,
            ),
            variation=variation,
        )


@contextmanager
def _timed(phase: str, arch: str) -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    finally:
        metrics.build_phase_seconds.labels(phase, arch).observe(time.monotonic() - start)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class BuildFailure(FarmError):
    pass


def _stage_dependencies(req: BuildRequest, ctx: WorkerContext, deps_dir: Path) -> None:
    """Fetch each dependency's artifacts, but only after checking them against the dependency's signed provenance
    and the keyring: the digests the coordinator passed come from the store's index, which could be poisoned."""
    store = ctx.store
    for dep in req.dependencies:
        try:
            keyring.check_published(store, dep.build_key, ctx.keyring(), dep.artifacts)
        except FarmError as exc:
            event = audit.REVOKED_KEY_USED if exc.code == E.KEY_REVOKED else audit.REFUSED_ARTIFACT
            audit.record(
                ctx.audit_log,
                event,
                who=ctx.builder_id,
                what=f"dependency {dep.recipe} ({dep.build_key}) of {req.recipe.get('name')}",
                error=exc.code,
                message=exc.message,
            )
            metrics.signature_failures.inc()
            raise BuildFailure(
                exc.code,
                f"dependency '{dep.recipe}' refused before use: {exc.message}",
                hint=exc.hint,
            ) from None
        target = deps_dir / dep.recipe
        target.mkdir(parents=True, exist_ok=True)
        for name, digest in sorted(dep.artifacts.items()):
            blob = target / name
            try:
                store.fetch_blob(digest, blob)  # verifies the sha256 on the way out
            except FarmError as exc:
                if exc.code == E.STORE_CORRUPT:  # the bytes under a signed digest were swapped: an attack or rot
                    audit.record(
                        ctx.audit_log,
                        audit.REFUSED_ARTIFACT,
                        who=ctx.builder_id,
                        what=f"dependency {dep.recipe}/{name} ({digest})",
                        error=exc.code,
                        message=exc.message,
                    )
                raise
            metrics.store_bytes.labels("down").inc(blob.stat().st_size)
            if name.endswith(".tar"):
                with tarfile.open(blob) as tar:
                    safe_extract(tar, target / name[: -len(".tar")], "dependency file")
                blob.unlink()
            else:
                blob.chmod(0o555)  # the mount is read-only anyway; a dependency's tool must be runnable


def _log_tail(logfh: IO[bytes]) -> bytes:
    """The last bytes of the build log written so far (to recognise a limit's message)."""
    try:
        logfh.flush()
        with open(logfh.name, "rb") as fh:
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - 4096))
            return fh.read()
    except (OSError, AttributeError, TypeError):
        return b""


def _expand_outputs(recipe: Recipe, out: Path) -> list[str]:
    """Declared outputs, with glob patterns (``*.deb``) expanded against what the build produced."""
    found: list[str] = []
    for rel in recipe.outputs:
        if not any(c in rel for c in "*?["):
            found.append(rel)
            continue
        matches = sorted(p.relative_to(out).as_posix() for p in out.glob(rel))
        if not matches:
            raise BuildFailure(
                E.BUILD_OUTPUT,
                f"declared output pattern '{rel}' matched nothing",
                file=recipe.path,
                field="outputs",
                hint="make the build write such files under $OUT, or fix the pattern",
            )
        found.extend(matches)
    return found


def _collect_outputs(recipe: Recipe, out: Path, dest: Path, mtime: int) -> list[Path]:
    files = []
    for rel in _expand_outputs(recipe, out):
        path = out / rel
        if not path.exists() and not path.is_symlink():
            raise BuildFailure(
                E.BUILD_OUTPUT,
                f"declared output '{rel}' was not produced",
                file=recipe.path,
                field="outputs",
                hint="make the build write it under $OUT, or fix the path in outputs",
            )
        real = path.resolve()
        if out.resolve() not in real.parents and real != out.resolve():
            raise BuildFailure(
                E.BUILD_OUTPUT,
                f"declared output '{rel}' resolves outside the output directory",
                file=recipe.path,
                field="outputs",
                hint="outputs must be real files or directories under $OUT",
            )
        if path.is_dir() and not path.is_symlink():
            target = dest / f"{path.name}.tar"
            pack_dir(path, target, mtime)
        else:
            check_tree_entry(out, path, rel)
            if path.is_symlink():
                raise BuildFailure(
                    E.BUILD_OUTPUT,
                    f"declared output '{rel}' is a symlink",
                    file=recipe.path,
                    field="outputs",
                    hint="declare the file it points to instead",
                )
            target = dest / path.name
            shutil.copyfile(path, target)
            shutil.copymode(path, target)
        files.append(target)
    return files


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
    for i, script in enumerate(recipe.steps, 1):
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
        cgroup = sandbox.Cgroup.create(limits)
        try:
            result = run(
                sandbox.limited_argv(limits, cgroup, sandbox.bwrap_argv(spec, _step_command(script, ctx))),
                stdout=logfh,
                stderr_to_stdout=True,
                check=False,
                timeout=remaining,
                # bwrap's own processes (pid 1 of the sandbox among them) keep the environment they were started
                # with, and the build can read their /proc/N/environ: start them with nothing of the worker's.
                env=sandbox.launcher_env(),
                umask=ctx.variation.umask if ctx.variation else -1,
            )
            hit = cgroup.hit() if cgroup is not None else []
        finally:
            if cgroup is not None:
                cgroup.destroy()  # whatever outlived the step (it cannot: bwrap owns a pid namespace) dies here
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


def _source_view(src: Path, ctx: WorkerContext) -> contextlib.AbstractContextManager[Path]:
    """The source tree as the build sees it (a recheck may shuffle its directory order)."""
    if ctx.variation is None:
        return contextlib.nullcontext(src)
    from farm.build.variation import source_view

    return source_view(src, ctx.variation)


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
                if exc.code.startswith("E-STORE-"):
                    metrics.store_errors.labels("build").inc()
                logfh.write(f"\n!!! {exc.render()}\n".encode())
                logfh.flush()
                return BuildOutcome(
                    build_key=req.build_key,
                    lease=req.lease,
                    recipe=recipe.name,
                    ok=False,
                    error=exc.to_json(),
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
            shutil.rmtree(workdir, ignore_errors=True)


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
        require_tool("bwrap", "bubblewrap")
    if not debian and ctx.environment.digest != req.environment:
        raise BuildFailure(
            E.WORKER,
            f"this worker's build environment {ctx.environment.digest[:16]} is not the planned {req.environment[:16]}",
            hint="run workers on machines with the same packages as the coordinator, or re-plan",
        )
    src, out, home, deps, arts = (workdir / d for d in ("src", "out", "home", "deps", "artifacts"))
    for d in (out, home, deps, arts):
        d.mkdir()
    with step("source", log, commit=recipe.source.commit[:12]), _timed("source", ctx.arch):
        resolved = ctx.sources.resolve(req.fetch_url, recipe.source.commit, recipe.source.ref, origin=req.recipe_path)
        if resolved.tree != req.tree:
            raise BuildFailure(
                E.SOURCE_COMMIT,
                f"commit {resolved.commit} has tree {resolved.tree}, but {req.tree} was planned",
                hint="the repository was rewritten under the same commit id; investigate before building",
            )
        ctx.sources.export(req.fetch_url, recipe.source.commit, src, resolved.commit_time)
    with step("dependencies", log, count=len(req.dependencies)), _timed("dependencies", ctx.arch):
        _stage_dependencies(req, ctx, deps)
    deadline = started_clock + ctx.timeout
    if debian:
        with step("environment", log, digest=req.environment[:12]), _timed("environment", ctx.arch):
            lower = debian_build.env_root(ctx.store, req.environment, ctx.sources.root.parent)
            repo = workdir / "repo"
            count = debian_build.stage_repo(repo, recipe, ctx.store, debian_build.dependency_debs(deps))
            logfh.write(f"==> local repository: {count} pinned and dependency packages\n".encode())
        # No file-order view here: through disorderfs, dpkg-buildpackage in the chroot got EACCES on the source.
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
        with step("sandbox", log, steps=len(recipe.steps)), _timed("build", ctx.arch), _source_view(src, ctx) as view:
            if v is not None:
                spec = replace(spec, src=view, hostname=v.hostname, uid=v.uid)
            _run_steps(recipe, spec, logfh, deadline, ctx)
    with step("pack", log), _timed("upload", ctx.arch):
        files = _collect_outputs(recipe, out, arts, resolved.commit_time)
        size = sum(f.stat().st_size for f in files)
        if size > ctx.limits.output:
            raise _limit_hit(ctx, recipe, "output size", f"the outputs total {size // sandbox.MIB} MiB")
        artifacts = [ctx.store.put_file(f) for f in files]
        metrics.store_bytes.labels("up").inc(sum(a.size for a in artifacts))
    finished = _now()
    stmt = provenance.statement(
        subjects=[(a.name, a.digest) for a in artifacts],
        recipe=recipe.content(),
        recipe_digest=recipe.digest,
        source_url=recipe.source.git or f"dsc:{recipe.source.dsc}",
        commit=resolved.commit,
        tree=resolved.tree,
        environment=req.environment,
        dependencies=[
            {
                "name": f"archive/{pin['package']}_{pin['version']}_{pin['arch']}.deb",
                "digest": {"sha256": pin["sha256"]},
            }
            for pin in recipe.pins()
        ]
        + [
            {
                "name": f"{d.recipe}/{name}",
                "digest": {"sha256": digest},
                "annotations": {"buildKey": d.build_key},
            }
            for d in req.dependencies
            for name, digest in sorted(d.artifacts.items())
        ],
        builder_id=ctx.builder_id,
        build_key=req.build_key,
        started=started,
        finished=finished,
    )
    envelope = provenance.sign(stmt, ctx.builder_key)
    envelope_digest = ctx.store.put_bytes(json.dumps(envelope, sort_keys=True, indent=1).encode())
    logfh.write(f"==> outputs: {', '.join(f'{a.name} {a.digest}' for a in artifacts)}\n".encode())
    logfh.flush()
    log_digest = ctx.store.put_file(workdir / "build.log").digest
    return BuildRecord(
        build_key=req.build_key,
        recipe=recipe.name,
        version=recipe.version,
        recipe_digest=recipe.digest,
        source_url=recipe.source.git or f"dsc:{recipe.source.dsc}",
        commit=resolved.commit,
        tree=resolved.tree,
        environment=req.environment,
        artifacts=tuple(artifacts),
        provenance=envelope_digest,
        log=log_digest,
        builder=ctx.builder_id,
        started=started,
        finished=finished,
        key_inputs=build_key_inputs(
            recipe.content(), resolved.commit, resolved.tree, req.environment, req.dependency_outputs()
        ),
    )

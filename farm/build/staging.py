"""Staging a build's dependencies: each dependency's artifacts fetched from the store into the build's read-only
``deps`` directory, after its signed provenance has been checked against the keyring."""

from __future__ import annotations

import tarfile
from pathlib import Path

from farm import metrics
from farm.build import BuildFailure, BuildRequest
from farm.build.context import WorkerContext
from farm.errors import E, FarmError
from farm.pack import safe_extract
from farm.trust import audit, keyring


def stage_dependencies(req: BuildRequest, ctx: WorkerContext, deps_dir: Path) -> None:
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

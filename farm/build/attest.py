"""Attesting a finished build: its provenance statement, signed with the builder key and stored, and the build
record that ties key inputs, outputs, provenance and log together; the store writes of a build, made together."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from farm.build import BuildRequest
from farm.build.outputs import Output
from farm.errors import E, StoreError
from farm.identity import build_key_inputs
from farm.recipes import Recipe
from farm.sources.git import ResolvedSource
from farm.store import Artifact, BuildRecord, Store
from farm.trust import provenance
from farm.trust.keys import BuilderKey


def _source_url(recipe: Recipe) -> str:
    return recipe.source.git or f"dsc:{recipe.source.dsc}"


class Uploads:
    """The store writes of one build, all at once: each waits on I/O (an fsync, an S3 round trip), not on this
    process. The outputs' artifacts are known before they are stored (their writer hashed them), so the envelope
    that names them is signed, and stored with the log, while they are written. Leaving the block waits for every
    write and raises the first failure, so a record written after it only names stored blobs."""

    def __init__(self, store: Store, threads: int = 4) -> None:
        self.store = store
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mangos-upload")
        self.pending: list[tuple[Artifact, Future[Artifact]]] = []

    def __enter__(self) -> Uploads:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.pool.shutdown(wait=True)
        if exc_type is None:
            for promised, future in self.pending:
                stored = future.result()  # a failed write raises here, after every write has finished
                if (stored.digest, stored.size) != (promised.digest, promised.size):
                    raise StoreError(
                        E.STORE_CORRUPT,
                        f"output {promised.name} was stored as {stored.digest} ({stored.size} bytes), not as hashed",
                        hint="the file changed after the build hashed it; nothing was recorded",
                    )

    def files(self, files: Sequence[Output]) -> list[Artifact]:
        """Start storing each output and return its artifacts now, in their order: name, and the digest and size
        its writer computed (the store refuses a file whose bytes do not match the digest)."""
        artifacts = []
        for f in files:
            artifact = Artifact(name=f.path.name, digest=f.sha256, size=f.size, executable=os.access(f.path, os.X_OK))
            self.pending.append((artifact, self.pool.submit(self.store.put_file, f.path, sha256=f.sha256)))
            artifacts.append(artifact)
        return artifacts

    def bytes_and_file(self, data: bytes, path: Path) -> tuple[str, str]:
        """Store ``data`` (the provenance envelope) and the file at ``path`` (the log) at once; their digests."""
        envelope = self.pool.submit(self.store.put_bytes, data)
        log_digest = self.store.put_file(path).digest
        return envelope.result(), log_digest


def provenance_envelope(
    req: BuildRequest,
    *,
    recipe: Recipe,
    resolved: ResolvedSource,
    artifacts: Sequence[Artifact],
    key: BuilderKey,
    builder_id: str,
    started: str,
    finished: str,
    upstream: Mapping[str, Any] | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> bytes:
    """The signed provenance envelope of the build, as the bytes to store.

    Its resolved dependencies are the recipe's patches (in the order applied, by sha256; none for a recipe without
    any), its inputs (likewise), its pinned archive packages, then every dependency recipe's artifacts (with the
    build key they came from), in name order. ``upstream`` and ``parameters``: see
    :func:`farm.trust.provenance.statement` (a Debian build's; absent for others)."""
    stmt = provenance.statement(
        subjects=[(a.name, a.digest) for a in artifacts],
        recipe=recipe.content(),
        recipe_digest=recipe.digest,
        source_url=_source_url(recipe),
        commit=resolved.commit,
        tree=resolved.tree,
        environment=req.environment,
        dependencies=[{"name": f"patch/{p.file}", "digest": {"sha256": p.sha256}} for p in recipe.patches]
        + [{"name": f"input/{i.file}", "digest": {"sha256": i.sha256}} for i in recipe.inputs]
        + [
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
        builder_id=builder_id,
        build_key=req.build_key,
        started=started,
        finished=finished,
        upstream=upstream,
        parameters=parameters,
    )
    envelope = provenance.sign(stmt, key)
    return json.dumps(envelope, sort_keys=True, indent=1).encode()


def build_record(
    req: BuildRequest,
    *,
    recipe: Recipe,
    resolved: ResolvedSource,
    artifacts: Sequence[Artifact],
    provenance_digest: str,
    log_digest: str,
    builder_id: str,
    started: str,
    finished: str,
) -> BuildRecord:
    return BuildRecord(
        build_key=req.build_key,
        recipe=recipe.name,
        version=recipe.version,
        recipe_digest=recipe.digest,
        source_url=_source_url(recipe),
        commit=resolved.commit,
        tree=resolved.tree,
        environment=req.environment,
        artifacts=tuple(artifacts),
        provenance=provenance_digest,
        log=log_digest,
        builder=builder_id,
        started=started,
        finished=finished,
        key_inputs=build_key_inputs(
            recipe.content(), resolved.commit, resolved.tree, req.environment, req.dependency_outputs()
        ),
    )

"""Attesting a finished build: its provenance statement, signed with the builder key and stored, and the build
record that ties key inputs, outputs, provenance and log together; the store writes of a build, made together."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from farm.build import BuildRequest
from farm.build.outputs import Output
from farm.identity import build_key_inputs
from farm.recipes import Recipe
from farm.sources.git import ResolvedSource
from farm.store import Artifact, BuildRecord, Store
from farm.trust import provenance
from farm.trust.keys import BuilderKey


def _source_url(recipe: Recipe) -> str:
    return recipe.source.git or f"dsc:{recipe.source.dsc}"


class Uploads:
    """The store writes of one build, several at once: each waits on I/O (an fsync, an S3 round trip), not on this
    process. Leaving the block waits for every write, so a record written after it only names stored blobs."""

    def __init__(self, store: Store, threads: int = 4) -> None:
        self.store = store
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mangos-upload")

    def __enter__(self) -> Uploads:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True)

    def files(self, files: Sequence[Output]) -> list[Artifact]:
        """Store each output (the artifacts), in their order, each read once: its digest is the one its writer
        computed, and the store refuses a file whose bytes do not match it."""

        def put(f: Output) -> Artifact:
            return self.store.put_file(f.path, sha256=f.sha256)

        if len(files) == 1:
            return [put(files[0])]
        return list(self.pool.map(put, files))

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

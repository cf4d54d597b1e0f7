"""Attesting a finished build: its provenance statement, signed with the builder key and stored, and the build
record that ties key inputs, outputs, provenance and log together."""

from __future__ import annotations

import json
from collections.abc import Sequence

from farm.build import BuildRequest
from farm.identity import build_key_inputs
from farm.recipes import Recipe
from farm.sources.git import ResolvedSource
from farm.store import Artifact, BuildRecord, Store
from farm.trust import provenance
from farm.trust.keys import BuilderKey


def _source_url(recipe: Recipe) -> str:
    return recipe.source.git or f"dsc:{recipe.source.dsc}"


def sign_provenance(
    req: BuildRequest,
    *,
    recipe: Recipe,
    resolved: ResolvedSource,
    artifacts: Sequence[Artifact],
    store: Store,
    key: BuilderKey,
    builder_id: str,
    started: str,
    finished: str,
) -> str:
    """The signed provenance envelope of the build, stored; returns its digest.

    Its resolved dependencies are the recipe's patches (in the order applied, by sha256; none for a recipe without
    any), its pinned archive packages, then every dependency recipe's artifacts (with the build key they came
    from), in name order."""
    stmt = provenance.statement(
        subjects=[(a.name, a.digest) for a in artifacts],
        recipe=recipe.content(),
        recipe_digest=recipe.digest,
        source_url=_source_url(recipe),
        commit=resolved.commit,
        tree=resolved.tree,
        environment=req.environment,
        dependencies=[{"name": f"patch/{p.file}", "digest": {"sha256": p.sha256}} for p in recipe.patches]
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
    )
    envelope = provenance.sign(stmt, key)
    return store.put_bytes(json.dumps(envelope, sort_keys=True, indent=1).encode())


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

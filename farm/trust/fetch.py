"""Fetching a source commit's artifacts from the store, each next to its DSSE envelope, verified on arrival."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from farm.errors import E, FarmError
from farm.store import BuildRecord, Store
from farm.trust.keys import PublicKey
from farm.trust.verify import ENVELOPE_SUFFIX, VerifiedArtifact, verify_file


def records_for(store: Store, commit: str, recipe: str | None) -> list[BuildRecord]:
    if len(commit) != 40:
        raise FarmError(
            E.FETCH_NOTHING,
            f"'{commit}' is not a full commit id",
            field="--commit",
            hint="pass the full 40-hex commit (git rev-parse <rev>)",
        )
    records = [r for r in store.records_for_commit(commit.lower()) if recipe is None or r.recipe == recipe]
    if not records:
        what = f"recipe '{recipe}' at commit" if recipe else "commit"
        raise FarmError(
            E.FETCH_NOTHING,
            f"no artifacts built from {what} {commit} in {store.url}",
            hint="check the commit id (see 'mangos-farm plan --json'), or build it first with 'mangos-farm rebuild'",
        )
    return records


def fetch_records(
    store: Store, records: Sequence[BuildRecord], outdir: Path, trusted: Sequence[PublicKey]
) -> list[VerifiedArtifact]:
    outdir.mkdir(parents=True, exist_ok=True)
    fetched = []
    for record in records:
        envelope = store.get_bytes(record.provenance)
        for artifact in record.artifacts:
            dest = outdir / artifact.name
            store.fetch_blob(artifact.digest, dest)
            dest.chmod(0o755 if artifact.executable else 0o644)
            (outdir / (artifact.name + ENVELOPE_SUFFIX)).write_bytes(envelope)
            fetched.append(verify_file(dest, trusted))
    return fetched

"""Checking artifacts on disk against their signed provenance (``NAME`` next to ``NAME.intoto.json``)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm import metrics
from farm.errors import E, FarmError, TrustError
from farm.trust.keys import PublicKey, revoked_among
from farm.trust.provenance import verify_envelope

ENVELOPE_SUFFIX = ".intoto.json"


@dataclass(frozen=True)
class VerifiedArtifact:
    path: Path
    digest: str
    keyid: str
    recipe: str
    commit: str
    builder: str

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "sha256": self.digest,
            "keyid": self.keyid,
            "recipe": self.recipe,
            "commit": self.commit,
            "builder": self.builder,
        }


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def expand(paths: Sequence[Path]) -> list[Path]:
    """Artifacts named by the arguments: files as given, directories by their non-envelope files."""
    found: list[Path] = []
    for p in paths:
        if p.is_dir():
            found.extend(f for f in sorted(p.iterdir()) if f.is_file() and not f.name.endswith(ENVELOPE_SUFFIX))
        elif p.name.endswith(ENVELOPE_SUFFIX):
            found.append(p.with_name(p.name[: -len(ENVELOPE_SUFFIX)]))
        else:
            found.append(p)
    return found


def verify_file(path: Path, trusted: Sequence[PublicKey]) -> VerifiedArtifact:
    envelope_path = path.with_name(path.name + ENVELOPE_SUFFIX)
    if not path.is_file():
        raise TrustError(E.VERIFY_DIGEST, "no such artifact file", file=path, hint="check the path")
    try:
        envelope = json.loads(envelope_path.read_bytes())
    except FileNotFoundError:
        raise TrustError(
            E.VERIFY_NO_ENVELOPE,
            f"no provenance next to it (expected {envelope_path.name})",
            file=path,
            hint="fetch artifacts with 'mangos-farm fetch -o DIR', which writes each envelope beside them",
        ) from None
    except json.JSONDecodeError as exc:
        raise TrustError(
            E.VERIFY_ENVELOPE, f"envelope is not JSON: {exc}", file=envelope_path, hint="fetch it again"
        ) from None
    if not trusted and not revoked_among(trusted):  # with revocations: say which key was revoked
        raise TrustError(
            E.VERIFY_UNTRUSTED,
            "no trusted builder keys",
            hint="pass --key PEM, or generate this organization's key with 'mangos-farm keys generate'",
        )
    try:
        verified = verify_envelope(envelope, trusted)
    except FarmError as exc:
        metrics.signature_failures.inc()
        exc.file = str(envelope_path)
        raise
    subjects = verified.subjects()
    if path.name not in subjects:
        raise TrustError(
            E.VERIFY_NOT_SUBJECT,
            f"the signed statement does not name '{path.name}' (it names {', '.join(sorted(subjects))})",
            file=path,
            hint="the file was renamed or the envelope belongs to another artifact",
        )
    actual = file_sha256(path)
    if actual != subjects[path.name]:
        raise TrustError(
            E.VERIFY_DIGEST,
            f"sha256 {actual} does not match the signed {subjects[path.name]}: the file was altered",
            file=path,
            hint="do not use it; fetch it again from the store",
        )
    predicate = verified.statement.get("predicate", {})
    params = predicate.get("buildDefinition", {}).get("externalParameters", {})
    return VerifiedArtifact(
        path=path,
        digest=actual,
        keyid=verified.keyid,
        recipe=str(params.get("recipe", {}).get("name", "")),
        commit=str(params.get("source", {}).get("commit", "")),
        builder=str(predicate.get("runDetails", {}).get("builder", {}).get("id", "")),
    )

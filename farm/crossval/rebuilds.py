"""Published rebuild attestations: ``rebuilds.jsonl`` beside an organization's attestation log.

One line per rechecked build (the latest recheck of it), canonical JSON: ``{"build_key", "recipe", "rebuild",
"equivalence"}`` with the two DSSE envelopes of :mod:`farm.crossval.attest`. Each envelope is signed on its own, so
the file needs no signed head: a reader verifies every line with the organization's key and ignores nothing
silently (a line that does not verify makes the whole file unusable). A log published before rechecks were
attested has no such file: it has no rebuild attestations, and its log still verifies as before.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from farm.crossval import remote
from farm.crossval.attest import Equivalence, verify_pair
from farm.crossval.results import load_results
from farm.errors import E, FarmError
from farm.identity import canonical_json
from farm.settings import Settings
from farm.trust.keys import PublicKey

log = logging.getLogger(__name__)

REBUILDS = "rebuilds.jsonl"


def own_lines(settings: Settings) -> bytes:
    """This organization's ``rebuilds.jsonl``: every attested recheck result, ordered by build key."""
    lines = [
        canonical_json(
            {
                "build_key": r.build_key,
                "recipe": r.recipe,
                "rebuild": r.attestations["rebuild"],
                "equivalence": r.attestations["equivalence"],
            }
        )
        + b"\n"
        for r in sorted(load_results(settings), key=lambda r: r.build_key)
        if r.attestations
    ]
    return b"".join(lines)


def parse(data: bytes, trusted: Sequence[PublicKey], source: str) -> list[Equivalence]:
    """Every line verified with ``trusted``; a FarmError (E-LOG-INVALID) for the first that does not."""
    found = []
    for n, raw in enumerate(data.splitlines()):
        if not raw.strip():
            continue
        try:
            line: dict[str, Any] = json.loads(raw)
        except ValueError as exc:
            raise FarmError(
                E.LOG_INVALID, f"{REBUILDS} line {n + 1} is not JSON: {exc}", file=source, hint="fetch it again"
            ) from None
        found.append(verify_pair(line, trusted, f"{source} {REBUILDS} line {n + 1}"))
    return found


def read_published(location: str, trusted: Sequence[PublicKey], source: str) -> list[Equivalence]:
    """A peer's published rebuild attestations; none when it publishes no ``rebuilds.jsonl``."""
    try:
        data = remote.read(location, REBUILDS)
    except FarmError:
        return []
    return parse(data, trusted, source)


def own_equivalences(settings: Settings, trusted: Sequence[PublicKey]) -> list[Equivalence]:
    """This organization's attested recheck results, verified with its trusted builder keys (its workers'); one
    that does not verify (its worker's key since revoked, say) is left out with a warning."""
    found = []
    for r in load_results(settings):
        if not r.attestations:
            continue
        try:
            found.append(verify_pair(r.attestations, trusted, f"recheck result {r.build_key}"))
        except FarmError as exc:
            log.warning("not using the recheck of %s (%s): %s", r.recipe, r.build_key[:16], exc.message)
    return found

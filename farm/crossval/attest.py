"""Rebuild attestations: what a recheck publishes beside the build provenance, in the manner of OSS Rebuild.

Two in-toto Statements v1, each in its own DSSE envelope signed by the rechecking builder's key (so any DSSE
implementation verifies them, like the build provenance of :mod:`farm.trust.provenance`):

* the **rebuild statement**: SLSA Provenance v1 with buildType :data:`REBUILD_BUILD_TYPE`; its subjects are the
  rebuilt artifacts (none when the varied build failed); ``externalParameters`` carry the original build's
  recipe and source, the original build (``original``: build key and the sha256 of its provenance envelope) and
  the variation (``variation``: the spec, whether it differs from the normal build, and the variation-table
  version);
* the **equivalence statement**: predicateType :data:`EQUIVALENCE_TYPE`; its subjects are the original build's
  artifacts that must be bit-identical; the predicate holds the original and rebuilt digests, the verdict
  (:data:`REPRODUCIBLE`, :data:`NOT_REPRODUCIBLE` or :data:`FAILED`), the differing artifacts and their likely
  causes, and the sha256 of the rebuild statement's envelope.

A statement names digests only, never timestamps of the signing: the same recheck result signs to the same bytes.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from farm.crossval.log import comparable
from farm.errors import E, FarmError
from farm.identity import sha256_hex
from farm.trust.keys import BuilderKey, PublicKey
from farm.trust.provenance import PREDICATE_TYPE, STATEMENT_TYPE, sign, verify_envelope

REBUILD_BUILD_TYPE = "https://mangos.dev/farm/rebuild/v1"
EQUIVALENCE_TYPE = "https://mangos.dev/farm/rebuild-equivalence/v1"
REPRODUCIBLE, NOT_REPRODUCIBLE, FAILED = "reproducible", "not-reproducible", "failed-to-build"
VERDICTS = (REPRODUCIBLE, NOT_REPRODUCIBLE, FAILED)


def envelope_digest(envelope: Mapping[str, Any]) -> str:
    """The sha256 that names an attestation envelope: of its canonical JSON (sorted keys, no spaces)."""
    return sha256_hex(json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode())


def original_statement(envelope_bytes: bytes) -> dict[str, Any]:
    """The statement inside the original build's provenance envelope (read, not verified: the caller's store)."""
    try:
        stmt = json.loads(base64.b64decode(json.loads(envelope_bytes)["payload"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise FarmError(
            E.RECHECK, f"the original build's provenance is unreadable: {exc}", hint="fetch it again"
        ) from None
    if not isinstance(stmt, dict):
        raise FarmError(E.RECHECK, "the original build's provenance is not a statement", hint="fetch it again")
    return stmt


@dataclass(frozen=True)
class Rebuild:
    """What a recheck found, as the attestations state it."""

    build_key: str
    provenance: str  # sha256 of the original build's provenance envelope (its store blob)
    original_builder: str
    outputs: Mapping[str, str]  # the original build's
    rebuilt: Mapping[str, str]  # the varied rebuild's (empty when it failed)
    variation: Mapping[str, Any]
    variation_version: int
    varied: bool
    verdict: str
    differing: Sequence[str] = ()
    causes: Sequence[str] = ()
    log: str = ""  # the rebuild's log blob
    builder_id: str = ""  # who rebuilt it


def rebuild_statement(rebuild: Rebuild, original: Mapping[str, Any]) -> dict[str, Any]:
    """SLSA Provenance v1 of the rebuild, derived from the original statement's build definition."""
    definition = dict(original.get("predicate", {}).get("buildDefinition", {}))
    external = dict(definition.get("externalParameters", {}))
    external["original"] = {"buildKey": rebuild.build_key, "provenance": {"sha256": rebuild.provenance}}
    external["variation"] = {
        "spec": dict(rebuild.variation),
        "varied": rebuild.varied,
        "tableVersion": rebuild.variation_version,
    }
    metadata: dict[str, Any] = {"invocationId": f"{rebuild.build_key}/rebuild"}
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": n, "digest": {"sha256": d}} for n, d in sorted(rebuild.rebuilt.items())],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": REBUILD_BUILD_TYPE,
                "externalParameters": external,
                "internalParameters": dict(definition.get("internalParameters", {})),
                "resolvedDependencies": list(definition.get("resolvedDependencies", [])),
            },
            "runDetails": {
                "builder": {"id": rebuild.builder_id},
                "metadata": metadata,
                "byproducts": [{"name": "log", "digest": {"sha256": rebuild.log}}] if rebuild.log else [],
            },
        },
    }


def equivalence_statement(rebuild: Rebuild, rebuild_envelope: str) -> dict[str, Any]:
    must_match = comparable(rebuild.outputs)
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": n, "digest": {"sha256": d}} for n, d in sorted(must_match.items())],
        "predicateType": EQUIVALENCE_TYPE,
        "predicate": {
            "verdict": rebuild.verdict,
            "original": {
                "buildKey": rebuild.build_key,
                "provenance": {"sha256": rebuild.provenance},
                "builder": rebuild.original_builder,
                "outputs": dict(sorted(rebuild.outputs.items())),
            },
            "rebuild": {
                "attestation": {"sha256": rebuild_envelope},
                "builder": rebuild.builder_id,
                "outputs": dict(sorted(rebuild.rebuilt.items())),
            },
            "differing": sorted(rebuild.differing),
            "causes": list(rebuild.causes),
            "variation": {"varied": rebuild.varied, "tableVersion": rebuild.variation_version},
        },
    }


def sign_rebuild(rebuild: Rebuild, original: Mapping[str, Any], key: BuilderKey) -> dict[str, dict[str, Any]]:
    """Both envelopes, ``{"rebuild": ..., "equivalence": ...}``, signed with ``key``."""
    if rebuild.verdict not in VERDICTS:
        raise ValueError(f"unknown verdict {rebuild.verdict!r}")
    rebuild_env = sign(rebuild_statement(rebuild, original), key)
    equivalence_env = sign(equivalence_statement(rebuild, envelope_digest(rebuild_env)), key)
    return {"rebuild": rebuild_env, "equivalence": equivalence_env}


@dataclass(frozen=True)
class Equivalence:
    """A verified equivalence statement, with who signed it."""

    statement: dict[str, Any]
    keyid: str

    @property
    def predicate(self) -> dict[str, Any]:
        predicate: dict[str, Any] = self.statement["predicate"]
        return predicate

    @property
    def verdict(self) -> str:
        return str(self.predicate["verdict"])

    @property
    def build_key(self) -> str:
        return str(self.predicate["original"]["buildKey"])

    @property
    def varied(self) -> bool:
        return bool(self.predicate["variation"]["varied"])

    @property
    def table_version(self) -> int:
        return int(self.predicate["variation"]["tableVersion"])

    def subjects(self) -> dict[str, str]:
        return {s["name"]: s["digest"]["sha256"] for s in self.statement["subject"]}

    def rebuilt(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.predicate["rebuild"]["outputs"].items()}


def verify_pair(attestations: Mapping[str, Any], trusted: Sequence[PublicKey], source: str) -> Equivalence:
    """Check both envelopes' signatures and that they belong together; the equivalence statement."""

    def bad(message: str) -> FarmError:
        return FarmError(E.LOG_INVALID, message, file=source, hint="do not trust this rebuild attestation")

    try:
        rebuild = verify_envelope(attestations["rebuild"], trusted)
        equivalence = verify_envelope(attestations["equivalence"], trusted)
    except FarmError as exc:
        raise bad(f"rebuild attestation does not verify: {exc.message}") from None
    except (KeyError, TypeError) as exc:
        raise bad(f"malformed rebuild attestation: {exc}") from None
    rb, eq = rebuild.statement, equivalence.statement
    try:
        if rb["predicate"]["buildDefinition"]["buildType"] != REBUILD_BUILD_TYPE:
            raise bad(f"the rebuild statement's buildType is not {REBUILD_BUILD_TYPE}")
        if eq["predicateType"] != EQUIVALENCE_TYPE or eq["predicate"]["verdict"] not in VERDICTS:
            raise bad(f"the equivalence statement is not a {EQUIVALENCE_TYPE} statement")
        if eq["predicate"]["rebuild"]["attestation"]["sha256"] != envelope_digest(attestations["rebuild"]):
            raise bad("the equivalence statement names another rebuild statement")
        if (
            rb["predicate"]["buildDefinition"]["externalParameters"]["original"]["buildKey"]
            != (eq["predicate"]["original"]["buildKey"])
        ):
            raise bad("the two statements are about different builds")
    except (KeyError, TypeError) as exc:
        raise bad(f"malformed rebuild attestation: {exc}") from None
    return Equivalence(eq, equivalence.keyid)

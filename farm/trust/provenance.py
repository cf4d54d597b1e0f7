"""Provenance: an in-toto Statement v1 with a SLSA Provenance v1 predicate, in a DSSE envelope.

The signature is over DSSE's pre-authentication encoding (PAE), exactly as the DSSE spec defines it, so any DSSE
implementation (securesystemslib, sigstore, in-toto) and plain ``openssl pkeyutl -verify -rawin`` can check it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from farm.errors import E, FarmError, TrustError
from farm.trust.keys import BuilderKey, PublicKey, revoked_among

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://mangos.dev/farm/build/v1"


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSEv1 pre-authentication encoding: ``DSSEv1 SP LEN(type) SP type SP LEN(body) SP body``."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def statement(
    *,
    subjects: Sequence[tuple[str, str]],
    recipe: Mapping[str, Any],
    recipe_digest: str,
    source_url: str,
    commit: str,
    tree: str,
    environment: str,
    dependencies: Sequence[Mapping[str, Any]],
    builder_id: str,
    build_key: str,
    started: str,
    finished: str,
    upstream: Mapping[str, Any] | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The statement of one build. ``upstream`` (where a Debian source comes from: its .dsc by URL and sha256, its
    orig tarballs by sha256, the upstream repository and release it declares) becomes
    ``externalParameters.source.upstream``, its .dsc and tarballs also resolved dependencies; ``parameters`` (what
    a Debian build ran with: DEB_BUILD_OPTIONS, profiles, the machine's parallelism, memory and timeout) becomes
    ``internalParameters.debian``. Both are optional and absent when empty, so a statement without them is
    byte for byte what it always was."""
    resolved: list[dict[str, Any]] = [
        {"uri": f"git+{source_url}@{commit}", "digest": {"gitCommit": commit, "gitTree": tree}},
        {"name": "build-environment", "digest": {"sha256": environment}},
    ]
    resolved.extend(upstream_dependencies(upstream or {}))
    resolved.extend(dict(d) for d in dependencies)
    source: dict[str, Any] = {"git": source_url, "commit": commit}
    if upstream:
        source["upstream"] = dict(upstream)
    internal: dict[str, Any] = {"recipeDigest": recipe_digest, "buildKey": build_key}
    if parameters:
        internal["debian"] = dict(parameters)
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": digest}} for name, digest in subjects],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"recipe": dict(recipe), "source": source},
                "internalParameters": internal,
                "resolvedDependencies": resolved,
            },
            "runDetails": {
                "builder": {"id": builder_id},
                "metadata": {"invocationId": build_key, "startedOn": started, "finishedOn": finished},
            },
        },
    }


def upstream_dependencies(upstream: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The .dsc (by its URL when known) and the orig tarballs of ``upstream`` as resolved dependencies."""
    found: list[dict[str, Any]] = []
    dsc = upstream.get("dsc")
    if isinstance(dsc, Mapping) and dsc.get("sha256"):
        entry: dict[str, Any] = {"name": f"dsc/{dsc.get('name', '')}", "digest": {"sha256": dsc["sha256"]}}
        if dsc.get("url"):
            entry["uri"] = dsc["url"]
        found.append(entry)
    for orig in upstream.get("orig", []) or []:
        if isinstance(orig, Mapping) and orig.get("sha256"):
            found.append({"name": f"orig/{orig.get('name', '')}", "digest": {"sha256": orig["sha256"]}})
    return found


def sign(stmt: Mapping[str, Any], key: BuilderKey) -> dict[str, Any]:
    payload = json.dumps(stmt, sort_keys=True, separators=(",", ":")).encode()
    sig = key.sign(pae(PAYLOAD_TYPE, payload))
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": key.public.keyid, "sig": base64.b64encode(sig).decode()}],
    }


@dataclass(frozen=True)
class Verified:
    statement: dict[str, Any]
    keyid: str
    key_source: str

    def subjects(self) -> dict[str, str]:
        return {s["name"]: s["digest"]["sha256"] for s in self.statement.get("subject", [])}


def _bad(message: str, hint: str = "the envelope is damaged; fetch it again from the store") -> FarmError:
    return TrustError(E.VERIFY_ENVELOPE, message, hint=hint)


def _refuse_revoked(keyids: Sequence[str], trusted: Sequence[PublicKey]) -> None:
    """Say "revoked" (not just "untrusted") when a signature's key id is one the keyring revoked
    (``farm.trust.keys.TrustedKeys`` carries the revocations it left out)."""
    revoked = revoked_among(trusted)
    for keyid in keyids:
        if keyid in revoked:
            rev = revoked[keyid]
            raise TrustError(
                E.KEY_REVOKED,
                f"signed by revoked builder key {keyid[:16]}... (revoked {rev.time}: {rev.reason})",
                hint="do not use this artifact; rebuild it on a builder whose key is trusted",
            )


def verify_envelope(envelope: Mapping[str, Any], trusted: Sequence[PublicKey]) -> Verified:
    """Check a DSSE envelope's signature against trusted keys and return its statement."""
    if not isinstance(envelope, Mapping):
        raise _bad(f"a DSSE envelope is a JSON object, got {type(envelope).__name__}")
    if envelope.get("payloadType") != PAYLOAD_TYPE:
        raise _bad(f"payloadType is {envelope.get('payloadType')!r}, expected {PAYLOAD_TYPE!r}")
    try:
        payload = base64.b64decode(envelope["payload"], validate=True)
        sigs = [(s.get("keyid", ""), base64.b64decode(s["sig"], validate=True)) for s in envelope["signatures"]]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _bad(f"malformed DSSE envelope: {exc}") from None
    if not all(isinstance(keyid, str) for keyid, _ in sigs):
        raise _bad("malformed DSSE envelope: a signature's keyid is not a string")
    if not sigs:
        raise TrustError(E.VERIFY_SIGNATURE, "the envelope carries no signature", hint="it was never signed")
    message = pae(PAYLOAD_TYPE, payload)
    by_id = {k.keyid: k for k in trusted}
    untrusted = []
    for keyid, sig in sigs:
        candidates = [by_id[keyid]] if keyid in by_id else list(trusted)
        for key in candidates:
            if key.verify(sig, message):
                try:
                    stmt = json.loads(payload)
                except ValueError as exc:  # JSONDecodeError, or UnicodeDecodeError for non-UTF-8 bytes
                    raise _bad(f"signed payload is not JSON: {exc}") from None
                if (
                    not isinstance(stmt, dict)
                    or stmt.get("_type") != STATEMENT_TYPE
                    or not isinstance(stmt.get("subject"), list)
                ):
                    raise _bad("signed payload is not an in-toto Statement v1")
                return Verified(stmt, key.keyid, key.source)
        if keyid in by_id:
            raise TrustError(
                E.VERIFY_SIGNATURE,
                f"signature by trusted key {keyid[:16]}... does not match the statement: "
                "the statement or the signature was altered",
                hint="do not use this artifact; fetch the envelope again and investigate the store",
            )
        untrusted.append(keyid)
    _refuse_revoked(untrusted, trusted)
    raise TrustError(
        E.VERIFY_UNTRUSTED,
        f"signed by a key that is not trusted ({', '.join(k[:16] + '...' for k in untrusted)})",
        hint="add the builder's public key with --key PEM, or to $MANGOS_FARM_HOME/keys/trusted/",
    )

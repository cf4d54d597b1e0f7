"""The attestation log: an organization's append-only, hash-chained list of what it built, with a signed head.

Each entry records one build by its inputs key (source commit, recipe digest, build-environment digest, arch),
the output digests, and the DSSE provenance envelope the builder signed. Entry ``i`` names the sha256 of entry
``i-1`` (``prev``), so the hash of the last entry commits to the whole log. The head ``{size, head}`` is signed
(DSSE, Ed25519) with the organization's key. Whoever saw a head of size ``n`` can check any later log: its first
``n`` entries must chain to the same hash. Removing or rewriting a published entry therefore breaks either the
signature or the consistency with what peers saw before, and cannot go unnoticed.

Files (in a log directory, published as is): ``log.jsonl`` (one canonical JSON entry per line) and ``head.json``
(the signed head envelope).
"""

from __future__ import annotations

import base64
import fnmatch
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm.errors import E, FarmError
from farm.fsutil import atomic_write
from farm.identity import canonical_json, sha256_hex
from farm.trust.keys import BuilderKey, PublicKey
from farm.trust.provenance import pae, verify_envelope

ENTRIES = "log.jsonl"
HEAD = "head.json"
HEAD_TYPE = "application/vnd.mangos.attestation-log-head+json"
HEAD_SCHEMA = "https://mangos.dev/farm/attestation-log-head/v1"
ENTRY_SCHEMA = "https://mangos.dev/farm/attestation-log-entry/v1"
GENESIS = "0" * 64
# Outputs that describe the build environment rather than being built from the inputs (Debian's .buildinfo records
# the build date, locale and parallelism): they differ between any two builds by design, so agreement and
# reproducibility are judged on the other outputs (the .debs). They are still logged and signed.
RECORD_ONLY = ("*.buildinfo",)


def comparable(outputs: Mapping[str, str]) -> dict[str, str]:
    """The outputs that must be bit-identical between two builds of the same inputs."""
    return {n: d for n, d in outputs.items() if not any(fnmatch.fnmatchcase(n, p) for p in RECORD_ONLY)}


@dataclass(frozen=True, order=True)
class InputsKey:
    """What must be equal for two builds to be expected to give equal outputs."""

    commit: str
    recipe_digest: str
    environment: str
    arch: str

    def to_json(self) -> dict[str, str]:
        return {
            "commit": self.commit,
            "recipe_digest": self.recipe_digest,
            "environment": self.environment,
            "arch": self.arch,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> InputsKey:
        return cls(str(data["commit"]), str(data["recipe_digest"]), str(data["environment"]), str(data["arch"]))

    @classmethod
    def from_statement(cls, stmt: Mapping[str, Any], arch: str) -> InputsKey:
        """The key of a provenance statement (``farm.trust.provenance.statement``); arch is the builder's."""
        definition = stmt["predicate"]["buildDefinition"]
        commit = str(definition["externalParameters"]["source"]["commit"])
        recipe_digest = str(definition["internalParameters"]["recipeDigest"])
        env = next(
            (d["digest"]["sha256"] for d in definition["resolvedDependencies"] if d.get("name") == "build-environment"),
            "",
        )
        return cls(commit, recipe_digest, str(env), arch)

    def short(self) -> str:
        return f"{self.commit[:12]}/{self.recipe_digest[:12]}/{self.environment[:12]}/{self.arch}"


@dataclass(frozen=True)
class Entry:
    index: int
    prev: str
    key: InputsKey
    recipe: str
    version: str
    build_key: str
    outputs: dict[str, str]
    envelope: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": ENTRY_SCHEMA,
            "index": self.index,
            "prev": self.prev,
            "key": self.key.to_json(),
            "recipe": self.recipe,
            "version": self.version,
            "build_key": self.build_key,
            "outputs": dict(sorted(self.outputs.items())),
            "envelope": self.envelope,
        }

    def line(self) -> bytes:
        return canonical_json(self.to_json())

    @property
    def hash(self) -> str:
        return sha256_hex(self.line())

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Entry:
        return cls(
            index=int(data["index"]),
            prev=str(data["prev"]),
            key=InputsKey.from_json(data["key"]),
            recipe=str(data["recipe"]),
            version=str(data["version"]),
            build_key=str(data["build_key"]),
            outputs={str(k): str(v) for k, v in data["outputs"].items()},
            envelope=dict(data["envelope"]),
        )


@dataclass(frozen=True)
class Head:
    size: int
    head: str

    def to_json(self) -> dict[str, Any]:
        return {"schema": HEAD_SCHEMA, "size": self.size, "head": self.head}


def sign_head(head: Head, key: BuilderKey) -> dict[str, Any]:
    payload = canonical_json(head.to_json())
    sig = key.sign(pae(HEAD_TYPE, payload))
    return {
        "payloadType": HEAD_TYPE,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": key.public.keyid, "sig": base64.b64encode(sig).decode()}],
    }


def _invalid(message: str, source: str, hint: str = "") -> FarmError:
    return FarmError(
        E.LOG_INVALID,
        message,
        file=source,
        hint=hint or "the log was altered after it was signed, or it is not this organization's log: do not trust it",
    )


def verify_head(envelope: Mapping[str, Any], key: PublicKey, source: str) -> Head:
    """Check the head's signature with the organization's key; return the signed head."""
    try:
        if envelope["payloadType"] != HEAD_TYPE:
            raise _invalid(f"head payloadType is {envelope['payloadType']!r}, expected {HEAD_TYPE!r}", source)
        payload = base64.b64decode(envelope["payload"], validate=True)
        sigs = [base64.b64decode(s["sig"], validate=True) for s in envelope["signatures"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise _invalid(f"malformed signed head: {exc}", source) from None
    if not any(key.verify(sig, pae(HEAD_TYPE, payload)) for sig in sigs):
        raise _invalid(f"the log head is not signed by the key {key.source or key.keyid[:16]}", source)
    try:
        data = json.loads(payload)
        return Head(int(data["size"]), str(data["head"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise _invalid(f"signed head is not a log head: {exc}", source) from None


def parse_entries(data: bytes, source: str) -> list[Entry]:
    """Parse ``log.jsonl`` and check the chain: indexes in order, each ``prev`` the hash of the entry before."""
    entries: list[Entry] = []
    prev = GENESIS
    for n, raw in enumerate(data.splitlines()):
        if not raw.strip():
            continue
        try:
            entry = Entry.from_json(json.loads(raw))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise _invalid(f"entry on line {n + 1} is malformed: {exc}", source) from None
        if entry.line() != raw.strip():
            raise _invalid(f"entry {entry.index} is not in canonical form (line {n + 1})", source)
        if entry.index != len(entries):
            raise _invalid(f"entry on line {n + 1} has index {entry.index}, expected {len(entries)}", source)
        if entry.prev != prev:
            raise _invalid(
                f"entry {entry.index} ({entry.recipe}) does not chain to the entry before it: "
                "an entry was removed, inserted or rewritten",
                source,
            )
        prev = entry.hash
        entries.append(entry)
    return entries


def chain_head(entries: Sequence[Entry]) -> Head:
    return Head(len(entries), entries[-1].hash if entries else GENESIS)


def check_matches_head(entries: Sequence[Entry], head: Head, source: str) -> None:
    if chain_head(entries) != head:
        raise _invalid(
            f"the log has {len(entries)} entries ending in {chain_head(entries).head[:16]}, but its signed head "
            f"says {head.size} ending in {head.head[:16]}: entries were removed or rewritten after signing",
            source,
        )


def check_consistent(entries: Sequence[Entry], seen: Head, source: str) -> None:
    """The log must extend the one whose head we saw before (a prefix with the same hash)."""
    if len(entries) < seen.size:
        raise FarmError(
            E.LOG_INCONSISTENT,
            f"the log now has {len(entries)} entries, but it had {seen.size} when last fetched: entries were removed",
            file=source,
            hint="this organization rewrote its published history; ask it why before trusting anything from it",
        )
    if chain_head(entries[: seen.size]) != seen:
        raise FarmError(
            E.LOG_INCONSISTENT,
            f"the first {seen.size} entries no longer hash to the head seen before ({seen.head[:16]}): "
            "published entries were rewritten",
            file=source,
            hint="this organization rewrote its published history; ask it why before trusting anything from it",
        )


@dataclass
class Log:
    """A log directory: this organization's own (appended to) or a fetched copy of a peer's."""

    root: Path
    entries: list[Entry]

    @classmethod
    def open(cls, root: Path) -> Log:
        path = root / ENTRIES
        data = path.read_bytes() if path.exists() else b""
        return cls(root, parse_entries(data, str(path)))

    def by_key(self) -> dict[InputsKey, Entry]:
        """The first entry per inputs key (a later, different one would be the log's own disagreement)."""
        found: dict[InputsKey, Entry] = {}
        for e in self.entries:
            found.setdefault(e.key, e)
        return found

    def build_keys(self) -> set[str]:
        return {e.build_key for e in self.entries}

    def append(
        self,
        *,
        key: InputsKey,
        recipe: str,
        version: str,
        build_key: str,
        outputs: Mapping[str, str],
        envelope: Mapping[str, Any],
    ) -> Entry:
        prev = self.entries[-1].hash if self.entries else GENESIS
        entry = Entry(len(self.entries), prev, key, recipe, version, build_key, dict(outputs), dict(envelope))
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ENTRIES).open("ab") as fh:  # append only: published lines are never rewritten
            fh.write(entry.line() + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.entries.append(entry)
        return entry

    def sign(self, key: BuilderKey) -> dict[str, Any]:
        envelope = sign_head(chain_head(self.entries), key)
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(self.root / HEAD, json.dumps(envelope, sort_keys=True, indent=1).encode())
        return envelope


def read_verified(entries_data: bytes, head_data: bytes, key: PublicKey, source: str) -> tuple[list[Entry], Head]:
    """A fetched log: chain intact, matching its signed head, every entry's provenance signed by ``key``."""
    try:
        head_env = json.loads(head_data)
    except ValueError as exc:
        raise _invalid(f"the signed head is not JSON: {exc}", source) from None
    head = verify_head(head_env, key, source)
    entries = parse_entries(entries_data, source)
    check_matches_head(entries, head, source)
    check_statements(entries, [key], source)
    return entries, head


def check_statements(entries: Iterable[Entry], keys: Sequence[PublicKey], source: str) -> None:
    """Each entry's outputs must be exactly the subjects of its provenance, signed by the organization's key."""
    for e in entries:
        try:
            verified = verify_envelope(e.envelope, keys)
        except FarmError as exc:
            raise _invalid(f"entry {e.index} ({e.recipe}): provenance does not verify: {exc.message}", source) from None
        if verified.subjects() != e.outputs:
            raise _invalid(f"entry {e.index} ({e.recipe}): outputs differ from its signed provenance", source)

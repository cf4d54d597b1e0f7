"""The store interface and the build record.

Invariants every implementation keeps (and the conformance suite checks):
- a blob's name is the sha256 of its bytes, verified on the way in and on the way out;
- writes are atomic: a reader never sees half a blob or half a record;
- a record is accepted only when every blob it names is already present, and never overwritten
  (put-if-absent), so a duplicate build cannot replace what another build published.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, BinaryIO

RECORD_SCHEMA = "https://mangos.dev/farm/build-record/v1"


@dataclass(frozen=True)
class Artifact:
    name: str
    digest: str
    size: int
    executable: bool = False


@dataclass(frozen=True)
class BuildRecord:
    build_key: str
    recipe: str
    version: str
    recipe_digest: str
    source_url: str
    commit: str
    tree: str
    environment: str
    artifacts: tuple[Artifact, ...]
    provenance: str  # digest of the DSSE envelope blob
    log: str  # digest of the build log blob
    builder: str
    started: str
    finished: str
    key_inputs: dict[str, Any] = field(default_factory=dict)

    def blob_digests(self) -> list[str]:
        return [a.digest for a in self.artifacts] + [self.provenance, self.log]

    def outputs(self) -> dict[str, str]:
        return {a.name: a.digest for a in self.artifacts}

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["schema"] = RECORD_SCHEMA
        data["artifacts"] = [asdict(a) for a in self.artifacts]
        return data

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, indent=1).encode()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BuildRecord:
        """The record ``data`` holds (:meth:`to_json`'s form). A field missing or unknown, in the record or one of
        its artifacts, raises TypeError, as the constructor does (a store reports that record as unreadable)."""
        data = dict(data)
        data.pop("schema", None)
        data["artifacts"] = tuple(_artifact(a) for a in data["artifacts"])
        if not (_RECORD_REQUIRED <= data.keys() <= _RECORD_FIELDS):
            return cls(**data)  # raises TypeError, naming the field
        # Exactly the constructor's result, without its per-field frozen assignments (a plan reads a record per
        # recipe, thousands at a time): every field present, or at its default.
        record = object.__new__(cls)
        record.__dict__.update({name: make() for name, make in _RECORD_DEFAULTS.items() if name not in data})
        record.__dict__.update(data)
        return record

    @classmethod
    def from_bytes(cls, raw: bytes) -> BuildRecord:
        """The record a store holds as ``raw``, remembering the sha256 of those bytes (:attr:`stored_sha256`):
        what was read is what is hashed, so nothing needs serialising again to tell a rewritten record."""
        record = cls.from_json(json.loads(raw))
        object.__setattr__(record, "_stored_sha256", hashlib.sha256(raw).hexdigest())
        return record

    @property
    def stored_sha256(self) -> str | None:
        """The sha256 of the stored bytes this record was read from (:meth:`from_bytes`); None for a record made
        in memory. Not a field: it is not part of the record's content, equality or JSON."""
        return self.__dict__.get("_stored_sha256")


def _defaults(cls: type) -> dict[str, Any]:
    """Field name -> a function giving its default, for the fields of dataclass ``cls`` that have one."""
    found: dict[str, Any] = {}
    for f in fields(cls):
        if f.default is not MISSING:
            found[f.name] = lambda value=f.default: value
        elif f.default_factory is not MISSING:
            found[f.name] = f.default_factory
    return found


_RECORD_FIELDS = frozenset(f.name for f in fields(BuildRecord))
_RECORD_DEFAULTS = _defaults(BuildRecord)
_RECORD_REQUIRED = _RECORD_FIELDS - set(_RECORD_DEFAULTS)
_ARTIFACT_FIELDS = frozenset(f.name for f in fields(Artifact))
_ARTIFACT_DEFAULTS = _defaults(Artifact)
_ARTIFACT_REQUIRED = _ARTIFACT_FIELDS - set(_ARTIFACT_DEFAULTS)


def _artifact(data: dict[str, Any]) -> Artifact:
    """``Artifact(**data)``, built directly when ``data`` has exactly its fields (else the constructor raises)."""
    if type(data) is not dict or not (_ARTIFACT_REQUIRED <= data.keys() <= _ARTIFACT_FIELDS):
        return Artifact(**data)
    artifact = object.__new__(Artifact)
    artifact.__dict__.update({name: make() for name, make in _ARTIFACT_DEFAULTS.items() if name not in data})
    artifact.__dict__.update(data)
    return artifact


class Store(ABC):
    """Put/get blobs by digest; put records if absent; look records up by key, recipe or commit."""

    url: str

    @abstractmethod
    def put_file(self, path: Path, *, sha256: str | None = None) -> Artifact:
        """Store a file's bytes; returns its digest and size (name is the file's name). ``sha256``: the file's
        digest when the caller has it (computed while writing the file), so the store can read the file once; a
        digest that is not the file's stores nothing and raises E-STORE-CORRUPT."""

    @abstractmethod
    def put_bytes(self, data: bytes) -> str: ...

    @abstractmethod
    def has_blob(self, digest: str) -> bool: ...

    @abstractmethod
    def open_blob(self, digest: str) -> BinaryIO:
        """A reader of the blob. Prefer :meth:`fetch_blob`, which verifies the digest."""

    @abstractmethod
    def fetch_blob(self, digest: str, dest: Path) -> None:
        """Copy a blob to ``dest`` atomically, verifying its digest; raises on a corrupt blob."""

    @abstractmethod
    def get_bytes(self, digest: str) -> bytes: ...

    @abstractmethod
    def put_record(self, record: BuildRecord) -> bool:
        """Publish a record if none exists for its key. False if one did (the old one stays)."""

    @abstractmethod
    def get_record(self, build_key: str) -> BuildRecord | None: ...

    def get_records(self, build_keys: Iterable[str]) -> dict[str, BuildRecord | None]:
        """The records of these keys (None where there is none): one call for a whole level of a plan, which a
        store with per-request latency answers concurrently."""
        return {k: self.get_record(k) for k in dict.fromkeys(build_keys)}

    @abstractmethod
    def keys_present(self, build_keys: Iterable[str]) -> set[str]:
        """Which of these keys have records (one call for a whole plan)."""

    @abstractmethod
    def records_for_recipe(self, name: str) -> list[BuildRecord]: ...

    @abstractmethod
    def records_for_commit(self, commit: str) -> list[BuildRecord]: ...

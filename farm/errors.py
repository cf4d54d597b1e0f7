"""User-facing errors.

Every error a user can meet carries a stable id (for docs, scripts and support) and a hint that says how to fix
it. The CLI prints ``error[ID]: where: message`` plus the hint and exits non-zero; tracebacks appear only with
``--debug``. Anything that is not a :class:`FarmError` reaching the CLI is a bug in the farm.

Ids come in families that callers catch by class, never by parsing the id: :class:`RecipeError`,
:class:`StoreError` and :class:`TrustError`. A family's constructor refuses an id outside its ``ids``; an id of a
family is raised through that family's class (a unit test scans the tree for it), and :meth:`FarmError.of` picks
the class for an id that is only known at run time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar


class FarmError(Exception):
    """A failure the user can act on."""

    exit_code = 2
    ids: ClassVar[frozenset[str] | None] = None
    """The ids this class may carry; None for any id (the base class and its non-family subclasses)."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        hint: str = "",
        file: Path | str | None = None,
        field: str | None = None,
    ) -> None:
        if self.ids is not None and code not in self.ids:
            raise ValueError(f"{type(self).__name__} cannot carry {code!r}: not one of its ids")
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint
        self.file = str(file) if file is not None else None
        self.field = field

    @property
    def where(self) -> str:
        parts = [p for p in (self.file, f"field '{self.field}'" if self.field else None) if p]
        return ": ".join(parts)

    def render(self) -> str:
        where = f"{self.where}: " if self.where else ""
        text = f"error[{self.code}]: {where}{self.message}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text

    def to_json(self) -> dict[str, str | None]:
        return {
            "code": self.code,
            "message": self.message,
            "hint": self.hint,
            "file": self.file,
            "field": self.field,
        }

    def __str__(self) -> str:
        return self.render()

    @staticmethod
    def of(
        code: str,
        message: str,
        *,
        hint: str = "",
        file: Path | str | None = None,
        field: str | None = None,
    ) -> FarmError:
        """An error for ``code`` of its family's class (plain :class:`FarmError` for an id of no family)."""
        for family in FAMILIES:
            if family.ids is not None and code in family.ids:
                return family(code, message, hint=hint, file=file, field=field)
        return FarmError(code, message, hint=hint, file=file, field=field)


class ErrorGroup(FarmError):
    """Several independent problems found in one pass (for example every bad recipe in a directory).

    Reporting them all at once saves the user a fix-rerun loop per mistake.
    """

    def __init__(self, errors: Iterable[FarmError]) -> None:
        self.errors = list(errors)
        first = self.errors[0]
        super().__init__(first.code, f"{len(self.errors)} problem(s) found", hint=first.hint, file=first.file)

    def render(self) -> str:
        return "\n".join(e.render() for e in self.errors)


@dataclass(frozen=True)
class ErrorCodes:
    """The stable ids. Kept in one place so docs and tests can enumerate them."""

    RECIPE_SYNTAX = "E-RECIPE-SYNTAX"
    RECIPE_UNKNOWN_KEY = "E-RECIPE-UNKNOWN-KEY"
    RECIPE_MISSING = "E-RECIPE-MISSING-FIELD"
    RECIPE_TYPE = "E-RECIPE-TYPE"
    RECIPE_VALUE = "E-RECIPE-VALUE"
    RECIPE_COMMIT = "E-RECIPE-COMMIT"
    RECIPE_OUTPUT_PATH = "E-RECIPE-OUTPUT-PATH"
    RECIPE_DUPLICATE = "E-RECIPE-DUPLICATE"
    RECIPE_UNKNOWN_DEP = "E-RECIPE-UNKNOWN-DEPENDENCY"
    RECIPE_CYCLE = "E-RECIPE-CYCLE"
    RECIPE_DIR = "E-RECIPE-DIR"
    RECIPE_PATCH = "E-RECIPE-PATCH"
    SOURCE_FETCH = "E-SOURCE-FETCH"
    SOURCE_COMMIT = "E-SOURCE-NO-COMMIT"
    SOURCE_REF = "E-SOURCE-REF-MISMATCH"
    DSC_UNKNOWN = "E-DSC-UNKNOWN"
    DSC_CHECKSUM = "E-DSC-CHECKSUM"
    SOURCE_UNAVAILABLE = "E-SOURCE-UNAVAILABLE"
    SOURCE_UNINDEXED = "E-SOURCE-UNINDEXED"
    COMMAND = "E-COMMAND-FAILED"
    TOOL_MISSING = "E-TOOL-MISSING"
    STORE_CORRUPT = "E-STORE-CORRUPT"
    STORE_MISSING = "E-STORE-MISSING"
    STORE_URL = "E-STORE-URL"
    STORE_UNREACHABLE = "E-STORE-UNREACHABLE"
    KEY_MISSING = "E-KEY-MISSING"
    KEY_EXISTS = "E-KEY-EXISTS"
    KEY_INVALID = "E-KEY-INVALID"
    VERIFY_DIGEST = "E-VERIFY-DIGEST"
    VERIFY_SIGNATURE = "E-VERIFY-SIGNATURE"
    VERIFY_UNTRUSTED = "E-VERIFY-UNTRUSTED-KEY"
    VERIFY_ENVELOPE = "E-VERIFY-ENVELOPE"
    VERIFY_NO_ENVELOPE = "E-VERIFY-NO-ENVELOPE"
    VERIFY_NOT_SUBJECT = "E-VERIFY-NOT-A-SUBJECT"
    BUILD_FAILED = "E-BUILD-FAILED"
    BUILD_OUTPUT = "E-BUILD-OUTPUT"
    WORKER = "E-WORKER"
    WORKER_SUBIDS = "E-WORKER-SUBIDS"
    WORKER_CAPABILITY = "E-WORKER-CAPABILITY"
    SETTINGS = "E-SETTINGS"
    FETCH_NOTHING = "E-FETCH-NOTHING"
    STATE_UNREACHABLE = "E-STATE-UNREACHABLE"
    STATE_VERSION = "E-STATE-VERSION"
    COORDINATOR_BUSY = "E-COORDINATOR-BUSY"
    RUN_UNKNOWN = "E-RUN-UNKNOWN"
    STATUS_QUERY = "E-STATUS-QUERY"
    BUILD_UNKNOWN = "E-BUILD-UNKNOWN"
    FETCH_AMBIGUOUS = "E-FETCH-AMBIGUOUS"
    WEB_NOT_FOUND = "E-WEB-NOT-FOUND"
    WEB_REQUEST = "E-WEB-BAD-REQUEST"
    ENV_SPEC = "E-ENV-SPEC"
    ENV_UNKNOWN = "E-ENV-UNKNOWN"
    ENV_BUILD = "E-ENV-BUILD"
    ARCHIVE_UNKNOWN = "E-ARCHIVE-UNKNOWN"
    ARCHIVE_CHECKSUM = "E-ARCHIVE-CHECKSUM"
    ARCHIVE_UNSATISFIABLE = "E-ARCHIVE-UNSATISFIABLE"
    ADMISSION_REFUSED = "E-ADMISSION-REFUSED"
    PEERS_CONFIG = "E-PEERS-CONFIG"
    LOG_INVALID = "E-LOG-INVALID"
    LOG_INCONSISTENT = "E-LOG-INCONSISTENT"
    LOG_FETCH = "E-LOG-FETCH"
    BUNDLE_INVALID = "E-BUNDLE-INVALID"
    RECHECK = "E-RECHECK"
    STAGE0_MISSING = "E-STAGE0-MISSING"
    LEASE_STALE = "E-LEASE-STALE"
    LEASE_EXPIRED = "E-LEASE-EXPIRED"
    IMAGE_INPUT = "E-IMAGE-INPUT"
    IMAGE_BUILD = "E-IMAGE-BUILD"
    IMAGE_ROOTLESS = "E-IMAGE-ROOTLESS"
    IMAGE_VERIFY = "E-IMAGE-VERIFY"
    IMAGE_TRACE = "E-IMAGE-TRACE"
    IMAGE_BOOT = "E-IMAGE-BOOT"
    IMAGE_LOCK = "E-IMAGE-LOCK"
    IMAGE_DOWNGRADE = "E-IMAGE-DOWNGRADE"
    IMAGE_COVERAGE = "E-IMAGE-COVERAGE"
    RELEASE_EXISTS = "E-RELEASE-EXISTS"
    CHANNEL_INVALID = "E-CHANNEL-INVALID"
    CHANNEL_UNTRUSTED = "E-CHANNEL-UNTRUSTED"
    STREAM_CORRUPT = "E-STREAM-CORRUPT"
    STREAM_INCOMPLETE = "E-STREAM-INCOMPLETE"
    RELEASE_KEY = "E-RELEASE-KEY"
    KEY_REVOKED = "E-KEY-REVOKED"
    TASK_UNSIGNED = "E-TASK-UNSIGNED"
    TASK_REPLAYED = "E-TASK-REPLAYED"
    ARTIFACT_REFUSED = "E-ARTIFACT-REFUSED"
    RESULT_REFUSED = "E-RESULT-REFUSED"
    SANDBOX_LIMIT = "E-SANDBOX-LIMIT"
    AUDIT = "E-AUDIT"
    INTERNAL = "E-INTERNAL"


E = ErrorCodes()


class RecipeError(FarmError):
    """A recipe (or the recipe directory) is unreadable, malformed or inconsistent: the user's input is wrong."""

    ids = frozenset(
        {
            E.RECIPE_SYNTAX,
            E.RECIPE_UNKNOWN_KEY,
            E.RECIPE_MISSING,
            E.RECIPE_TYPE,
            E.RECIPE_VALUE,
            E.RECIPE_COMMIT,
            E.RECIPE_OUTPUT_PATH,
            E.RECIPE_DUPLICATE,
            E.RECIPE_UNKNOWN_DEP,
            E.RECIPE_CYCLE,
            E.RECIPE_DIR,
            E.RECIPE_PATCH,
        }
    )


class StoreError(FarmError):
    """The artifact store is unreachable, misnamed, or lacks or mangles what it should hold."""

    ids = frozenset({E.STORE_CORRUPT, E.STORE_MISSING, E.STORE_URL, E.STORE_UNREACHABLE})


class TrustError(FarmError):
    """A trust decision refused something (a signature, key, task, artifact or result), or trust material
    (keys, release keys, the audit log) is missing or malformed."""

    ids = frozenset(
        {
            E.KEY_MISSING,
            E.KEY_EXISTS,
            E.KEY_INVALID,
            E.KEY_REVOKED,
            E.RELEASE_KEY,
            E.CHANNEL_UNTRUSTED,
            E.VERIFY_DIGEST,
            E.VERIFY_SIGNATURE,
            E.VERIFY_UNTRUSTED,
            E.VERIFY_ENVELOPE,
            E.VERIFY_NO_ENVELOPE,
            E.VERIFY_NOT_SUBJECT,
            E.TASK_UNSIGNED,
            E.TASK_REPLAYED,
            E.ARTIFACT_REFUSED,
            E.RESULT_REFUSED,
            E.AUDIT,
        }
    )


FAMILIES: tuple[type[FarmError], ...] = (RecipeError, StoreError, TrustError)
"""The error families; their ``ids`` are disjoint (a unit test checks)."""

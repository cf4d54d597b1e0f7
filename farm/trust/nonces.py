"""The nonce ledger: a signed task message is accepted once, by one worker, however often it is delivered.

Every signed task (:mod:`farm.trust.tasksig`) carries a random nonce. A worker that accepts a task records the
nonce in the fleet's shared state (the coordinator's state store) with one ``SET key value NX PX ttl``: atomic
across workers, so of two workers handed the same message exactly one records it and goes on. A message whose
nonce is recorded already is refused (``E-TASK-REPLAYED``) before its lease is looked at, whatever task id it
carries. A nonce is kept :data:`NONCE_TTL`, a little longer than a message is accepted at all (``MAX_AGE`` plus the
clock skew allowed on either side), so a replay outlives neither. Where the state store cannot answer, the task is
refused (``E-STATE-UNREACHABLE``): whether it was delivered before cannot be told (fail closed).

The broker delivering a message a second time (its worker died before acknowledging it) looks exactly like a
replay and is refused the same way; the coordinator re-dispatches that build under a new lease and a new nonce
when the lease expires.
"""

from __future__ import annotations

import json
import re
import time
from typing import Protocol

from farm.errors import E, FarmError, TrustError
from farm.trust.tasksig import CLOCK_SKEW, MAX_AGE

PREFIX = "mangos:nonce:"
NONCE_TTL = MAX_AGE + 2 * CLOCK_SKEW
_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]+@")  # in a URL quoted by the store's error: never echoed


class StateStore(Protocol):
    """What the ledger needs of a key-value store (``farm.coordinator.kv.KV`` offers it, on SQLite and Redis)."""

    def set(self, key: str, value: bytes, *, ttl: float | None = None, only_if_absent: bool = False) -> bool: ...

    def get(self, key: str) -> bytes | None: ...


class Nonces:
    """The ledger on ``kv`` (a :class:`~farm.trust.tasksig.NonceLedger`)."""

    def __init__(self, kv: StateStore) -> None:
        self.kv = kv

    def spend(self, nonce: str, *, task_id: str, who: str) -> None:
        """Record that ``who`` accepts the task with ``nonce``; E-TASK-REPLAYED if it was accepted before."""
        first = json.dumps({"task": task_id, "worker": who, "at": int(time.time())}, sort_keys=True).encode()
        try:
            fresh = self.kv.set(PREFIX + nonce, first, ttl=NONCE_TTL, only_if_absent=True)
        except Exception as exc:  # any failure to answer (unreachable, locked, a broken file) refuses the task
            detail = _PASSWORD.sub(r"\1***@", exc.message if isinstance(exc, FarmError) else repr(exc))
            raise FarmError(
                E.STATE_UNREACHABLE,
                f"task refused: cannot check that it was not delivered before ({detail})",
                hint="workers accept a task only after recording its nonce in the coordinator state "
                "(MANGOS_FARM_STATE, or the broker's Redis): make it reachable; the coordinator re-dispatches",
            ) from None
        if not fresh:
            raise TrustError(
                E.TASK_REPLAYED,
                f"task refused: its message was accepted before{self._earlier(nonce)} (a replay)",
                hint="someone with access to the broker re-sent a captured task message; see 'mangos-farm audit' "
                "and who can write to the broker (its ACL user and password)",
            )

    def _earlier(self, nonce: str) -> str:
        """Who accepted it first, for the message (best effort: the refusal stands without it)."""
        try:
            raw = self.kv.get(PREFIX + nonce)
            seen = json.loads(raw) if raw else None
        except Exception:
            return ""
        if not isinstance(seen, dict):
            return ""
        return f" as task {str(seen.get('task'))[:64]} by {str(seen.get('worker'))[:64]}"

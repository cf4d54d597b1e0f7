"""Signed task messages: the coordinator signs what it asks a worker to build; the worker checks before anything.

Anyone who can reach the broker can put a message on a build queue, so a worker builds only what the coordinator's
Ed25519 key signed: canonical bytes over the task id, the whole build request (recipe, source, dependencies,
lease), the time it was issued and a nonce. Workers hold only the public half (``keys/coordinator.pub``). A
message that was forged, altered, replayed under another task id or is older than :data:`MAX_AGE` is refused.
A genuine message delivered again under its own id is refused by the nonce ledger (:class:`NonceLedger`,
:mod:`farm.trust.nonces` on the fleet's state store): each nonce is accepted once. The build's lease, claimable
only while that build is queued or running, is a second line behind it.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Mapping
from typing import Any, Protocol

from farm.errors import E, FarmError, TrustError
from farm.trust.keys import BuilderKey, PublicKey

DOMAIN = b"mangos-farm task v1\n"
MAX_AGE = 7 * 24 * 3600  # a queued build may wait this long for a slot (full rebuilds on a small fleet)
CLOCK_SKEW = 300


class NonceLedger(Protocol):
    """Where the nonces of accepted messages are recorded, shared by every worker (:mod:`farm.trust.nonces`)."""

    def spend(self, nonce: str, *, task_id: str, who: str) -> None:
        """Record the nonce as accepted by ``who``, atomically; raise E-TASK-REPLAYED if it was already, a
        FarmError if that cannot be told."""


def canonical(task_id: str, request: Mapping[str, Any], issued: int, nonce: str) -> bytes:
    body = {"task": task_id, "request": request, "issued": issued, "nonce": nonce}
    return DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(task_id: str, request: Mapping[str, Any], key: BuilderKey, now: float | None = None) -> dict[str, Any]:
    issued = int(time.time() if now is None else now)
    nonce = secrets.token_hex(16)
    sig = key.sign(canonical(task_id, request, issued, nonce))
    return {"keyid": key.public.keyid, "issued": issued, "nonce": nonce, "sig": base64.b64encode(sig).decode()}


def _refused(why: str) -> FarmError:
    return TrustError(
        E.TASK_UNSIGNED,
        f"task refused: {why}",
        hint="only the coordinator (holder of keys/coordinator.key) can get builds run; check who wrote to the broker",
    )


def verify(
    task_id: str,
    request: Any,
    signature: Any,
    coordinator: PublicKey,
    now: float | None = None,
    *,
    nonces: NonceLedger | None = None,
    who: str = "",
) -> None:
    """Raise E-TASK-UNSIGNED unless ``signature`` is the coordinator's over exactly this task. With ``nonces``, a
    message that passes is then recorded there as accepted by ``who``: E-TASK-REPLAYED if it was before."""
    if not isinstance(signature, Mapping):
        raise _refused("the message carries no signature")
    if not isinstance(request, Mapping):
        raise _refused("the request is not an object")
    try:
        issued = int(signature["issued"])
        nonce = str(signature["nonce"])
        sig = base64.b64decode(str(signature["sig"]), validate=True)
    except (KeyError, TypeError, ValueError) as exc:
        raise _refused(f"malformed signature ({exc})") from None
    try:
        message = canonical(task_id, request, issued, nonce)
    except (TypeError, ValueError) as exc:
        raise _refused(f"the request cannot be canonicalised ({exc})") from None
    if not coordinator.verify(sig, message):
        raise _refused("the signature is not the coordinator's over this task (forged or altered)")
    age = (time.time() if now is None else now) - issued
    if age > MAX_AGE or age < -CLOCK_SKEW:
        raise _refused(f"the message was issued {int(age)}s ago, outside the accepted window")
    if nonces is not None:
        nonces.spend(nonce, task_id=task_id, who=who)

"""The audit log: an append-only JSON-lines record of security events, with who, what and when.

Refused results, refused artifacts, forged, unsigned or replayed tasks, uses of revoked keys, key trust and
revocation, and sandbox limit hits are each written as one line to ``$MANGOS_FARM_HOME/audit.jsonl`` and counted in
``mangos_security_events_total{event}``. One ``write`` of one line on an ``O_APPEND`` descriptor: concurrent
writers (worker children, the coordinator) never interleave within a line, and nothing is ever rewritten.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from farm import metrics
from farm.errors import E, TrustError

log = logging.getLogger(__name__)

AUDIT_NAME = "audit.jsonl"

# Event names (the metric's label values; keep the set small and stable).
FORGED_TASK = "forged_task"
REPLAYED_TASK = "replayed_task"
REFUSED_RESULT = "refused_result"
REFUSED_ARTIFACT = "refused_artifact"
REVOKED_KEY_USED = "revoked_key_used"
SANDBOX_LIMIT = "sandbox_limit"
KEY_REVOKED = "key_revoked"
KEY_TRUSTED = "key_trusted"
EVENTS = (
    FORGED_TASK,
    REPLAYED_TASK,
    REFUSED_RESULT,
    REFUSED_ARTIFACT,
    REVOKED_KEY_USED,
    SANDBOX_LIMIT,
    KEY_REVOKED,
    KEY_TRUSTED,
)


def audit_path(home: Path) -> Path:
    return home / AUDIT_NAME


def record(path: Path | None, event: str, *, who: str = "", what: str = "", **details: Any) -> dict[str, Any]:
    """Append one event (also counted and logged). ``path`` None: counted and logged only (no home known)."""
    entry: dict[str, Any] = {
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "event": event,
        "who": who,
        "what": what,
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    entry.update({k: v for k, v in details.items() if v is not None})
    metrics.security_events.labels(event).inc()
    level = logging.INFO if event in (KEY_TRUSTED, KEY_REVOKED) else logging.WARNING  # operator actions: quiet
    log.log(level, "security event %s: %s (%s)", event, what, who)
    if path is not None:
        line = (json.dumps(entry, sort_keys=True, default=str) + "\n").encode()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    return entry


def read(path: Path) -> Iterator[dict[str, Any]]:
    """Every event in order. A damaged line is an error naming its line number (the log is evidence)."""
    if not path.is_file():
        return
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw)
            except ValueError as exc:
                raise TrustError(
                    E.AUDIT,
                    f"line {n} of the audit log is not JSON: {exc}",
                    file=path,
                    hint="the log was edited or truncated by hand; keep a copy and investigate",
                ) from None
            if not isinstance(entry, dict) or "event" not in entry:
                raise TrustError(E.AUDIT, f"line {n} of the audit log is not an event", file=path, hint="investigate")
            yield entry

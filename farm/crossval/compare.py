"""Compare this organization's attestation log with its peers': who agrees, per inputs key, on the outputs.

A peer's log is fetched, its head signature and chain checked, every entry's provenance verified with the peer's
key, and the log checked to extend the one fetched last time (whose head, and a copy of the log, are kept under
``$MANGOS_FARM_HOME/crossval/peers/NAME/``). A peer that serves a shorter or rewritten history is reported as
inconsistent, and what it serves now is not used.

Exit codes follow diffoscope: 0 all agree, 1 a disagreement (or a peer whose log is invalid or inconsistent),
2 undecided: a peer that could not be fetched, or (when nothing disagrees) a peer missing an entry this
organization logged.

Read-only (auditor) mode, ``read_only=True``: this organization's log is read as it was last synced and verified
with its public key, never synced (syncing signs, which needs the builder's private key); peers' heads are checked
against those remembered before but nothing is remembered. Nothing under the home is written.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from farm.crossval import remote
from farm.crossval.log import ENTRIES, HEAD, Entry, Head, InputsKey, check_consistent, comparable, read_verified
from farm.crossval.peers import SELF, Peer, load_peers
from farm.crossval.publish import log_dir, sync
from farm.errors import E, FarmError
from farm.fsutil import atomic_write
from farm.settings import Settings
from farm.trust.keys import PRIVATE_NAME, PUBLIC_NAME, load_public

log = logging.getLogger(__name__)

AGREE, DISAGREE, MISSING = "agree", "disagree", "missing"
OK, INVALID, INCONSISTENT, UNREACHABLE = "ok", "invalid", "inconsistent", "unreachable"


def seen_dir(settings: Settings, peer: str) -> Path:
    return settings.home / "crossval" / "peers" / peer


@dataclass
class PeerLog:
    name: str
    status: str
    entries: dict[InputsKey, Entry] = field(default_factory=dict)
    size: int = 0
    error: FarmError | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "entries": self.size,
            "error": self.error.to_json() if self.error else None,
        }


def _first_by_key(entries: Sequence[Entry]) -> dict[InputsKey, Entry]:
    found: dict[InputsKey, Entry] = {}
    for e in entries:
        found.setdefault(e.key, e)
    return found


def auditing(settings: Settings) -> bool:
    """No builder private key in this home: an auditor's machine, which reads and verifies but never writes."""
    return not (settings.keys_dir / PRIVATE_NAME).exists()


def fetch_peer(settings: Settings, peer: Peer, *, remember: bool = True) -> PeerLog:
    """Fetch and verify a peer's log; remember its head when it is valid and extends the one seen before (unless
    ``remember`` is False: then a head seen before is still checked, but nothing is written)."""
    source = f"{peer.name} ({peer.log})"
    try:
        entries_data = remote.read(peer.log, ENTRIES)
        head_data = remote.read(peer.log, HEAD)
    except FarmError as exc:
        return PeerLog(peer.name, UNREACHABLE, error=exc)
    try:
        entries, head = read_verified(entries_data, head_data, peer.key, source)
    except FarmError as exc:
        return PeerLog(peer.name, INVALID, error=exc)
    memory = seen_dir(settings, peer.name)
    seen_path = memory / "seen.json"
    if seen_path.exists():
        seen = json.loads(seen_path.read_text())
        try:
            check_consistent(entries, Head(int(seen["size"]), str(seen["head"])), source)
        except FarmError as exc:
            return PeerLog(peer.name, INCONSISTENT, error=exc)
    if not remember:
        return PeerLog(peer.name, OK, _first_by_key(entries), len(entries))
    atomic_write(memory / ENTRIES, entries_data)
    atomic_write(memory / HEAD, head_data)
    atomic_write(seen_path, json.dumps({"size": head.size, "head": head.head, "keyid": peer.key.keyid}).encode())
    return PeerLog(peer.name, OK, _first_by_key(entries), len(entries))


def own_log(settings: Settings, *, read_only: bool = False) -> PeerLog:
    """This organization's log: synced from the store and re-signed, or (``read_only``) as last synced, verified
    with its public key (empty when it never synced or has no public key)."""
    if not read_only:
        own = sync(settings)
        return PeerLog(SELF, OK, own.by_key(), len(own.entries))
    root, public = log_dir(settings), settings.keys_dir / PUBLIC_NAME
    if not (root / HEAD).exists() or not public.exists():
        return PeerLog(SELF, OK)
    entries_data = (root / ENTRIES).read_bytes() if (root / ENTRIES).exists() else b""
    entries, _ = read_verified(entries_data, (root / HEAD).read_bytes(), load_public(public), str(root))
    return PeerLog(SELF, OK, _first_by_key(entries), len(entries))


def compare(settings: Settings, peers: Sequence[Peer], *, read_only: bool = False) -> dict[str, Any]:
    """The full report: per inputs key, each peer's verdict against this organization's outputs, and totals."""
    mine = own_log(settings, read_only=read_only)
    theirs = [fetch_peer(settings, p, remember=not read_only) for p in peers]
    keys = sorted(set(mine.entries).union(*(set(p.entries) for p in theirs)))
    rows: list[dict[str, Any]] = []
    totals = {AGREE: 0, DISAGREE: 0, MISSING: 0}
    lacking = 0  # entries this organization logged that a peer lacks
    for key in keys:
        own = mine.entries.get(key)
        any_entry = own or next(p.entries[key] for p in theirs if key in p.entries)
        results: dict[str, Any] = {}
        for p in theirs:
            if p.status != OK:
                continue
            entry = p.entries.get(key)
            if own is None or entry is None:
                verdict = MISSING
            elif comparable(entry.outputs) == comparable(own.outputs):
                verdict = AGREE
            else:
                verdict = DISAGREE
            totals[verdict] += 1
            lacking += int(own is not None and entry is None)
            results[p.name] = {"status": verdict, "outputs": entry.outputs if entry else None}
        rows.append(
            {
                "key": key.to_json(),
                "recipe": any_entry.recipe,
                "version": any_entry.version,
                "self": own.outputs if own else None,
                "peers": results,
            }
        )
    bad_peer = any(p.status in (INVALID, INCONSISTENT) for p in theirs)
    unreachable = any(p.status == UNREACHABLE for p in theirs)
    code = 2 if unreachable else 1 if totals[DISAGREE] or bad_peer else 2 if lacking else 0
    return {
        "self": {"entries": mine.size},
        "peers": {p.name: p.to_json() for p in theirs},
        "keys": rows,
        "totals": totals,
        "disagreements": [
            {"recipe": r["recipe"], "organization": name, "self": r["self"], "theirs": v["outputs"], "key": r["key"]}
            for r in rows
            for name, v in r["peers"].items()
            if v["status"] == DISAGREE
        ],
        "read_only": read_only,
        "exit": code,
    }


def check_trust_file(trust: Path) -> list[Peer]:
    if not trust.exists():
        raise FarmError(E.PEERS_CONFIG, "no such peers file", file=trust, hint="pass --trust PATH/peers.toml")
    return load_peers(trust)

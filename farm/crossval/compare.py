"""Compare this organization's attestation log with its peers': who agrees, per inputs key, on the outputs.

A peer's log is fetched, its head signature and chain checked, every entry's provenance verified with the peer's
key, and the log checked to extend the one fetched last time (whose head, and a copy of the log, are kept under
``$MANGOS_FARM_HOME/crossval/peers/NAME/``). A peer that serves a shorter or rewritten history is reported as
inconsistent, and what it serves now is not used.

Exit codes follow diffoscope: 0 all agree, 1 a disagreement (or a peer whose log is invalid or inconsistent),
2 an error (a peer that could not be fetched).
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
from farm.crossval.publish import sync
from farm.errors import E, FarmError
from farm.fsutil import atomic_write
from farm.settings import Settings

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


def fetch_peer(settings: Settings, peer: Peer) -> PeerLog:
    """Fetch and verify a peer's log; remember its head when it is valid and extends the one seen before."""
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
    atomic_write(memory / ENTRIES, entries_data)
    atomic_write(memory / HEAD, head_data)
    atomic_write(seen_path, json.dumps({"size": head.size, "head": head.head, "keyid": peer.key.keyid}).encode())
    return PeerLog(peer.name, OK, _first_by_key(entries), len(entries))


def own_log(settings: Settings) -> PeerLog:
    own = sync(settings)
    return PeerLog(SELF, OK, own.by_key(), len(own.entries))


def compare(settings: Settings, peers: Sequence[Peer]) -> dict[str, Any]:
    """The full report: per inputs key, each peer's verdict against this organization's outputs, and totals."""
    mine = own_log(settings)
    theirs = [fetch_peer(settings, p) for p in peers]
    keys = sorted(set(mine.entries).union(*(set(p.entries) for p in theirs)))
    rows: list[dict[str, Any]] = []
    totals = {AGREE: 0, DISAGREE: 0, MISSING: 0}
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
    code = 2 if unreachable else 1 if totals[DISAGREE] or bad_peer else 0
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
        "exit": code,
    }


def check_trust_file(trust: Path) -> list[Peer]:
    if not trust.exists():
        raise FarmError(E.PEERS_CONFIG, "no such peers file", file=trust, hint="pass --trust PATH/peers.toml")
    return load_peers(trust)

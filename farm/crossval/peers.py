"""``peers.toml``: the organizations this one trusts to cross-validate its builds.

::

    [peers.acme]
    key = "keys/acme.pem"          # its builder public key (PEM); relative to peers.toml
    log = "https://acme.example/farm-log/"   # a directory, an http(s) URL or an s3:// URL

Every problem is reported at once, each with the file, the field and the fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from farm.errors import E, ErrorGroup, FarmError
from farm.tomlfile import load_toml
from farm.trust.keys import PublicKey, load_public

NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]*")
SELF = "self"


@dataclass(frozen=True)
class Peer:
    name: str
    key: PublicKey
    log: str  # a directory path, http(s):// or s3:// URL


def _resolve_log(value: str, base: Path) -> str:
    if value.startswith(("http://", "https://", "s3://")):
        return value
    if value.startswith("file://"):
        value = value[len("file://") :]
    path = Path(value)
    return str(path if path.is_absolute() else (base / path))


def load_peers(path: Path) -> list[Peer]:
    data = load_toml(path, E.PEERS_CONFIG, what="peers file", hint="fix the syntax", read_hint="check the --trust path")
    errors: list[FarmError] = []
    unknown = sorted(set(data) - {"peers"})
    for k in unknown:
        errors.append(FarmError(E.PEERS_CONFIG, "unknown top-level key", file=path, field=k, hint="remove it"))
    peers_table = data.get("peers", {})
    if not isinstance(peers_table, dict):
        raise FarmError(
            E.PEERS_CONFIG, "'peers' must be a table of [peers.NAME]", file=path, field="peers", hint="see the docs"
        )
    peers: list[Peer] = []
    for name, table in sorted(peers_table.items()):
        peer = _peer(path, name, table, errors)
        if peer is not None:
            peers.append(peer)
    if errors:
        raise errors[0] if len(errors) == 1 else ErrorGroup(errors)
    return peers


def _peer(path: Path, name: str, table: object, errors: list[FarmError]) -> Peer | None:
    """One ``[peers.NAME]`` table; its problems are appended to ``errors``."""
    where = f"peers.{name}"
    if not NAME_RE.fullmatch(name) or name == SELF:
        errors.append(
            FarmError(
                E.PEERS_CONFIG,
                f"'{name}' is not a usable organization name",
                file=path,
                field=where,
                hint="use lowercase letters, digits, '-' and '_' ('self' is reserved for this organization)",
            )
        )
        return None
    if not isinstance(table, dict):
        errors.append(FarmError(E.PEERS_CONFIG, "must be a table", file=path, field=where, hint="[peers.NAME]"))
        return None
    for extra in sorted(set(table) - {"key", "log"}):
        errors.append(
            FarmError(E.PEERS_CONFIG, "unknown key", file=path, field=f"{where}.{extra}", hint="only key and log")
        )
    missing = False
    for req, hint in (
        ("key", "the path of its PEM public key ('mangos-farm keys export-public' on its side)"),
        ("log", "a directory, an http(s):// or an s3:// URL where it publishes its log"),
    ):
        if not isinstance(table.get(req), str) or not table.get(req):
            message = f"'{req}' is missing or not a string"
            errors.append(FarmError(E.PEERS_CONFIG, message, file=path, field=f"{where}.{req}", hint=hint))
            missing = True
    if missing:
        return None
    key_path = Path(table["key"])
    if not key_path.is_absolute():
        key_path = path.parent / key_path
    try:
        key = load_public(key_path)
    except FarmError as exc:
        errors.append(
            FarmError(E.PEERS_CONFIG, exc.message, file=path, field=f"{where}.key", hint=exc.hint or "fix the path")
        )
        return None
    return Peer(name, key, _resolve_log(table["log"], path.parent))

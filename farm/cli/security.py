"""CLI commands for fleet security: builder keyring, revocation, audit log (issue #8).

mangos-farm keys trust PEM                 add a builder public key to the keyring
mangos-farm keys revoke KEYID --reason R   revoke a builder key: what it signed is refused from now on
mangos-farm keys list [--json]             the keyring: trusted and revoked keys
mangos-farm audit [--json] [--event E]     the security audit log
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import Any

from farm.settings import Settings
from farm.trust import audit, keyring


def _out(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def cmd_keys_trust(args: argparse.Namespace, settings: Settings) -> int:
    key = keyring.trust(settings.keys_dir, settings.trusted_keys_dir, Path(args.pem))
    audit.record(audit.audit_path(settings.home), audit.KEY_TRUSTED, who=_who(), what=key.keyid, source=str(args.pem))
    print(f"trusted builder key {key.keyid} ({settings.trusted_keys_dir / (key.keyid[:16] + '.pem')})")
    return 0


def cmd_keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    rev = keyring.revoke(settings.keys_dir, args.keyid, args.reason, by=_who())
    audit.record(audit.audit_path(settings.home), audit.KEY_REVOKED, who=rev.by, what=rev.keyid, reason=rev.reason)
    print(f"revoked builder key {rev.keyid} at {rev.time}: {rev.reason}")
    print("everything it signed is refused from now on (fetch, verify, dependencies, results, images)")
    return 0


def cmd_keys_list(args: argparse.Namespace, settings: Settings) -> int:
    rows = keyring.listing(settings.keys_dir, settings.trusted_keys_dir)
    if args.json:
        _out(rows)
        return 0
    for r in rows:
        state = f"REVOKED {r['revoked']['time']}: {r['revoked']['reason']}" if "revoked" in r else "trusted"
        print(f"{r['keyid']}  {'own ' if r['own'] else ''}{state}  {r['source']}")
    if not rows:
        print("no builder keys (run 'mangos-farm keys generate', or 'keys trust PEM')")
    return 0


def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    entries = [e for e in audit.read(audit.audit_path(settings.home)) if not args.event or e["event"] == args.event]
    if args.json:
        _out(entries)
        return 0
    for e in entries:
        extra = e.get("message") or e.get("reason") or e.get("detail") or ""
        print(f"{e.get('time', '')}  {e['event']:<17} {e.get('who', '')}: {e.get('what', '')}  {extra}".rstrip())
    if not entries:
        print("no security events recorded", file=sys.stderr)
    return 0


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def register(sub: Any, groups: dict[str, Any]) -> None:
    """Add this module's commands to the ``mangos-farm`` parser."""
    from farm.cli.main import json_flag

    keys = groups["keys"]

    def add(parent: Any, name: str, handler: Any, help: str) -> argparse.ArgumentParser:
        sp: argparse.ArgumentParser = parent.add_parser(name, help=help, description=help)
        sp.set_defaults(handler=handler)
        return sp

    sp = add(keys, "trust", cmd_keys_trust, "add a builder public key (PEM) to this organization's keyring")
    sp.add_argument("pem", help="the builder's public key, as 'keys export-public' writes it")
    sp = add(keys, "revoke", cmd_keys_revoke, "revoke a builder key: everything it signed is refused from now on")
    sp.add_argument("keyid", help="the key id (sha256 of the public key), see 'keys list'")
    sp.add_argument("--reason", required=True, help="why (recorded with the revocation and in the audit log)")
    sp = add(keys, "list", cmd_keys_list, "the builder keyring: trusted and revoked keys")
    json_flag(sp)
    sp = add(sub, "audit", cmd_audit, "the security audit log: refused tasks, results and artifacts, limits hit")
    sp.add_argument("--event", choices=audit.EVENTS, help="only this kind of event")
    json_flag(sp)

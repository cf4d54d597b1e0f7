"""``audit``: the security audit log (refused tasks, results and artifacts, limits hit, keys trusted and revoked)."""

from __future__ import annotations

import argparse
import sys

from farm.cli.common import Subparsers, add_command, json_flag, print_json
from farm.settings import Settings
from farm.trust import audit


def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    entries = [e for e in audit.read(audit.audit_path(settings.home)) if not args.event or e["event"] == args.event]
    if args.json:
        print_json(entries)
        return 0
    for e in entries:
        extra = e.get("message") or e.get("reason") or e.get("detail") or ""
        print(f"{e.get('time', '')}  {e['event']:<17} {e.get('who', '')}: {e.get('what', '')}  {extra}".rstrip())
    if not entries:
        print("no security events recorded", file=sys.stderr)
    return 0


def add_audit(sub: Subparsers) -> None:
    sp = add_command(
        sub, "audit", cmd_audit, "the security audit log: refused tasks, results and artifacts, limits hit"
    )
    sp.add_argument("--event", choices=audit.EVENTS, help="only this kind of event")
    json_flag(sp)


COMMANDS = {"audit": add_audit}

"""``admission check``: would an image lock's farm packages be admitted with K agreeing organizations? Counted from
published attestation logs and public keys alone; without a builder private key in the home (an auditor's
machine) nothing is written. Exit 0 all admitted, 1 a package refused (an organization attests another digest),
2 a package missing attestations (or a problem)."""

from __future__ import annotations

import argparse
from pathlib import Path

from farm.cli.common import Subparsers, add_command, add_group, json_flag, print_json
from farm.settings import Settings


def cmd_admission_check(args: argparse.Namespace, settings: Settings) -> int:
    from farm.crossval.admission import Locked, check_lock
    from farm.crossval.compare import auditing
    from farm.image import lock as image_lock

    locked = image_lock.load(Path(args.lock))
    packages = [
        Locked(p.name, p.version, p.arch, p.sha256, p.recipe, p.commit)
        for p in sorted({*locked.packages, *locked.profile_packages})
        if p.origin == image_lock.FARM
    ]
    read_only = auditing(settings)
    report = check_lock(
        packages, require=args.require_agreement, trust=Path(args.trust), settings=settings, read_only=read_only
    )
    if args.json:
        print_json(report)
        return int(report["exit"])
    for peer, why in sorted(report["unusable"].items()):
        print(f"peer {peer}: not counted ({why})")
    for row in report["packages"]:
        agree = ", ".join(row["agree"]) or "-"
        line = f"{row['status']:<9} {row['name']} {row['version']} ({row['recipe']}) agree: {agree}"
        if row["disagree"]:
            line += "; disagree: " + ", ".join(f"{d['organization']} {d['sha256'][:16]}" for d in row["disagree"])
        if row["missing"]:
            line += "; missing: " + ", ".join(row["missing"])
        print(line)
    admitted = sum(1 for row in report["packages"] if row["status"] == "admitted")
    print(
        f"{admitted} of {len(report['packages'])} farm package(s) admitted with {report['require']} agreeing "
        f"(organizations: {', '.join(report['organizations']) or 'none'})"
    )
    if read_only:
        print("(read-only: no builder key here; nothing written)")
    return int(report["exit"])


def add_admission(sub: Subparsers) -> None:
    group = add_group(sub, "admission", "check admission policies from published attestations", "admission_command")
    sp = add_command(
        group,
        "check",
        cmd_admission_check,
        "count the organizations attesting each farm package of an image lock (0 admitted, 1 refused, 2 missing)",
    )
    sp.add_argument("lock", help="the image lock (image.lock, from 'mangos-farm image lock')")
    sp.add_argument("--trust", required=True, help="peers.toml: [peers.NAME] key = PEM, log = DIR|URL")
    sp.add_argument(
        "--require-agreement", type=int, default=1, metavar="K", help="organizations that must agree (default 1)"
    )
    json_flag(sp)


COMMANDS = {"admission": add_admission}

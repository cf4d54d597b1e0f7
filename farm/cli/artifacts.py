"""``fetch`` and ``verify``: built artifacts out of the store, and checked against their signed provenance."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from farm.cli.common import Subparsers, add_command, json_flag, print_json, trusted_keys
from farm.errors import E, FarmError, TrustError
from farm.settings import Settings


def cmd_fetch(args: argparse.Namespace, settings: Settings) -> int:
    from farm.store import open_store
    from farm.trust.fetch import fetch_records, records_for

    store = open_store(settings.store_url)
    records = records_for(store, args.commit, args.recipe)
    if args.build_key:
        records = [r for r in records if r.build_key == args.build_key]
        if not records:
            raise FarmError(
                E.FETCH_NOTHING,
                f"no build with key {args.build_key} from commit {args.commit} in {store.url}",
                field="--build-key",
                hint="take the key from 'mangos-farm plan --json' (build_key), or build it first",
            )
    if args.output is None:
        rows = [
            {
                "recipe": r.recipe,
                "version": r.version,
                "build_key": r.build_key,
                "artifact": a.name,
                "sha256": a.digest,
                "size": a.size,
            }
            for r in records
            for a in r.artifacts
        ]
        if args.json:
            print_json(rows)
        else:
            for row in rows:
                print(f"{row['recipe']} {row['version']}  {row['artifact']}  {row['sha256']}  {row['size']} bytes")
        return 0
    fetched = fetch_records(store, records, Path(args.output), trusted_keys(settings, args.key))
    if args.json:
        print_json([f.to_json() for f in fetched])
    else:
        for f in fetched:
            print(f"fetched {f.path} (sha256 {f.digest[:16]}..., {f.recipe} @ {f.commit[:12]}, verified)")
    return 0


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    from farm.trust.verify import expand, verify_file

    trusted = trusted_keys(settings, args.key)
    failures: list[FarmError] = []
    ok = []
    for path in expand([Path(p) for p in args.paths]):
        try:
            ok.append(verify_file(path, trusted))
        except FarmError as exc:
            failures.append(exc)
    if args.json:
        print_json({"ok": [v.to_json() for v in ok], "failed": [f.to_json() for f in failures]})
    else:
        for v in ok:
            print(f"OK     {v.path}  {v.recipe} @ {v.commit[:12]}  signed by {v.keyid[:16]}... ({v.builder})")
        for f in failures:
            print(f"FAILED {f.render()}", file=sys.stderr)
    if not ok and not failures:
        raise TrustError(E.VERIFY_DIGEST, "no artifacts found in the given paths", hint="pass files or directories")
    return 1 if failures else 0


def add_fetch(sub: Subparsers) -> None:
    sp = add_command(sub, "fetch", cmd_fetch, "artifacts built from a source commit")
    sp.add_argument("--commit", required=True, help="full 40-hex source commit")
    sp.add_argument("--recipe", help="only this recipe's artifacts")
    sp.add_argument(
        "--build-key", help="only the build with this key (a commit built with other inputs, e.g. certificates)"
    )
    sp.add_argument("-o", "--output", help="write artifacts and NAME.intoto.json envelopes here (verified)")
    sp.add_argument("--key", action="append", help="extra trusted builder public key (PEM); repeatable")
    json_flag(sp)


def add_verify(sub: Subparsers) -> None:
    sp = add_command(sub, "verify", cmd_verify, "check artifacts against their signed provenance")
    sp.add_argument("paths", nargs="+", help="artifact files or directories of them")
    sp.add_argument("--key", action="append", help="trusted builder public key (PEM); repeatable")
    json_flag(sp)


COMMANDS = {"fetch": add_fetch, "verify": add_verify}

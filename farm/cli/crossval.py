"""``publish``, ``compare``, ``bundle``, ``rebuild-bundle``: cross-validation of builds, by comparing signed
attestations with trusted peers and by rebuilding them offline at another organization (``recheck``, the rebuild
here or on another worker in a varied environment, is :mod:`farm.cli.recheck`)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from farm.cli.common import Subparsers, add_command, json_flag, print_json
from farm.settings import Settings


def worker_context(settings: Settings, variation: Any = None, keys: list[str] | None = None) -> Any:
    """A worker context in this process, exactly as a worker builds it."""
    from farm.build.context import WorkerContext

    return WorkerContext.from_settings(settings, variation=variation, extra_keys=[Path(k) for k in keys or []])


def plan_of(recipes_dir: str, settings: Settings) -> Any:
    from farm.coordinator.planning import plan_recipes

    plan, _ = plan_recipes(Path(recipes_dir), settings)
    return plan


def cmd_publish(args: argparse.Namespace, settings: Settings) -> int:
    from farm.crossval.publish import publish

    own = publish(settings, args.output)
    if args.json:
        print_json({"entries": len(own.entries), "destination": args.output})
    else:
        print(f"published {len(own.entries)} attestation(s) to {args.output}")
    return 0


def cmd_compare(args: argparse.Namespace, settings: Settings) -> int:
    from farm.crossval.compare import auditing, check_trust_file, compare

    read_only = auditing(settings)  # no builder private key here: read and verify only, write nothing
    report = compare(settings, check_trust_file(Path(args.trust)), read_only=read_only)
    if args.json:
        print_json(report)
        return int(report["exit"])
    for name, peer in report["peers"].items():
        line = f"peer {name}: {peer['status']}, {peer['entries']} entries"
        if peer["error"]:
            line += f" -- error[{peer['error']['code']}]: {peer['error']['message']}"
        print(line)
    for row in report["keys"]:
        for name, verdict in sorted(row["peers"].items()):
            if verdict["status"] == "agree":
                continue
            detail = ""
            if verdict["status"] == "disagree":
                pairs = sorted(set(row["self"]) | set(verdict["outputs"]))
                detail = "; ".join(
                    f"{a}: ours {row['self'].get(a, '-')[:16]} theirs {verdict['outputs'].get(a, '-')[:16]}"
                    for a in pairs
                    if row["self"].get(a) != verdict["outputs"].get(a)
                )
            print(f"{verdict['status']:<9} {row['recipe']} {row['version']} [{name}] {detail}".rstrip())
    t = report["totals"]
    print(f"{t['agree']} agree, {t['disagree']} disagree, {t['missing']} missing")
    if read_only:
        print("(read-only: no builder key here; this organization's log as last synced, nothing written)")
    return int(report["exit"])


def cmd_bundle(args: argparse.Namespace, settings: Settings) -> int:
    from farm.crossval.bundle import make_bundle
    from farm.crossval.recheck import requests_from_plan
    from farm.sources.git import SourceCache
    from farm.store import open_store

    plan = plan_of(args.dir, settings)
    [(req, record)] = requests_from_plan(plan, [args.recipe])
    manifest = make_bundle(
        req,
        record,
        store=open_store(settings.store_url),
        sources=SourceCache(Path(settings.cache_dir) / "git"),
        arch=settings.build_arch,
        output=Path(args.output),
        with_env=args.with_env,
    )
    if args.json:
        print_json(manifest)
    else:
        print(f"{args.output}: {record.recipe} {record.version} at {record.commit[:12]}, {manifest['blobs']} blobs")
        for name, digest in sorted(record.outputs().items()):
            print(f"  expects {name} {digest}")
    return 0


def cmd_rebuild_bundle(args: argparse.Namespace, settings: Settings) -> int:
    from farm.crossval.bundle import rebuild_bundle

    ctx = worker_context(settings, keys=args.key)
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bundle-", dir=settings.work_dir) as tmp:
        result = rebuild_bundle(Path(args.bundle), ctx, Path(tmp))
    if args.json:
        print_json(result.to_json())
    else:
        for name in sorted(set(result.expected) | set(result.rebuilt)):
            mark = "same" if result.expected.get(name) == result.rebuilt.get(name) else "DIFFERENT"
            print(f"{mark:<9} {result.recipe}/{name} {result.rebuilt.get(name, '-')}")
        print("the rebuild gives the bundle's digests" if result.same else "the rebuild differs from the bundle")
    return 0 if result.same else 1


def add_publish(sub: Subparsers) -> None:
    sp = add_command(sub, "publish", cmd_publish, "sign and publish this organization's attestation log")
    sp.add_argument("-o", "--output", required=True, help="a directory or an s3://BUCKET/PREFIX URL")
    json_flag(sp)


def add_compare(sub: Subparsers) -> None:
    sp = add_command(
        sub,
        "compare",
        cmd_compare,
        "compare attestations with trusted peers (exit 0 agree, 1 differ, 2 error or missing); without a builder "
        "key, read-only",
    )
    sp.add_argument("--trust", required=True, help="peers.toml: [peers.NAME] key = PEM, log = DIR|URL")
    json_flag(sp)


def add_bundle(sub: Subparsers) -> None:
    sp = add_command(sub, "bundle", cmd_bundle, "write what another organization needs to rebuild a recipe offline")
    sp.add_argument("recipe", help="the recipe (it must be built)")
    sp.add_argument("-o", "--output", required=True, help="the bundle tar to write")
    sp.add_argument("--dir", default="recipes", help="the recipe directory (default: recipes)")
    sp.add_argument("--with-env", action="store_true", help="include the Debian build-environment tarball")
    json_flag(sp)


def add_rebuild_bundle(sub: Subparsers) -> None:
    sp = add_command(sub, "rebuild-bundle", cmd_rebuild_bundle, "rebuild from a bundle offline and compare its digests")
    sp.add_argument("bundle", help="a tar made by 'mangos-farm bundle'")
    sp.add_argument("--key", action="append", help="the bundling organization's builder public key (PEM); repeatable")
    json_flag(sp)


COMMANDS = {
    "publish": add_publish,
    "compare": add_compare,
    "bundle": add_bundle,
    "rebuild-bundle": add_rebuild_bundle,
}

"""CLI commands for cross-validation: `recheck`, `publish`, `compare`, `bundle`, `rebuild-bundle` (issue #7)."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from farm.settings import Settings


def _out(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def _context(settings: Settings, variation: Any = None, keys: list[str] | None = None) -> Any:
    """A worker context in this process, as a worker would build it (``workers.tasks.worker_context``)."""
    from farm.build import WorkerContext
    from farm.envs.host import host_environment
    from farm.keys import load_builder, trusted_keys
    from farm.sources.git import SourceCache
    from farm.store import open_store

    return WorkerContext(
        store=open_store(settings.store_url),
        builder_key=load_builder(settings.keys_dir),
        sources=SourceCache(Path(settings.cache_dir) / "git"),
        work_root=Path(settings.work_dir),
        builder_id=settings.builder,
        environment=host_environment(),
        timeout=float(settings.build_timeout),
        arch=settings.build_arch,
        variation=variation,
        trusted=trusted_keys(settings.keys_dir, settings.trusted_keys_dir, [Path(k) for k in keys or []]),
    )


def _plan(recipes_dir: str, settings: Settings) -> Any:
    from farm.cli.main import _planning

    plan, _ = _planning(argparse.Namespace(dir=recipes_dir, force=False), settings)
    return plan


def cmd_recheck(args: argparse.Namespace, settings: Settings) -> int:
    from farm.crossval.recheck import recheck_one, requests_from_plan, update_metrics
    from farm.crossval.variation import Variation
    from farm.errors import E, FarmError

    if not args.recipes and not args.all:
        raise FarmError(
            E.RECHECK, "name the recipes to recheck, or pass --all", hint="mangos-farm recheck --all --vary"
        )
    variation = Variation() if args.vary else Variation.unvaried()
    plan = _plan(args.dir, settings)
    ctx = _context(settings, variation)
    results = []
    for req, record in requests_from_plan(plan, [] if args.all else args.recipes):
        result = recheck_one(
            req, record, ctx, settings, max_report_size=args.max_report_size, diff_timeout=args.diffoscope_timeout
        )
        results.append(result)
        if not args.json:
            verdict = "reproducible" if result.reproducible else "NOT reproducible"
            print(f"{result.recipe:<20} {verdict if not result.error else 'FAILED to build when varied'}")
            if result.error:
                print(f"  {result.error} (build log: store blob {result.log})")
            for name in result.differing:
                print(f"  {name}: {result.outputs.get(name, '-')[:16]} != {result.varied.get(name, '-')[:16]}")
                rep = result.reports.get(name, {})
                if rep.get("text"):
                    print(f"    diffoscope: {settings.home}/crossval/recheck/{result.build_key}/{name}.diffoscope.txt")
                    print(f"    (store blobs: text {rep['text']}, html {rep.get('html', '-')})")
                if rep.get("note"):
                    print(f"    {rep['note']}")
            if result.ignored:
                print(f"  (differs by design, not compared: {', '.join(result.ignored)})")
            if result.causes and not result.reproducible:
                print(f"  likely cause: {', '.join(result.causes)}")
    table = update_metrics(settings)
    checked = [r for r in results]
    ok = sum(r.reproducible for r in checked)
    if args.json:
        _out({"results": [r.to_json() for r in checked], "reproducibility": table, "variation": variation.to_json()})
    else:
        failed = sum(1 for r in checked if r.error)
        mode = "the varied" if args.vary else "the same"
        print(
            f"{ok} of {len(checked) - failed} reproducible under {mode} environment"
            + (f"; {failed} failed to build in it" if failed else "")
        )
    return 0 if ok == len(checked) else 1


def cmd_publish(args: argparse.Namespace, settings: Settings) -> int:
    from farm.crossval.publish import publish

    own = publish(settings, args.output)
    if args.json:
        _out({"entries": len(own.entries), "destination": args.output})
    else:
        print(f"published {len(own.entries)} attestation(s) to {args.output}")
    return 0


def cmd_compare(args: argparse.Namespace, settings: Settings) -> int:
    from farm.crossval.compare import check_trust_file, compare

    report = compare(settings, check_trust_file(Path(args.trust)))
    if args.json:
        _out(report)
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
    return int(report["exit"])


def cmd_bundle(args: argparse.Namespace, settings: Settings) -> int:
    from farm.crossval.bundle import make_bundle
    from farm.crossval.recheck import requests_from_plan
    from farm.sources.git import SourceCache
    from farm.store import open_store

    plan = _plan(args.dir, settings)
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
        _out(manifest)
    else:
        print(f"{args.output}: {record.recipe} {record.version} at {record.commit[:12]}, {manifest['blobs']} blobs")
        for name, digest in sorted(record.outputs().items()):
            print(f"  expects {name} {digest}")
    return 0


def cmd_rebuild_bundle(args: argparse.Namespace, settings: Settings) -> int:
    from farm.crossval.bundle import rebuild_bundle

    ctx = _context(settings, keys=args.key)
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bundle-", dir=settings.work_dir) as tmp:
        result = rebuild_bundle(Path(args.bundle), ctx, Path(tmp))
    if args.json:
        _out(result.to_json())
    else:
        for name in sorted(set(result.expected) | set(result.rebuilt)):
            mark = "same" if result.expected.get(name) == result.rebuilt.get(name) else "DIFFERENT"
            print(f"{mark:<9} {result.recipe}/{name} {result.rebuilt.get(name, '-')}")
        print("the rebuild gives the bundle's digests" if result.same else "the rebuild differs from the bundle")
    return 0 if result.same else 1


def register(sub: Any, groups: dict[str, Any]) -> None:
    """Add this module's commands to the ``mangos-farm`` parser."""
    from farm.cli.main import _add, json_flag
    from farm.crossval.recheck import DEFAULT_DIFF_TIMEOUT, DEFAULT_MAX_REPORT

    sp = _add(sub, "recheck", cmd_recheck, "rebuild published builds in a varied environment and compare digests")
    sp.add_argument("recipes", nargs="*", help="recipe names (default: none; see --all)")
    sp.add_argument("--all", action="store_true", help="every recipe in the directory")
    sp.add_argument("--dir", default="recipes", help="the recipe directory (default: recipes)")
    sp.add_argument(
        "--vary",
        action="store_true",
        help="vary build path, hostname, TZ, locale, umask, uid, parallelism and the clock (+400 days)",
    )
    sp.add_argument("--max-report-size", type=int, default=DEFAULT_MAX_REPORT, help="diffoscope report size cap")
    sp.add_argument("--diffoscope-timeout", type=float, default=DEFAULT_DIFF_TIMEOUT, help="seconds per diffoscope")
    json_flag(sp)

    sp = _add(sub, "publish", cmd_publish, "sign and publish this organization's attestation log")
    sp.add_argument("-o", "--output", required=True, help="a directory or an s3://BUCKET/PREFIX URL")
    json_flag(sp)

    sp = _add(sub, "compare", cmd_compare, "compare attestations with trusted peers (exit 0 agree, 1 differ, 2 error)")
    sp.add_argument("--trust", required=True, help="peers.toml: [peers.NAME] key = PEM, log = DIR|URL")
    json_flag(sp)

    sp = _add(sub, "bundle", cmd_bundle, "write what another organization needs to rebuild a recipe offline")
    sp.add_argument("recipe", help="the recipe (it must be built)")
    sp.add_argument("-o", "--output", required=True, help="the bundle tar to write")
    sp.add_argument("--dir", default="recipes", help="the recipe directory (default: recipes)")
    sp.add_argument("--with-env", action="store_true", help="include the Debian build-environment tarball")
    json_flag(sp)

    sp = _add(sub, "rebuild-bundle", cmd_rebuild_bundle, "rebuild from a bundle offline and compare its digests")
    sp.add_argument("bundle", help="a tar made by 'mangos-farm bundle'")
    sp.add_argument("--key", action="append", help="the bundling organization's builder public key (PEM); repeatable")
    json_flag(sp)

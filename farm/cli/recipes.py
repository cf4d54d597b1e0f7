"""``recipes check|import`` and ``plan``: what there is to build, and what of it would build."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from farm.cli.common import (
    Subparsers,
    add_command,
    add_group,
    built_environment,
    environment_flags,
    json_flag,
    print_json,
)
from farm.settings import Settings

if TYPE_CHECKING:
    from farm.archive import Pin


def cmd_recipes_check(args: argparse.Namespace, settings: Settings) -> int:
    from farm.graph import render_tree
    from farm.recipes import check_patches, load_dir
    from farm.sources.git import SourceCache

    recipes = load_dir(Path(args.dir))
    patched = check_patches(recipes, SourceCache(settings.cache_dir / "git"))  # fetches only recipes with patches
    graph = {r.name: list(r.build_depends) for r in recipes.recipes.values()}
    bootstrap = sorted((r.name, to, version) for r in recipes.recipes.values() for to, version in r.bootstrap)
    if args.json:
        edges = [list(e) for e in bootstrap]
        print_json({"ok": True, "recipes": {n: sorted(d) for n, d in graph.items()}, "bootstrap_edges": edges})
        return 0
    for line in render_tree(graph):
        print(line)
    for origin, to, version in bootstrap:
        print(f"bootstrap {origin} -> {to}: builds against the archive's {to} {version}, not the farm's")
    print(f"{len(recipes)} recipe(s) OK in {args.dir}")
    if patched:
        print(f"{patched} patch(es) apply to their pinned sources")
    return 0


def cmd_recipes_import(args: argparse.Namespace, settings: Settings) -> int:
    from farm.archive import import_recipes
    from farm.errors import E, FarmError

    if args.image:
        return import_image_sources(args, settings)
    if args.profile or not args.packages:
        raise FarmError(
            E.IMAGE_INPUT if args.profile else E.DSC_UNKNOWN,
            "--profile goes with --image" if args.profile else "nothing to import",
            hint="name source packages (NAME[=VERSION]), or import every source behind the image with --image",
        )
    record, store = built_environment(args, settings)
    start = time.monotonic()
    report = import_recipes(
        args.packages,
        Path(args.dir),
        env_name=record.name,
        env_digest=record.digest,
        store=store,
        cache_dir=settings.cache_dir,
        arch=str(record.spec.get("architecture") or "") or None,
    )
    if args.json:
        print_json(
            {
                "ok": report.ok,
                "environment": record.digest,
                "recipes": [i.to_json() for i in report.imported],
                "failed": [f.to_json() for f in report.failed],
            }
        )
        return 0 if report.ok else 1
    for i in report.imported:
        deps = f", build-depends {', '.join(i.build_depends)}" if i.build_depends else ""
        print(f"wrote {i.path}: {i.name} {i.version} @ {i.commit[:12]}, {len(i.pins)} archive pin(s){deps}")
        if i.older_than_candidate:
            print(f"  note: {i.name} {i.version} is older than the archive's candidate {i.candidate} (asked for)")
    for f in report.failed:
        print(f"{f.status}: {f.name} {f.version}: no recipe written\n{f.error.render()}", file=sys.stderr)
    took = f"{time.monotonic() - start:.1f}s (environment {record.digest[:12]})"
    failed = f", {len(report.failed)} failed" if report.failed else ""
    print(f"{len(report.imported)} recipe(s) imported{failed} in {took}")
    return 0 if report.ok else 1


def image_pins(profile: str, work: Path) -> list[Pin]:
    """The image's packages as ``image lock`` resolves them: the Essential set, the base packages and the boot
    payload on an empty system, and with ``profile`` that profile's sysext packages on top."""
    from farm.archive import resolve_install
    from farm.image import inputs, payload

    names = inputs.profile_names(profile) if profile else ()
    requested = inputs.requested_packages((), tuple(payload.PACKAGES))
    pins = set(resolve_install(requested, work))
    if names:
        pins |= set(resolve_install([*requested, *names], work))
    return sorted(pins)


def import_image_sources(args: argparse.Namespace, settings: Settings) -> int:
    """``recipes import --image``: a recipe (or a reason) for every source package behind the image's packages."""
    import tempfile

    from farm import graph
    from farm.archive import UNAVAILABLE_FILE, import_image
    from farm.errors import E, FarmError

    if args.packages:
        raise FarmError(
            E.IMAGE_INPUT,
            f"--image imports every source behind the image; it takes no names ({' '.join(args.packages)})",
            hint="drop the names, or drop --image to import just those",
        )
    record, store = built_environment(args, settings)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mangos-image-pins-") as tmp:
        pins = image_pins(args.profile or "", Path(tmp))
    out = Path(args.dir)
    report = import_image(
        pins, out, env_name=record.name, env_digest=record.digest, store=store, cache_dir=settings.cache_dir,
        split=graph.bootstrap_split, reuse_from=Path(args.reuse) if args.reuse else out.resolve().parent,
    )  # fmt: skip
    if args.json:
        print_json(
            {
                "ok": report.ok,
                "environment": record.digest,
                "binaries": len(pins),
                "counts": report.counts,
                "packages": [o.to_json() for o in report.outcomes],
                "bootstrap_edges": [list(e) for e in report.bootstrap_edges],
                "unavailable_file": str(out / UNAVAILABLE_FILE),
            }
        )
        return 0 if report.ok else 1
    for o in report.outcomes:
        last = o.attempts[-1] if o.attempts else None
        where = f"  {last.url} ({last.status})" if last else ""
        print(f"{o.status:<11} {o.name} {o.version}{where}")
        if o.status not in ("imported", "kept"):
            print(f"            {o.reason}")
    for origin, to, version in report.bootstrap_edges:
        print(f"bootstrap {origin} -> {to}: builds against the archive's {to} {version}, not the farm's")
    counts = ", ".join(f"{n} {status}" for status, n in report.counts.items())
    print(
        f"{len(report.outcomes)} source(s) behind {len(pins)} package(s): {counts} in {time.monotonic() - start:.0f}s"
    )
    if not report.ok:
        print(f"the sources that could not be had, with the reason: {out / UNAVAILABLE_FILE}")
    return 0 if report.ok else 1


def cmd_recipes_update(args: argparse.Namespace, settings: Settings) -> int:
    from farm.cli.updates import recipes_update

    return recipes_update(args, settings)


def cmd_plan(args: argparse.Namespace, settings: Settings) -> int:
    from farm.coordinator.planning import plan_recipes

    plan, _ = plan_recipes(Path(args.dir), settings, force=args.force)
    if args.json:
        print_json(plan.to_json())
        return 0
    width = max(len(n) for n in plan.order)
    for name in plan.order:
        b = plan.builds[name]
        key = b.key[:12] if b.key else "?" * 12
        print(f"{b.decision.value:<6} {name:<{width}} {key}  {b.reason}")
    for origin, to, version in plan.bootstrap_edges:
        print(f"bootstrap {origin} -> {to}: builds against the archive's {to} {version}, not the farm's")
    s = plan.to_json()["summary"]
    env = plan.environment.digest[:12]
    print(f"{s['total']} recipe(s): {s['cached']} cached, {s['build']} to build (environment {env})")
    return 0


def add_recipes(sub: Subparsers) -> None:
    recipes = add_group(sub, "recipes", "work with recipes", "recipes_cmd")
    sp = add_command(recipes, "check", cmd_recipes_check, "validate recipes and print the dependency graph")
    sp.add_argument("dir", nargs="?", default="recipes")
    json_flag(sp)
    sp = add_command(
        recipes, "import", cmd_recipes_import, "write recipes for Debian source packages, build-depends pinned"
    )
    sp.add_argument("packages", nargs="*", metavar="NAME[=VERSION]", help="source packages (default: candidate)")
    sp.add_argument("--dir", default="recipes", help="write NAME.toml here (default recipes/)")
    sp.add_argument("--image", action="store_true", help="every source package behind the image's packages")
    sp.add_argument("--profile", choices=["docker"], help="with --image: also the sources of this profile's sysext")
    sp.add_argument(
        "--reuse", metavar="DIR", help="with --image: link the recipes this tree already has (default: --dir's parent)"
    )
    environment_flags(sp)
    json_flag(sp)
    sp = add_command(
        recipes,
        "update",
        cmd_recipes_update,
        "re-import the Debian recipes the archive has moved past (security first); --queue rebuilds them",
    )
    sp.add_argument("--dir", default="recipes", help="the recipes directory (default recipes/)")
    sp.add_argument("--queue", action="store_true", help="rebuild what changed and its dependents on the security lane")
    environment_flags(sp)
    json_flag(sp)


def add_plan(sub: Subparsers) -> None:
    sp = add_command(sub, "plan", cmd_plan, "what would build, in what order, what is cached and why")
    sp.add_argument("dir", nargs="?", default="recipes")
    sp.add_argument("--force", action="store_true", help="plan as if nothing were cached")
    json_flag(sp)


COMMANDS = {"recipes": add_recipes, "plan": add_plan}

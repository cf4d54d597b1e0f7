"""mangos-farm: plan, build, fetch and verify from-source builds with signed provenance."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from farm import keys as keymod
from farm.errors import E, ErrorGroup, FarmError
from farm.log import configure
from farm.settings import Settings, describe

log = logging.getLogger(__name__)

Handler = Callable[[argparse.Namespace, Settings], int]


def _out(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


# -- recipes / plan --------------------------------------------------------------------------------------------
def cmd_recipes_check(args: argparse.Namespace, settings: Settings) -> int:
    from farm.graph import render_tree
    from farm.recipes import load_dir

    recipes = load_dir(Path(args.dir))
    graph = {r.name: list(r.build_depends) for r in recipes.recipes.values()}
    if args.json:
        _out({"ok": True, "recipes": {n: sorted(d) for n, d in graph.items()}})
        return 0
    for line in render_tree(graph):
        print(line)
    print(f"{len(recipes)} recipe(s) OK in {args.dir}")
    return 0


def _planning(args: argparse.Namespace, settings: Settings) -> Any:
    from farm.coordinator.plan import make_plan
    from farm.envs.host import host_environment
    from farm.recipes import load_dir
    from farm.sources.git import SourceCache
    from farm.sources.resolved import ResolvedCommits
    from farm.store import open_store

    recipes = load_dir(Path(args.dir))
    store = open_store(settings.store_url)
    resolved = ResolvedCommits(SourceCache(settings.cache_dir / "git"))
    try:
        plan = make_plan(
            recipes,
            store,
            lambda r: resolved.resolve(r.git_location, r.source.commit, r.source.ref, origin=str(r.path)),
            host_environment(),
            force=getattr(args, "force", False),
        )
    finally:
        resolved.save()
    return plan, store


def cmd_plan(args: argparse.Namespace, settings: Settings) -> int:
    plan, _ = _planning(args, settings)
    if args.json:
        _out(plan.to_json())
        return 0
    width = max(len(n) for n in plan.order)
    for name in plan.order:
        b = plan.builds[name]
        key = b.key[:12] if b.key else "?" * 12
        print(f"{b.decision.value:<6} {name:<{width}} {key}  {b.reason}")
    s = plan.to_json()["summary"]
    env = plan.environment.digest[:12]
    print(f"{s['total']} recipe(s): {s['cached']} cached, {s['build']} to build (environment {env})")
    return 0


def cmd_rebuild(args: argparse.Namespace, settings: Settings) -> int:
    from farm.cli.progress import Progress
    from farm.coordinator.scheduler import State, run_plan

    keymod.load_builder(settings.keys_dir)  # fail now, not in every worker, if there is no key
    plan, store = _planning(args, settings)
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    run_dir = settings.runs_dir / run_id
    progress = Progress(len(plan.order), quiet_cached=not args.verbose)
    dispatchers: list[Any] = []

    def factory() -> Any:
        from workers.local import EmbeddedDispatcher

        if not settings.embedded_broker:
            from workers.app import make_app
            from workers.dispatch import CeleryDispatcher

            return CeleryDispatcher(make_app(settings))
        d = EmbeddedDispatcher(settings, run_dir / "workers.log")
        dispatchers.append(d)
        return d

    try:
        result = run_plan(plan, store, factory, force=args.force, on_change=progress)
    finally:
        progress.close()
        for d in dispatchers:
            d.close()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "result.json").write_text(json.dumps(result.to_json(), indent=1, sort_keys=True))
    if args.json:
        _out(result.to_json() | {"run": run_id})
    else:
        print(
            f"run {run_id}: {result.count(State.BUILT)} built, {result.count(State.CACHED)} cached, "
            f"{result.count(State.FAILED)} failed, {result.count(State.BLOCKED)} blocked "
            f"in {result.seconds:.1f}s"
        )
        for b in result.builds.values():
            if b.state is State.FAILED and b.outcome is not None:
                err = FarmError(
                    **{k: v for k, v in (b.outcome.error or {}).items() if k != "code"},
                    code=(b.outcome.error or {}).get("code", E.BUILD_FAILED),
                )
                print(f"\n--- {b.planned.name} failed: {err.render()}")
                if b.outcome.log_digest:
                    print(f"    full log: blob {b.outcome.log_digest}")
                print("    log tail:\n" + "\n".join("    | " + ln for ln in b.outcome.log_tail.splitlines()[-25:]))
            elif b.state is State.BLOCKED:
                print(f"--- {b.planned.name} not built: {b.why}")
    return 0 if result.ok else 1


# -- artifacts -------------------------------------------------------------------------------------------------
def _trusted(args: argparse.Namespace, settings: Settings) -> list[keymod.PublicKey]:
    return keymod.trusted_keys(settings.keys_dir, settings.trusted_keys_dir, [Path(k) for k in args.key or []])


def cmd_fetch(args: argparse.Namespace, settings: Settings) -> int:
    from farm.fetch import fetch_records, records_for
    from farm.store import open_store

    store = open_store(settings.store_url)
    records = records_for(store, args.commit, args.recipe)
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
            _out(rows)
        else:
            for row in rows:
                print(f"{row['recipe']} {row['version']}  {row['artifact']}  {row['sha256']}  {row['size']} bytes")
        return 0
    fetched = fetch_records(store, records, Path(args.output), _trusted(args, settings))
    if args.json:
        _out([f.to_json() for f in fetched])
    else:
        for f in fetched:
            print(f"fetched {f.path} (sha256 {f.digest[:16]}..., {f.recipe} @ {f.commit[:12]}, verified)")
    return 0


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    from farm.verify import expand, verify_file

    trusted = _trusted(args, settings)
    failures: list[FarmError] = []
    ok = []
    for path in expand([Path(p) for p in args.paths]):
        try:
            ok.append(verify_file(path, trusted))
        except FarmError as exc:
            failures.append(exc)
    if args.json:
        _out({"ok": [v.to_json() for v in ok], "failed": [f.to_json() for f in failures]})
    else:
        for v in ok:
            print(f"OK     {v.path}  {v.recipe} @ {v.commit[:12]}  signed by {v.keyid[:16]}... ({v.builder})")
        for f in failures:
            print(f"FAILED {f.render()}", file=sys.stderr)
    if not ok and not failures:
        raise FarmError(E.VERIFY_DIGEST, "no artifacts found in the given paths", hint="pass files or directories")
    return 1 if failures else 0


# -- keys / config / worker ------------------------------------------------------------------------------------
def cmd_keys_generate(args: argparse.Namespace, settings: Settings) -> int:
    if args.if_missing and (settings.keys_dir / keymod.PRIVATE_NAME).exists():
        key = keymod.load_builder(settings.keys_dir)
        print(f"builder key {key.public.keyid} already in {settings.keys_dir}")
        return 0
    key = keymod.generate(settings.keys_dir, force=args.force)
    print(f"builder key {key.public.keyid} written to {settings.keys_dir}/{keymod.PRIVATE_NAME} (mode 0600)")
    print(f"public key: {settings.keys_dir}/{keymod.PUBLIC_NAME}  (share it: mangos-farm keys export-public)")
    return 0


def cmd_keys_export(args: argparse.Namespace, settings: Settings) -> int:
    pub = keymod.load_builder(settings.keys_dir).public
    if args.output:
        Path(args.output).write_bytes(pub.pem())
    else:
        sys.stdout.write(pub.pem().decode())
    return 0


def cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    rows = [r | {"value": str(getattr(settings, r["name"]))} for r in describe()]
    if args.json:
        _out(rows)
    else:
        for r in rows:
            print(f"{r['env']:<28} {r['value']:<30} {r['help']}")
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    import os

    from workers.local import worker_argv

    argv = worker_argv(args.concurrency or settings.workers, args.name or "worker@%h")
    os.environ.update(settings.to_env())
    os.execv(argv[0], argv)  # noqa: S606 - replaces this process with the Celery worker, argv is a list


# -- parser ----------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mangos-farm", description=__doc__)
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.add_argument("-v", "--verbose", action="store_true", help="log each step")
    p.add_argument("--home", help="state directory (env MANGOS_FARM_HOME, default ./.mangos)")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, handler: Handler, help: str, parent: Any = sub) -> argparse.ArgumentParser:
        sp: argparse.ArgumentParser = parent.add_parser(name, help=help, description=help)
        sp.set_defaults(handler=handler)
        return sp

    def json_flag(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--json", action="store_true", help="machine-readable output")

    recipes = sub.add_parser("recipes", help="work with recipes").add_subparsers(dest="recipes_cmd", required=True)
    sp = add("check", cmd_recipes_check, "validate recipes and print the dependency graph", recipes)
    sp.add_argument("dir", nargs="?", default="recipes")
    json_flag(sp)

    sp = add("plan", cmd_plan, "what would build, in what order, what is cached and why")
    sp.add_argument("dir", nargs="?", default="recipes")
    sp.add_argument("--force", action="store_true", help="plan as if nothing were cached")
    json_flag(sp)

    sp = add("rebuild", cmd_rebuild, "build everything not already built, in dependency order")
    sp.add_argument("dir", nargs="?", default="recipes")
    sp.add_argument("--force", action="store_true", help="rebuild even what is cached")
    sp.add_argument("--workers", type=int, help="local build processes (env MANGOS_FARM_WORKERS)")
    json_flag(sp)

    sp = add("fetch", cmd_fetch, "artifacts built from a source commit")
    sp.add_argument("--commit", required=True, help="full 40-hex source commit")
    sp.add_argument("--recipe", help="only this recipe's artifacts")
    sp.add_argument("-o", "--output", help="write artifacts and NAME.intoto.json envelopes here (verified)")
    sp.add_argument("--key", action="append", help="extra trusted builder public key (PEM); repeatable")
    json_flag(sp)

    sp = add("verify", cmd_verify, "check artifacts against their signed provenance")
    sp.add_argument("paths", nargs="+", help="artifact files or directories of them")
    sp.add_argument("--key", action="append", help="trusted builder public key (PEM); repeatable")
    json_flag(sp)

    keys = sub.add_parser("keys", help="builder keys").add_subparsers(dest="keys_cmd", required=True)
    sp = add("generate", cmd_keys_generate, "create this organization's builder key pair", keys)
    sp.add_argument("--force", action="store_true", help="replace an existing key")
    sp.add_argument("--if-missing", action="store_true", help="keep an existing key instead of failing")
    sp = add("export-public", cmd_keys_export, "print the builder public key as PEM (SubjectPublicKeyInfo)", keys)
    sp.add_argument("-o", "--output", help="write to this file instead of stdout")

    sp = add("config", cmd_config, "show every setting, its variable and value")
    json_flag(sp)

    sp = add("worker", cmd_worker, "run a Celery build worker in the foreground (distributed farms)")
    sp.add_argument("--concurrency", type=int, help="parallel builds")
    sp.add_argument("--name", help="worker name (default worker@HOSTNAME)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure(verbose=args.verbose, debug=args.debug)
    try:
        overrides: dict[str, Any] = {"home": Path(args.home) if args.home else None}
        if getattr(args, "workers", None):
            overrides["workers"] = args.workers
        settings = Settings.from_env(**overrides)
        rc: int = args.handler(args, settings)
        return rc
    except ErrorGroup as exc:
        if args.debug:
            raise
        print(exc.render(), file=sys.stderr)
        print(f"{len(exc.errors)} problem(s); nothing was changed", file=sys.stderr)
        return exc.exit_code
    except FarmError as exc:
        if args.debug:
            raise
        print(exc.render(), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug in the farm: say so plainly, keep the traceback for --debug
        if args.debug:
            raise
        print(
            f"error[E-INTERNAL]: {type(exc).__name__}: {exc}\n"
            "  hint: this is a bug in mangos-farm; rerun with --debug for the traceback and report it",
            file=sys.stderr,
        )
        return 70


if __name__ == "__main__":
    sys.exit(main())

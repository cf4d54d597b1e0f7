"""mangos-farm: plan, build, fetch and verify from-source builds with signed provenance."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from farm.errors import E, ErrorGroup, FarmError
from farm.log import configure
from farm.settings import Settings, describe, redact
from farm.trust import keys as keymod

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


def cmd_recipes_import(args: argparse.Namespace, settings: Settings) -> int:
    from farm.archive import import_recipes
    from farm.envs.debian import find_spec, load_records
    from farm.store import open_store

    records = {r.name: r for r in load_records(settings.home / "envs")}
    record = records.get(args.env)
    if record is None:
        find_spec(args.env, Path(args.envs))  # an unknown name fails here, with the list of definitions
        raise FarmError(
            E.ENV_UNKNOWN,
            f"the build environment '{args.env}' has not been built on this machine",
            file=settings.home / "envs" / f"{args.env}.json",
            hint=f"make it first: mangos-farm env build {args.env} --envs {args.envs}",
        )
    store = open_store(settings.store_url)
    if not store.has_blob(record.digest):
        raise FarmError(
            E.STORE_MISSING,
            f"the tarball of environment '{args.env}' (sha256 {record.digest}) is not in the store {store.url}",
            hint=f"rebuild it: mangos-farm env build {args.env} --envs {args.envs}",
        )
    start = time.monotonic()
    imported = import_recipes(
        args.packages,
        Path(args.dir),
        env_name=record.name,
        env_digest=record.digest,
        store=store,
        cache_dir=settings.cache_dir,
    )
    if args.json:
        _out({"environment": record.digest, "recipes": [i.to_json() for i in imported]})
        return 0
    for i in imported:
        deps = f", build-depends {', '.join(i.build_depends)}" if i.build_depends else ""
        print(f"wrote {i.path}: {i.name} {i.version} @ {i.commit[:12]}, {len(i.pins)} archive pin(s){deps}")
    print(f"{len(imported)} recipe(s) imported in {time.monotonic() - start:.1f}s (environment {record.digest[:12]})")
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
            env_for=lambda r: _debian_environment(r, settings, store),
        )
    finally:
        resolved.save()
    return plan, store


def _debian_environment(recipe: Any, settings: Settings, store: Any) -> str:
    """The digest of a debian recipe's pinned environment; it and the recipe's pinned packages must be in the store."""
    from farm.envs.debian import load_records

    records = {r.name: r for r in load_records(settings.home / "envs")}
    record = records.get(recipe.environment)
    if record is None or not store.has_blob(record.digest):
        raise FarmError(
            E.ENV_UNKNOWN,
            f"the build environment '{recipe.environment}' has not been made (or is not in {store.url})",
            file=recipe.path,
            field="build.environment",
            hint=f"make it: mangos-farm env build {recipe.environment}",
        )
    missing = [p for p in recipe.pins() if not store.has_blob(p["sha256"])]
    if missing:
        from farm.archive import Pin, ensure_pins

        ensure_pins([Pin.from_dict(p) for p in missing], store)
    return str(record.digest)


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


# -- build environments ----------------------------------------------------------------------------------------
def cmd_env_build(args: argparse.Namespace, settings: Settings) -> int:
    from farm.envs.debian import build_env, find_spec
    from farm.store import open_store

    spec = find_spec(args.name, Path(args.envs))
    store = open_store(settings.store_url)
    if args.if_missing:
        from farm.envs.debian import load_records

        made = [r for r in load_records(settings.home / "envs") if r.name == spec.name and store.has_blob(r.digest)]
        if made:
            print(f"environment {spec.name}: sha256 {made[0].digest} (already made; --if-missing)")
            return 0
    record = build_env(spec, store, settings.work_dir / "envs", records_dir=settings.home / "envs")
    if args.json:
        _out(record.to_json() | {"package_count": len(record.packages)})
        return 0
    print(f"environment {record.name}: sha256 {record.digest}")
    print(
        f"  {len(record.packages)} packages, {record.size / 1e6:.1f} MB, made in {record.seconds:.1f}s "
        f"({spec.distribution} {spec.suite} {spec.architecture}, {spec.variant})"
    )
    print(f"  record: blob {record.record} and {settings.home / 'envs' / (record.name + '.json')}")
    return 0


def cmd_env_list(args: argparse.Namespace, settings: Settings) -> int:
    from farm.envs.debian import load_records

    records = load_records(settings.home / "envs")
    if args.json:
        _out([r.to_json() | {"package_count": len(r.packages)} for r in records])
        return 0
    if not records:
        print("no environments built yet (make one with 'mangos-farm env build bookworm-amd64')")
    for r in records:
        where = f"{r.spec.get('distribution')} {r.spec.get('suite')} {r.spec.get('architecture')}"
        print(f"{r.name}  {r.digest}  {len(r.packages)} packages  {r.size / 1e6:.1f} MB  ({where})")
    return 0


@dataclass
class _Fleet:
    """The coordinator plus the local workers it may have started (embedded), so the CLI can stop them."""

    coordinator: Any
    worker_log: Path
    dispatchers: list[Any] = field(default_factory=list)

    def close(self) -> None:
        for d in self.dispatchers:
            d.close()


def _coordinator(settings: Settings, store: Any, on_change: Any = None) -> _Fleet:
    """The coordinator with the dispatcher this deployment uses: local workers on the embedded broker (started
    only once something must be built), or the fleet's Celery workers."""
    from farm.coordinator.engine import Config, Coordinator
    from farm.coordinator.kv import open_kv

    def factory() -> Any:
        if settings.embedded_broker:
            from workers.local import EmbeddedDispatcher

            d = EmbeddedDispatcher(settings, fleet.worker_log)
            fleet.dispatchers.append(d)
            return d
        from workers.app import make_app
        from workers.dispatch import CeleryDispatcher

        return CeleryDispatcher(make_app(settings))

    config = Config(
        lease_timeout=settings.lease_timeout,
        requeue_after=settings.requeue_after,
        max_attempts=settings.max_attempts,
        aging=settings.aging,
        trusted=lambda: keymod.trusted_keys(settings.keys_dir, settings.trusted_keys_dir),
        audit_log=settings.home / "audit.jsonl",
    )
    coordinator = Coordinator(
        open_kv(settings.state_url), store, factory, config, on_change, lazy_workers=settings.embedded_broker
    )
    fleet = _Fleet(coordinator, settings.runs_dir / "workers.log")
    return fleet


def _print_summary(status: dict[str, Any]) -> None:
    s = status["summary"]
    print(
        f"run {status['run']}: {s['built']} built, {s['cached']} cached, {s['failed']} failed, "
        f"{s['blocked']} blocked" + (f", {s['cancelled']} cancelled" if s["cancelled"] else "")
    )
    for b in status["builds"]:
        if b["state"] == "failed":
            err = b.get("error") or {}
            print(f"\n--- {b['recipe']} failed: error[{err.get('code', E.BUILD_FAILED)}]: {err.get('message', '')}")
            if err.get("hint"):
                print(f"    hint: {err['hint']}")
            if b.get("log"):
                print(f"    full log: blob {b['log']}")
            tail = (b.get("log_tail") or "").splitlines()[-25:]
            if tail:
                print("    log tail:\n" + "\n".join("    | " + ln for ln in tail))
        elif b["state"] == "blocked":
            print(f"--- {b['recipe']} not built: {b['why']}")


def cmd_rebuild(args: argparse.Namespace, settings: Settings) -> int:
    from farm.cli.progress import Progress
    from farm.coordinator.policy import Lane

    keymod.load_builder(settings.keys_dir)  # fail now, not in every worker, if there is no key
    plan, store = _planning(args, settings)
    progress = Progress(len(plan.order), quiet_cached=not args.verbose)
    lane = Lane(args.lane or settings.lane)
    fleet = _coordinator(settings, store, progress)
    coordinator = fleet.coordinator
    run = coordinator.submit(plan, lane=lane, arch=settings.build_arch, force=args.force)
    run_dir = settings.runs_dir / run.id
    fleet.worker_log = run_dir / "workers.log"
    if not settings.embedded_broker and not args.wait:
        print(run.id)
        return 0
    start = time.monotonic()
    try:
        if settings.embedded_broker:
            coordinator.run_until_done(run.id)
        else:
            _follow(coordinator, run.id, progress)
    finally:
        progress.close()
        fleet.close()
    status = coordinator.status(run.id)
    status["seconds"] = round(time.monotonic() - start, 3)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "result.json").write_text(json.dumps(status, indent=1, sort_keys=True))
    if args.json:
        _out(status)
    else:
        _print_summary(status)
    return 0 if status["ok"] else 1


def _follow(coordinator: Any, run_id: str, progress: Any) -> None:
    """Watch a run that the fleet's coordinator drives, reporting each change."""
    seen: dict[str, str] = {}
    while True:
        jobs = coordinator.runs.jobs(run_id)
        for job in jobs.values():
            if seen.get(job.name) != job.state.value + job.why:
                seen[job.name] = job.state.value + job.why
                progress(job, jobs)
        if coordinator.runs.get(run_id).status != "active":
            return
        time.sleep(0.5)


def _run_id(coordinator: Any, run: str | None) -> str:
    return str(run or coordinator.runs.latest().id)


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from farm.store import open_store

    coordinator = _coordinator(settings, open_store(settings.store_url)).coordinator
    status = coordinator.status(_run_id(coordinator, args.run))
    from farm.crossval.recheck import update_metrics

    reproducibility = update_metrics(settings)  # from 'mangos-farm recheck' results, per recipe and "all"
    if args.json:
        _out(status | {"reproducibility": reproducibility})
        return 0
    s = status["summary"]
    print(
        f"run {status['run']} ({status['status']}, lane {status['lane']}, arch {status['arch']}): "
        + ", ".join(f"{v} {k}" for k, v in s.items() if v)
        + f"; oldest waiting {status['oldest_waiting_seconds']:.0f}s"
    )
    width = max((len(b["recipe"]) for b in status["builds"]), default=0)
    for b in status["builds"]:
        extra = f" [{b['worker']}]" if b.get("worker") and b["state"] in ("running", "built") else ""
        print(f"{b['state']:<9} {b['recipe']:<{width}}  {b['why']}{extra}")
    if reproducibility:
        print(
            "reproducibility (recheck): "
            + ", ".join(
                f"{n} {r['reproducible']}/{r['checked']}"
                + (f" ({r['rate']:.0%})" if r["rate"] is not None else "")
                + (f", {r['failed']} failed to build" if r["failed"] else "")
                for n, r in reproducibility.items()
            )
        )
    return 0


def cmd_workers(args: argparse.Namespace, settings: Settings) -> int:
    from farm.coordinator.kv import open_kv
    from farm.coordinator.views import worker_rows

    now = time.time()
    rows = worker_rows(open_kv(settings.state_url), settings.lease_timeout, now)
    if args.json:
        _out(rows)
        return 0
    if not rows:
        print("no workers alive (start one with 'mangos-farm worker')")
    for r in rows:
        jobs = ", ".join(f"{b['recipe']} for {now - (b['since'] or now):.0f}s" for b in r["building"]) or "idle"
        flag = " OUT OF ROTATION" if r["disabled"] else ""
        print(f"{r['name']} ({r['arch']} x{r['concurrency']}, seen {r['last_seen_seconds']:.0f}s ago){flag}: {jobs}")
    return 0


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    from farm.store import open_store

    run = _coordinator(settings, open_store(settings.store_url)).coordinator.cancel(args.run)
    print(f"run {run.id} cancelled")
    return 0


def cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    from farm.store import open_store

    coordinator = _coordinator(settings, open_store(settings.store_url)).coordinator
    run_id, _, name = args.build.rpartition("/")
    run_id = run_id or _run_id(coordinator, None)
    coordinator.retry(run_id, name)
    print(f"build {name} of run {run_id} will be retried")
    return 0


def cmd_coordinator(args: argparse.Namespace, settings: Settings) -> int:
    from farm.store import open_store

    if settings.embedded_broker:
        raise FarmError(
            E.SETTINGS,
            "the coordinator service is for a fleet; the embedded farm coordinates inside 'rebuild'",
            field="MANGOS_FARM_BROKER",
            hint="set MANGOS_FARM_BROKER=redis://HOST:6379/0 (and MANGOS_FARM_STORE) to run a fleet",
        )
    coordinator = _coordinator(settings, open_store(settings.store_url)).coordinator
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr=args.metrics_addr)
        from farm.crossval.recheck import watch_metrics

        watch_metrics(settings)  # mangos_reproducibility_agreement_ratio from this home's recheck results
    print(
        f"coordinator serving {settings.state_url} (lease {settings.lease_timeout}s, "
        f"metrics on :{args.metrics_port or 'off'})",
        flush=True,
    )
    coordinator.serve()
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from farm.web import make_server

    server = make_server(settings, args.host, args.port)
    where = f"state {settings.state_url}, store {settings.store_url}"
    print(f"serving the farm's web view on {server.url} ({where})", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


# -- artifacts -------------------------------------------------------------------------------------------------
def _trusted(args: argparse.Namespace, settings: Settings) -> list[keymod.PublicKey]:
    return keymod.trusted_keys(settings.keys_dir, settings.trusted_keys_dir, [Path(k) for k in args.key or []])


def cmd_fetch(args: argparse.Namespace, settings: Settings) -> int:
    from farm.store import open_store
    from farm.trust.fetch import fetch_records, records_for

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
    from farm.trust.verify import expand, verify_file

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
        keymod.ensure_coordinator_key(settings.coordinator_keys_dir, settings.keys_dir)  # farms made before it
        print(f"builder key {key.public.keyid} already in {settings.keys_dir}")
        return 0
    key = keymod.generate(settings.keys_dir, force=args.force, coordinator_dir=settings.coordinator_keys_dir)
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
    rows = [r | {"value": redact(str(getattr(settings, r["name"])))} for r in describe()]
    if args.json:
        _out(rows)
    else:
        for r in rows:
            print(f"{r['env']:<28} {r['value']:<30} {r['help']}")
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    import os

    from workers.local import worker_argv

    arch = args.arch or settings.build_arch
    name = args.name or f"{arch}-{os.getpid()}@%h"
    argv = worker_argv(args.concurrency or settings.workers, name, arch)
    os.environ.update(settings.to_env() | {"MANGOS_FARM_ARCH": arch})
    if args.metrics_port:
        from workers.metrics_setup import prepare_multiprocess_dir

        # Celery's prefork children share one /metrics endpoint in the main process: prometheus-client's
        # multiprocess mode, whose directory must exist (and be empty) before the library is first imported.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(prepare_multiprocess_dir(settings.home, name))
        os.environ["MANGOS_FARM_METRICS_PORT"] = str(args.metrics_port)
        os.environ["MANGOS_FARM_METRICS_ADDR"] = args.metrics_addr
    os.execv(argv[0], argv)  # noqa: S606 - replaces this process with the Celery worker, argv is a list


# -- parser ----------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mangos-farm", description=__doc__)
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.add_argument("-v", "--verbose", action="store_true", help="log each step")
    p.add_argument("--home", help="state directory (env MANGOS_FARM_HOME, default ./.mangos)")
    sub = p.add_subparsers(dest="command", required=True)
    _build_commands(sub)
    _fleet_commands(sub)
    groups = _admin_commands(sub)
    for module in _EXTENSIONS:
        importlib.import_module(module).register(sub, groups)
    return p


# Command groups that live in their own modules: each has ``register(sub, groups)``, where ``groups`` maps a
# command group name ("keys") to its subparsers so a module can add e.g. ``keys revoke``.
_EXTENSIONS = ("farm.cli.image", "farm.cli.crossval", "farm.cli.security")


def _add(parent: Any, name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
    sp: argparse.ArgumentParser = parent.add_parser(name, help=help, description=help)
    sp.set_defaults(handler=handler)
    return sp


def json_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--json", action="store_true", help="machine-readable output")


def _build_commands(sub: Any) -> None:
    def add(name: str, handler: Handler, help: str, parent: Any = sub) -> argparse.ArgumentParser:
        return _add(parent, name, handler, help)

    recipes = sub.add_parser("recipes", help="work with recipes").add_subparsers(dest="recipes_cmd", required=True)
    sp = add("check", cmd_recipes_check, "validate recipes and print the dependency graph", recipes)
    sp.add_argument("dir", nargs="?", default="recipes")
    json_flag(sp)
    sp = add("import", cmd_recipes_import, "write recipes for Debian source packages, build-depends pinned", recipes)
    sp.add_argument("packages", nargs="+", metavar="NAME[=VERSION]", help="source packages (default: candidate)")
    sp.add_argument("--dir", default="recipes", help="write NAME.toml here (default recipes/)")
    sp.add_argument("--env", default="bookworm-amd64", help="the build environment (default bookworm-amd64)")
    sp.add_argument("--envs", default="envs", help="directory of environment definitions (default envs/)")
    json_flag(sp)

    sp = add("plan", cmd_plan, "what would build, in what order, what is cached and why")
    sp.add_argument("dir", nargs="?", default="recipes")
    sp.add_argument("--force", action="store_true", help="plan as if nothing were cached")
    json_flag(sp)

    sp = add("rebuild", cmd_rebuild, "build everything not already built, in dependency order")
    sp.add_argument("dir", nargs="?", default="recipes")
    sp.add_argument("--force", action="store_true", help="rebuild even what is cached")
    sp.add_argument("--workers", type=int, help="local build processes (env MANGOS_FARM_WORKERS)")
    sp.add_argument("--lane", choices=["security", "interactive", "rebuild"], help="priority lane (default rebuild)")
    sp.add_argument("--wait", action="store_true", help="with a fleet: follow the run to its end, exit 1 on failure")
    json_flag(sp)

    env = sub.add_parser("env", help="pinned build environments").add_subparsers(dest="env_cmd", required=True)
    sp = add("build", cmd_env_build, "make a pinned build environment with mmdebstrap and record it by digest", env)
    sp.add_argument("name", help="an environment in the envs directory (e.g. bookworm-amd64) or a .toml file")
    sp.add_argument("--envs", default="envs", help="directory of environment definitions (default envs/)")
    sp.add_argument("--if-missing", action="store_true", help="keep an environment already made into this store")
    json_flag(sp)
    sp = add("list", cmd_env_list, "the environments built on this machine, with their digests", env)
    json_flag(sp)


def _fleet_commands(sub: Any) -> None:
    def add(name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        return _add(sub, name, handler, help)

    sp = add("status", cmd_status, "every build's state in a run, and for each waiting one why")
    sp.add_argument("run", nargs="?", help="run id (default: the latest)")
    json_flag(sp)

    sp = add("workers", cmd_workers, "who is alive, what each builds, since when")
    json_flag(sp)

    sp = add("cancel", cmd_cancel, "cancel a run: nothing more is dispatched, running builds are revoked")
    sp.add_argument("run")

    sp = add("retry", cmd_retry, "retry a failed build (and what it blocked)")
    sp.add_argument("build", help="RUN/RECIPE, or RECIPE for the latest run")

    sp = add("coordinator", cmd_coordinator, "run the fleet's coordinator service (Redis broker)")
    sp.add_argument("--metrics-port", type=int, default=9500, help="serve /metrics here (0: off; default 9500)")
    sp.add_argument("--metrics-addr", default="0.0.0.0", help="address for /metrics (default all)")  # noqa: S104

    sp = add("worker", cmd_worker, "run a Celery build worker in the foreground (distributed farms)")
    sp.add_argument("--concurrency", type=int, help="parallel builds")
    sp.add_argument("--arch", help="architecture to build for (default: the host's)")
    sp.add_argument("--name", help="worker name (default ARCH-PID@HOSTNAME)")
    sp.add_argument("--metrics-port", type=int, default=9501, help="serve /metrics here (0: off; default 9501)")
    sp.add_argument("--metrics-addr", default="0.0.0.0", help="address for /metrics (default all)")  # noqa: S104

    sp = add("serve", cmd_serve, "serve a read-only JSON API and a live web page of runs, builds and artifacts")
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sp.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080; 0 picks a free one)")


def _admin_commands(sub: Any) -> dict[str, Any]:
    def add(name: str, handler: Handler, help: str, parent: Any = sub) -> argparse.ArgumentParser:
        return _add(parent, name, handler, help)

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
    return {"keys": keys}


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
    except BrokenPipeError:  # `mangos-farm ... | head`: the reader has gone, which is not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes stdout
        return 141
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

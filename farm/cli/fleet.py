"""``workers``, ``coordinator``, ``worker``, ``serve``: the long-running services of a fleet and who is in it."""

from __future__ import annotations

import argparse
import os
import time

from farm import metrics
from farm.cli.common import Subparsers, add_command, json_flag, print_json
from farm.errors import E, FarmError
from farm.settings import Settings


def cmd_workers(args: argparse.Namespace, settings: Settings) -> int:
    from farm.coordinator.kv import open_kv
    from farm.coordinator.views import worker_rows

    now = time.time()
    rows = worker_rows(open_kv(settings.state_url), settings.lease_timeout, now)
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no workers alive (start one with 'mangos-farm worker')")
    for r in rows:
        jobs = ", ".join(f"{b['recipe']} for {now - (b['since'] or now):.0f}s" for b in r["building"]) or "idle"
        flag = " OUT OF ROTATION" if r["disabled"] else ""
        caps = ", ".join(r["capabilities"]) or "no capabilities"
        seen = f"seen {r['last_seen_seconds']:.0f}s ago"
        print(f"{r['name']} ({r['arch']} x{r['concurrency']}, {caps}, {seen}){flag}: {jobs}")
    return 0


def cmd_coordinator(args: argparse.Namespace, settings: Settings) -> int:
    from farm.store import open_store
    from workers.fleet import open_fleet

    if settings.embedded_broker:
        raise FarmError(
            E.SETTINGS,
            "the coordinator service is for a fleet; the embedded farm coordinates inside 'rebuild'",
            field="MANGOS_FARM_BROKER",
            hint="set MANGOS_FARM_BROKER=redis://HOST:6379/0 (and MANGOS_FARM_STORE) to run a fleet",
        )
    coordinator = open_fleet(settings, open_store(settings.store_url)).coordinator
    if args.metrics_port:
        from prometheus_client import start_http_server

        metrics.recording(True)
        start_http_server(args.metrics_port, addr=args.metrics_addr)
        from farm.crossval.results import watch_metrics

        watch_metrics(settings)  # mangos_reproducibility_agreement_ratio from this home's recheck results
    print(
        f"coordinator serving {settings.state_url} (lease {settings.lease_timeout}s, "
        f"metrics on :{args.metrics_port or 'off'})",
        flush=True,
    )
    coordinator.serve()
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from farm.run import exec_replace
    from workers.local import CAPABILITIES_ENV, worker_argv

    arch = args.arch or settings.build_arch
    name = args.name or f"{arch}-{os.getpid()}@%h"
    capabilities = worker_capabilities(args.capability, settings)
    argv = worker_argv(args.concurrency or settings.workers, name, arch, capabilities=capabilities)
    os.environ.update(settings.to_env() | {"MANGOS_FARM_ARCH": arch, CAPABILITIES_ENV: ",".join(capabilities)})
    if args.metrics_port:
        from workers.metrics_setup import prepare_multiprocess_dir

        # Celery's prefork children share one /metrics endpoint in the main process: prometheus-client's
        # multiprocess mode, whose directory must exist (and be empty) before the library is first imported.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(prepare_multiprocess_dir(settings.home, name))
        os.environ["MANGOS_FARM_METRICS_PORT"] = str(args.metrics_port)
        os.environ["MANGOS_FARM_METRICS_ADDR"] = args.metrics_addr
    exec_replace(argv)  # this process becomes the Celery worker


def worker_capabilities(claimed: list[str] | None, settings: Settings) -> list[str]:
    """Probe what this worker can do (only the ``claimed`` capabilities, when given: ``none`` for none) and say so;
    a claimed capability that fails its probe is a FarmError (exit 2)."""
    from farm.build.probes import allowed, probe
    from farm.recipes.needs import CAPABILITIES

    wanted = None if claimed is None else [c for c in claimed if c != "none"]
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    found = probe(CAPABILITIES if wanted is None else wanted, settings.work_dir)
    capabilities = allowed(found, wanted)
    for p in found.values():
        print(f"capability {p.capability}: {'yes' if p.ok else 'no, ' + p.reason}", flush=True)
    print(f"worker capabilities: {', '.join(capabilities) or 'none (default builds only)'}", flush=True)
    return capabilities


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


def add_workers(sub: Subparsers) -> None:
    sp = add_command(sub, "workers", cmd_workers, "who is alive, what each builds, since when")
    json_flag(sp)


def add_coordinator(sub: Subparsers) -> None:
    sp = add_command(sub, "coordinator", cmd_coordinator, "run the fleet's coordinator service (Redis broker)")
    sp.add_argument("--metrics-port", type=int, default=9500, help="serve /metrics here (0: off; default 9500)")
    sp.add_argument("--metrics-addr", default="0.0.0.0", help="address for /metrics (default all)")  # noqa: S104


def add_worker(sub: Subparsers) -> None:
    sp = add_command(sub, "worker", cmd_worker, "run a Celery build worker in the foreground (distributed farms)")
    sp.add_argument("--concurrency", type=int, help="parallel builds")
    sp.add_argument("--arch", help="architecture to build for (default: the host's)")
    sp.add_argument("--name", help="worker name (default ARCH-PID@HOSTNAME)")
    sp.add_argument(
        "--capability",
        action="append",
        metavar="CAP",
        help="take only builds needing CAP or less (repeatable; debian, kvm, or none): narrows what the worker "
        "probes at start; one that fails its probe is an error (default: every capability that passes)",
    )
    sp.add_argument("--metrics-port", type=int, default=9501, help="serve /metrics here (0: off; default 9501)")
    sp.add_argument("--metrics-addr", default="0.0.0.0", help="address for /metrics (default all)")  # noqa: S104


def add_serve(sub: Subparsers) -> None:
    sp = add_command(
        sub, "serve", cmd_serve, "serve a read-only JSON API and a live web page of runs, builds and artifacts"
    )
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sp.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080; 0 picks a free one)")


COMMANDS = {"workers": add_workers, "coordinator": add_coordinator, "worker": add_worker, "serve": add_serve}

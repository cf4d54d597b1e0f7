"""Thin Celery tasks: deserialise, claim the lease, call into ``farm``, serialise. No build logic lives here."""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
import traceback
from typing import Any

from celery import signals
from celery.exceptions import Reject

from farm.build import BuildOutcome, BuildRequest
from farm.build.context import WorkerContext
from farm.build.execute import execute_build
from farm.coordinator.kv import open_kv
from farm.coordinator.leases import DISABLED_TTL, LeaseBoard, WorkerInfo
from farm.crossval.dispatch import RECHECK_TASK, recheck_queue
from farm.crossval.recheck import recheck_from_payload
from farm.errors import E, FarmError
from farm.trust import audit, tasksig
from farm.trust.keyring import LiveKeyring, farm_keyring
from farm.trust.keys import coordinator_public
from farm.trust.nonces import Nonces
from workers.app import BUILD_TASK, app, settings
from workers.local import CAPABILITIES_ENV
from workers.metrics_setup import child_exited, serve_aggregated

log = logging.getLogger(__name__)


@functools.cache
def worker_context() -> WorkerContext:
    """Built once per worker process: the store client, the builder key, the source cache."""
    return WorkerContext.from_settings(settings)


@functools.cache
def worker_keyring() -> LiveKeyring:
    """The worker's keyring, read again whenever its files change (a revocation applies to the next check), with
    the provenance memo of this worker's cache: a dependency whose check passed is not verified on every build."""
    return farm_keyring(settings)


@functools.cache
def lease_board() -> LeaseBoard:
    return LeaseBoard(open_kv(settings.state_url), settings.lease_timeout)


@functools.cache
def nonce_ledger() -> Nonces:
    """The nonces of accepted tasks, in the coordinator state every worker shares (farm.trust.nonces)."""
    return Nonces(lease_board().kv)


def authenticate(task_id: str, request: Any, signature: Any, worker: str) -> FarmError | None:
    """Check the coordinator's signature over the task before anything else (no parsing, no lease, no build), then
    spend its nonce: a message accepted before, by any worker, is refused as a replay; so is every message while
    the state store cannot say (fail closed). A forged or replayed task is audited and counted; the returned
    error goes back as the task's (failed) outcome."""
    try:
        tasksig.verify(
            task_id, request, signature, coordinator_public(settings.keys_dir), nonces=nonce_ledger(), who=worker
        )
    except FarmError as exc:
        if exc.code == E.STATE_UNREACHABLE:
            log.error("%s (%s)", exc.message, exc.hint)
            return exc
        inner = request.get("request", request) if isinstance(request, dict) else None  # a recheck nests it
        name = inner.get("recipe", {}).get("name", "?") if isinstance(inner, dict) else "?"
        key = inner.get("build_key", "?") if isinstance(inner, dict) else "?"
        audit.record(
            audit.audit_path(settings.home),
            audit.REPLAYED_TASK if exc.code == E.TASK_REPLAYED else audit.FORGED_TASK,
            who=worker,
            what=f"task {task_id} (recipe {name!s:.100}, build key {key!s:.80})",
            error=exc.code,
            message=exc.message,
        )
        return exc
    return None


@app.task(name=BUILD_TASK, bind=True)  # type: ignore[untyped-decorator]
def build(self: Any, request: Any, signature: Any = None) -> dict[str, Any]:
    worker = str(self.request.hostname or socket.gethostname())
    task_id = str(self.request.id or "")
    _hand_back_if_out_of_rotation(worker)
    refused = authenticate(task_id, request, signature, worker)
    if refused is not None:
        outcome = BuildOutcome(build_key="", recipe="", ok=False, error=refused.to_json(), worker=worker).to_json()
        lease = request.get("lease") if isinstance(request, dict) else None
        # The coordinator matches a report with its task id, or discards it. A replay's lease belongs to the
        # message's first delivery, which reports for itself: a report here could fail that build.
        if isinstance(lease, str) and lease and refused.code == E.TASK_UNSIGNED:
            _report(lease, task_id, worker, outcome)
        return outcome
    req = BuildRequest.from_json(request)
    try:
        return _build(req, worker, task_id)
    except Reject:
        raise
    except Exception as exc:  # the worker itself is broken (no key, store unreachable...): say who and why
        error = exc.to_json() if isinstance(exc, FarmError) else {"code": E.WORKER, "message": repr(exc)}
        log.exception("worker %s could not build %s", worker, req.recipe.get("name"))
        outcome = BuildOutcome(
            build_key=req.build_key,
            recipe=str(req.recipe.get("name", "")),
            ok=False,
            error=error,
            log_tail=traceback.format_exc()[-3000:],
            worker=worker,
            lease=req.lease,
        ).to_json()
        if req.lease:
            _report(req.lease, task_id, worker, outcome)
        return outcome


def _report(lease: str, task_id: str, worker: str, outcome: dict[str, Any]) -> None:
    """Push the outcome to the coordinator's inbox. If that fails the build's heartbeat stops all the same, and
    the coordinator re-dispatches it when its lease expires."""
    try:
        lease_board().report(lease, task_id, worker, outcome)
    except Exception as exc:
        log.error("cannot report the outcome of lease %s to the coordinator: %s", lease[:8], exc)


def _hand_back_if_out_of_rotation(worker: str) -> None:
    """Out of rotation (failure attribution): hand the message back untouched, before authentication spends its
    nonce, for a healthy worker. The coordinator also asks Celery to stop this worker consuming; this covers
    transports without remote control. A state store that cannot answer is left to authentication (it refuses)."""
    try:
        disabled = lease_board().is_disabled(worker, max_age=DISABLED_TTL)
    except FarmError:
        return
    if disabled:
        time.sleep(1)
        raise Reject("worker is out of rotation", requeue=True)


def _build(req: BuildRequest, worker: str, task_id: str) -> dict[str, Any]:
    board = lease_board()
    if req.lease and not board.claim(req.lease, worker):
        log.info("not building %s: lease %s is stale (re-dispatched or redelivered)", req.recipe["name"], req.lease[:8])
        stale = BuildOutcome(
            build_key=req.build_key,
            recipe=str(req.recipe.get("name", "")),
            ok=False,
            error={"code": E.LEASE_STALE, "message": "lease is no longer current"},
            worker=worker,
            lease=req.lease,
        )
        return stale.to_json()
    ctx = worker_context()
    ctx.trusted = worker_keyring()()  # as the files say now: a revocation applies at once
    if not req.lease:
        return execute_build(req, ctx).to_json()
    with board.keep_alive(req.lease):
        outcome = execute_build(req, ctx)
    result = BuildOutcome(**(outcome.to_json() | {"worker": worker})).to_json()
    _report(req.lease, task_id, worker, result)
    return result


@app.task(name=RECHECK_TASK, bind=True)  # type: ignore[untyped-decorator]
def recheck(self: Any, payload: Any, signature: Any = None) -> dict[str, Any]:
    """Rebuild a published build in a varied environment (farm.crossval.recheck) and return the result: the CLI
    saves it in its own home. Signed like a build task and checked before anything else."""
    worker = str(self.request.hostname or socket.gethostname())
    refused = authenticate(str(self.request.id or ""), payload, signature, worker)
    if refused is not None:
        return {"error": refused.to_json(), "worker": worker}
    try:
        ctx = worker_context()
        ctx.trusted = worker_keyring()()
        return {"result": recheck_from_payload(payload, ctx, settings, worker).to_json(), "worker": worker}
    except Exception as exc:  # a broken worker or a malformed (yet signed) payload: say who and why
        log.exception("worker %s could not recheck", worker)
        error = exc.to_json() if isinstance(exc, FarmError) else {"code": E.WORKER, "message": repr(exc)}
        return {"error": error, "worker": worker}


@signals.celeryd_after_setup.connect  # type: ignore[untyped-decorator]
def _consume_own_recheck_queue(sender: Any = None, instance: Any = None, **_: Any) -> None:
    """Each worker also consumes a queue of its own, so a recheck can be sent to a worker other than the one
    that made the original build (farm.cli.recheck chooses it from the live workers)."""
    if instance is not None and sender and not settings.embedded_broker:  # the embedded farm rechecks in-process
        instance.app.amqp.queues.select_add(recheck_queue(str(sender)))


# -- the worker's presence in the registry (main process) ------------------------------------------------------
_announcer: dict[str, Any] = {}


def announced_capabilities() -> list[str]:
    """What this worker says it can do: what ``mangos-farm worker`` probed and was allowed (it consumes the queues
    of exactly those classes); none when started some other way (then it consumes the default queue only)."""
    return sorted({c for c in os.environ.get(CAPABILITIES_ENV, "").split(",") if c})


@signals.worker_ready.connect  # type: ignore[untyped-decorator]
def _announce_worker(sender: Any = None, **_: Any) -> None:
    name = str(getattr(sender, "hostname", None) or socket.gethostname())
    # worker_ready's sender is the Consumer, which has no 'concurrency': the WorkController it belongs to has.
    controller = getattr(sender, "controller", None)
    concurrency = int(getattr(controller, "concurrency", None) or getattr(sender, "concurrency", None) or 1)
    info = WorkerInfo(
        name=name,
        arch=settings.build_arch,
        concurrency=concurrency,
        host=socket.gethostname(),
        pid=os.getpid(),
        started=time.time(),
        capabilities=announced_capabilities(),
    )
    stop = threading.Event()
    interval = max(0.5, settings.lease_timeout / 4)

    def loop() -> None:
        board = LeaseBoard(open_kv(settings.state_url), settings.lease_timeout)
        while True:
            try:
                board.announce(info, ttl=settings.lease_timeout)
            except Exception as exc:  # keep announcing through a broker/state outage
                log.warning("cannot announce worker %s: %s", name, exc)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=loop, name="mangos-announce", daemon=True)
    thread.start()
    _announcer.update(stop=stop, thread=thread, name=name)


@signals.worker_ready.connect  # type: ignore[untyped-decorator]
def _check_coordinator_key(**_: Any) -> None:
    """Say at start, not at each refused task, that this worker cannot authenticate its tasks."""
    try:
        coordinator_public(settings.keys_dir)
    except FarmError as exc:
        log.error("%s; every build task will be refused (%s)", exc.message, exc.hint)


@signals.worker_ready.connect  # type: ignore[untyped-decorator]
def _serve_metrics(**_: Any) -> None:
    port = int(os.environ.get("MANGOS_FARM_METRICS_PORT", "0") or 0)
    if port and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        try:
            serve_aggregated(port, os.environ.get("MANGOS_FARM_METRICS_ADDR", "0.0.0.0"))  # noqa: S104
        except OSError as exc:  # the worker builds fine without its endpoint; say why it is missing
            log.error("cannot serve worker metrics on port %d: %s", port, exc)


@signals.worker_process_shutdown.connect  # type: ignore[untyped-decorator]
def _pool_child_exited(pid: int | None = None, **_: Any) -> None:
    child_exited(pid or os.getpid())


@signals.worker_shutdown.connect  # type: ignore[untyped-decorator]
def _withdraw_worker(**_: Any) -> None:
    stop = _announcer.get("stop")
    if stop is not None:
        stop.set()
        try:
            LeaseBoard(open_kv(settings.state_url), settings.lease_timeout).withdraw(_announcer["name"])
        except Exception as exc:
            log.warning("cannot withdraw worker registration: %s", exc)

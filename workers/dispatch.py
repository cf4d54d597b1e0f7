"""The coordinator's Celery dispatcher: send build requests to the arch's queue (and rechecks to a worker's)."""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

from celery import Celery
from celery.result import AsyncResult

from farm.build import BuildRequest
from farm.crossval.dispatch import RECHECK_TASK
from farm.errors import E, FarmError
from farm.recipes.needs import DEFAULT_CLASS, classes
from farm.trust import keys, tasksig
from farm.trust.keys import BuilderKey
from workers.app import BUILD_TASK, build_queue

log = logging.getLogger(__name__)


class CeleryDispatcher:
    """Sends builds (and rechecks) to the workers' queues. Build outcomes do not come back this way: workers push
    them to the coordinator's inbox in the state store (:meth:`farm.coordinator.leases.LeaseBoard.report`). A
    recheck's answer does: it is the task's result (:meth:`recheck_outcome`, :meth:`wait_for_outcome`)."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._results: Any = None  # a pub/sub subscription to stored results (Redis backend): wait_for_outcome
        self._no_results_channel = False
        self._signer: BuilderKey | None = None

    def wait_for_outcome(self, timeout: float) -> None:
        """Return as soon as a worker stores a task result, or after ``timeout`` seconds.

        Celery's Redis result backend publishes each result it stores on a channel named after the result's key.
        One pattern subscription, kept open between calls, also buffers those published while the caller was
        busy, so none is missed. Other result backends (the embedded SQLite one) have no channel: sleep.
        """
        deadline = time.monotonic() + timeout
        try:
            if self._results is None and not self._no_results_channel:
                self._results = self._subscribe()
            if self._results is not None and self._results.get_message(timeout=timeout) is not None:
                while self._results.get_message(timeout=0) is not None:  # one look collects them all
                    pass
                return
        except Exception as exc:  # e.g. Redis restarting: poll meanwhile, subscribe again next time
            log.info("no result notifications (%s); polling", exc)
            self._close_results()
        time.sleep(max(0.0, deadline - time.monotonic()))  # also after an early None (a subscribe confirmation)

    def _subscribe(self) -> Any:
        if not str(self.app.conf.result_backend or "").startswith(("redis://", "rediss://")):
            self._no_results_channel = True
            return None
        backend: Any = self.app.backend
        pubsub = backend.client.pubsub(ignore_subscribe_messages=True)
        pubsub.psubscribe(backend.get_key_for_task("*"))
        return pubsub

    def _close_results(self) -> None:
        results, self._results = self._results, None
        if results is not None:
            try:
                results.close()
            except Exception as exc:
                log.debug("closing the result subscription: %s", exc)

    def submit(self, request: BuildRequest, *, arch: str, task_id: str, cls: str = DEFAULT_CLASS) -> str:
        """Send a build signed with the coordinator's key (farm.trust.tasksig): workers refuse unsigned messages.
        It goes to the queue of its arch and class (the workers that can run it)."""
        body = request.to_json()
        signature = tasksig.sign(task_id, body, self.signer())
        result = self.app.send_task(
            BUILD_TASK, args=[body], kwargs={"signature": signature}, queue=build_queue(arch, cls), task_id=task_id
        )
        return str(result.id)

    def submit_recheck(self, payload: dict[str, Any], *, queue: str) -> str:
        """Send a recheck (farm.crossval.recheck), signed like a build: workers refuse unsigned messages."""
        task_id = str(uuid.uuid4())
        signature = tasksig.sign(task_id, payload, self.signer())
        self.app.send_task(RECHECK_TASK, args=[payload], kwargs={"signature": signature}, queue=queue, task_id=task_id)
        return task_id

    def recheck_outcome(self, task_id: str) -> dict[str, Any] | None:
        """A recheck task's answer ({"result": ...} or {"error": ...}, with "worker"), or None while it runs."""
        result: Any = AsyncResult(task_id, app=self.app)
        try:
            if not result.ready():
                return None
        except Exception as exc:
            log.warning("cannot read the result of %s: %s", task_id, exc)
            return None
        if result.successful():
            answer: dict[str, Any] = result.get(propagate=False)
            return answer
        error = FarmError(E.WORKER, f"the worker raised {result.result!r}", hint="see the worker log")
        return {"error": error.to_json(), "worker": ""}

    def signer(self) -> BuilderKey:
        if self._signer is None:
            self._signer = keys.coordinator_key(Path(self.app.conf.mangos_keys_dir))
        return self._signer

    def check(self) -> None:
        """The fleet's workers come and go on their own: nothing to check here."""

    def revoke(self, task_id: str) -> None:
        try:
            self.app.control.revoke(task_id)
        except Exception as exc:  # the embedded SQL broker has no remote control; the lease check suffices
            log.info("cannot revoke %s: %s", task_id, exc)

    def stop_consuming(self, worker: str, arch: str) -> None:
        for cls in classes():  # whichever it consumes
            try:
                self.app.control.cancel_consumer(build_queue(arch, cls), destination=[worker])
            except Exception as exc:
                log.info("cannot stop %s consuming: %s", worker, exc)
                return

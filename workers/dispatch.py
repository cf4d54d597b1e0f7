"""The coordinator's Celery dispatcher: send build requests to the arch's queue, read outcomes back."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.result import AsyncResult

from farm.build import BuildOutcome, BuildRequest
from farm.errors import E, FarmError
from workers.app import BUILD_TASK, build_queue

log = logging.getLogger(__name__)


class CeleryDispatcher:
    def __init__(self, app: Celery) -> None:
        self.app = app

    def submit(self, request: BuildRequest, *, arch: str) -> str:
        result = self.app.send_task(BUILD_TASK, args=[request.to_json()], queue=build_queue(arch))
        return str(result.id)

    def outcome(self, task_id: str) -> BuildOutcome | None:
        result: Any = AsyncResult(task_id, app=self.app)
        try:
            if not result.ready():
                return None
        except Exception as exc:  # result backend unreachable: nothing known yet, ask again next tick
            log.warning("cannot read the result of %s: %s", task_id, exc)
            return None
        if result.successful():
            return BuildOutcome.from_json(result.get(propagate=False))
        error = FarmError(
            E.WORKER,
            f"the worker raised {result.result!r}",
            hint="this is a farm bug or a broken worker; see the worker log",
        )
        return BuildOutcome(
            build_key="",
            recipe="",
            ok=False,
            error=error.to_json(),
            log_tail=str(result.traceback or "")[-3000:],
        )

    def revoke(self, task_id: str) -> None:
        try:
            self.app.control.revoke(task_id)
        except Exception as exc:  # the embedded SQL broker has no remote control; the lease check suffices
            log.info("cannot revoke %s: %s", task_id, exc)

    def stop_consuming(self, worker: str, arch: str) -> None:
        try:
            self.app.control.cancel_consumer(build_queue(arch), destination=[worker])
        except Exception as exc:
            log.info("cannot stop %s consuming: %s", worker, exc)

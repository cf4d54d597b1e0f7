"""The coordinator's Celery dispatcher: send build requests, collect outcomes from the result backend."""

from __future__ import annotations

import time
from typing import Any

from celery import Celery

from farm.build import BuildOutcome, BuildRequest
from farm.errors import E, FarmError
from workers.app import BUILD_QUEUE, BUILD_TASK


class CeleryDispatcher:
    def __init__(self, app: Celery) -> None:
        self.app = app
        self.pending: dict[str, Any] = {}  # build key -> AsyncResult

    def submit(self, request: BuildRequest) -> None:
        result = self.app.send_task(BUILD_TASK, args=[request.to_json()], queue=BUILD_QUEUE)
        self.pending[request.build_key] = result

    def poll(self, timeout: float) -> list[BuildOutcome]:
        deadline = time.monotonic() + timeout
        while True:
            done = []
            for key, result in list(self.pending.items()):
                if result.ready():
                    done.append(self._collect(key, result))
                    del self.pending[key]
            if done or time.monotonic() >= deadline:
                return done
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def _collect(self, key: str, result: Any) -> BuildOutcome:
        if result.successful():
            return BuildOutcome.from_json(result.get(propagate=False))
        error = FarmError(
            E.WORKER,
            f"the worker raised {result.result!r}",
            hint="this is a farm bug or a broken worker; see the worker log",
        )
        return BuildOutcome(
            build_key=key,
            recipe="",
            ok=False,
            error=error.to_json(),
            log_tail=str(result.traceback or "")[-3000:],
        )

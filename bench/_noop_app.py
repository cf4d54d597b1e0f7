"""A bare Celery app with one no-op task, configured exactly like the farm's (``workers.app.celery_config``) but on
its own queue and without the farm's tasks (so its worker never registers as a build worker).

Used by :mod:`bench.bench_overhead` as the baseline "Celery round trip on the same Redis"; its worker runs as
``python -m celery -A bench._noop_app worker ...`` with MANGOS_FARM_BROKER set.
"""

from __future__ import annotations

from celery import Celery

from farm.settings import Settings
from workers.app import celery_config

QUEUE = "bench.noop"
TASK = "bench.noop"


def make_noop_app(settings: Settings) -> Celery:
    app = Celery("bench-noop", set_as_current=False)
    app.conf.update(celery_config(settings) | {"task_default_queue": QUEUE})

    @app.task(name=TASK)  # type: ignore[untyped-decorator]
    def noop() -> None:
        return None

    return app


app = make_noop_app(Settings.from_env())

"""The Celery application, configured from :class:`farm.settings.Settings`.

``celery -A workers.app worker`` (or ``mangos-farm worker``) reads the settings from MANGOS_FARM_* variables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery

from farm.settings import Settings
from workers import transport

BUILD_TASK = "mangos.build"
BUILD_QUEUE = "mangos.build"


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings as data (unit-tested). The choices matter for correctness:

    - acks_late + reject_on_worker_lost: a build whose worker dies is delivered again, not lost;
    - prefetch 1: a worker never holds builds it is not running (prefetched tasks were seen to run twice);
    - results kept so the coordinator can collect outcomes.
    """
    if settings.embedded_broker:
        (settings.home / "broker").mkdir(parents=True, exist_ok=True)
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.result_backend,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_track_started": True,
        "result_expires": 7 * 24 * 3600,
        "broker_connection_retry_on_startup": True,
        "task_default_queue": BUILD_QUEUE,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
    }


def make_app(settings: Settings) -> Celery:
    transport.register()
    app = Celery("mangos-farm", set_as_current=False)
    app.conf.update(celery_config(settings))
    app.conf.update(include=["workers.tasks"])
    return app


def _home_absolute(settings: Settings) -> Settings:
    return settings.with_home(Path(settings.home).resolve())


settings = _home_absolute(Settings.from_env())
app = make_app(settings)

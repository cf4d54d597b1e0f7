"""The Celery application, configured from :class:`farm.settings.Settings`.

``celery -A workers.app worker`` (or ``mangos-farm worker``) reads the settings from MANGOS_FARM_* variables.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from celery import Celery

from farm.recipes.needs import DEFAULT_CLASS, served
from farm.settings import Settings
from workers import transport

BUILD_TASK = "mangos.build"
# A long build must never be redelivered to a second worker while the first is still on it: the Redis
# visibility timeout is far above any build; lost workers are detected by the farm's own leases instead.
VISIBILITY_TIMEOUT = 48 * 3600


def build_queue(arch: str, cls: str = DEFAULT_CLASS) -> str:
    """The queue of the builds of ``arch`` needing class ``cls`` of worker (:mod:`farm.recipes.needs`):
    ``mangos.build.<arch>.<class>``; the default class's keeps the name it always had, ``mangos.build.<arch>`` (a
    wire contract: workers of the previous version consume it)."""
    return f"mangos.build.{arch}" if cls == DEFAULT_CLASS else f"mangos.build.{arch}.{cls}"


def build_queues(arch: str, capabilities: Iterable[str]) -> list[str]:
    """The queues a worker of ``arch`` with ``capabilities`` consumes: one per class it can run."""
    return [build_queue(arch, cls) for cls in served(capabilities)]


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings as data (unit-tested). The choices matter for correctness:

    - acks_late + reject_on_worker_lost: a build whose worker dies is delivered again, not lost;
    - prefetch 1: a worker never holds builds it is not running (prefetched tasks were seen to run twice);
    - results kept so the coordinator can collect outcomes, also after a restart.
    """
    if settings.embedded_broker:
        (settings.home / "broker").mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {}
    if settings.broker_url.startswith(("redis://", "rediss://")):
        options = {"visibility_timeout": VISIBILITY_TIMEOUT}
    tls: dict[str, Any] = {}
    if settings.broker_url.startswith("rediss://"):
        tls = {"broker_use_ssl": broker_tls(settings), "redis_backend_use_ssl": broker_tls(settings)}
    return tls | {
        "broker_url": settings.broker_url,
        "result_backend": settings.result_backend,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "result_expires": 7 * 24 * 3600,
        "broker_transport_options": options,
        "result_backend_transport_options": options,
        "result_backend_always_retry": True,
        "result_backend_max_retries": 30,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "task_default_queue": build_queue(settings.build_arch),
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
    }


def broker_tls(settings: Settings) -> dict[str, Any]:
    """TLS options for a ``rediss://`` broker: the server's certificate is always verified (CA bundle from
    MANGOS_FARM_BROKER_TLS_CA, else the system's); a client certificate is sent when one is configured. Passwords and
    ACL users go in the URL itself (``rediss://USER:PASSWORD@HOST:PORT/DB``)."""
    opts: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if settings.broker_tls_ca:
        opts["ssl_ca_certs"] = settings.broker_tls_ca
    if settings.broker_tls_cert:
        opts["ssl_certfile"] = settings.broker_tls_cert
    if settings.broker_tls_key:
        opts["ssl_keyfile"] = settings.broker_tls_key
    return opts


def make_app(settings: Settings) -> Celery:
    transport.register()
    app = Celery("mangos-farm", set_as_current=False)
    app.conf.update(celery_config(settings))
    app.conf.update(include=["workers.tasks"])
    # Where the coordinator's task-signing key lives (workers.dispatch signs every build message with it).
    app.conf.update(mangos_keys_dir=str(settings.coordinator_keys_dir))
    return app


def _home_absolute(settings: Settings) -> Settings:
    return settings.with_home(Path(settings.home).resolve())


settings = _home_absolute(Settings.from_env())
app = make_app(settings)

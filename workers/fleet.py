"""The coordinator wired to the dispatcher this deployment uses.

With the embedded broker, builds run on local Celery workers that the dispatcher starts only once something must be
built (a fully cached run starts none, and does not import Celery); otherwise they go to the fleet's Celery workers
through the broker. Whoever opens a :class:`Fleet` closes it, which stops the local workers it started.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from farm.settings import Settings

if TYPE_CHECKING:
    from farm.coordinator.engine import Coordinator
    from farm.coordinator.runs import Job
    from farm.store import Store
    from workers.dispatch import CeleryDispatcher


@dataclass
class Fleet:
    """The coordinator plus the local workers it may have started (embedded), so that they can be stopped.

    ``worker_log`` is where local workers write their log; it may be changed until the first dispatcher is made."""

    coordinator: Coordinator
    worker_log: Path
    dispatchers: list[Any] = field(default_factory=list)

    def close(self) -> None:
        """Stop every dispatcher made so far (and the local workers they started), and give back the coordinator
        lease if this process holds it (a coordinator waiting for it takes over at once)."""
        for d in self.dispatchers:
            d.close()
        self.coordinator.lease.release()


def open_fleet(
    settings: Settings, store: Store, on_change: Callable[[Job, dict[str, Job]], None] | None = None
) -> Fleet:
    """The coordinator over ``settings``' state and ``store``, with its dispatcher made on first use: local workers on
    the embedded broker, or the fleet's Celery workers. ``on_change`` is called with each job whose state changes."""
    from farm.coordinator.engine import Config, Coordinator
    from farm.coordinator.kv import open_kv
    from farm.trust.keyring import farm_keyring

    def factory() -> Any:
        if settings.embedded_broker:
            from workers.local import EmbeddedDispatcher

            d = EmbeddedDispatcher(settings, fleet.worker_log)
            fleet.dispatchers.append(d)
            return d
        return celery_dispatcher(settings)

    config = Config(
        lease_timeout=settings.lease_timeout,
        requeue_after=settings.requeue_after,
        max_attempts=settings.max_attempts,
        aging=settings.aging,
        trusted=farm_keyring(settings),
        audit_log=settings.home / "audit.jsonl",
    )
    coordinator = Coordinator(
        open_kv(settings.state_url), store, factory, config, on_change, lazy_workers=settings.embedded_broker
    )
    fleet = Fleet(coordinator, settings.runs_dir / "workers.log")
    return fleet


def celery_dispatcher(settings: Settings) -> CeleryDispatcher:
    """A dispatcher to the fleet's Celery workers through ``settings``' broker."""
    from workers.app import make_app
    from workers.dispatch import CeleryDispatcher

    return CeleryDispatcher(make_app(settings))

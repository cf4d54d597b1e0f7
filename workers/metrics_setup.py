"""Prometheus multiprocess mode for Celery's prefork workers.

Each pool child writes its samples to files in PROMETHEUS_MULTIPROC_DIR; the worker's main process serves one
/metrics endpoint that adds them up. A child's live gauges are dropped when it exits (``mark_process_dead``;
a SIGKILLed child cannot do this, which only affects its gauges, not counters or histograms).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

log = logging.getLogger(__name__)


def prepare_multiprocess_dir(home: Path, worker_name: str) -> Path:
    """A fresh, empty directory for this worker's samples (stale files from a previous run would be summed)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", worker_name)
    path = (home / "metrics" / safe).resolve()
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def serve_aggregated(port: int, addr: str) -> None:
    """Start the worker's /metrics endpoint over all pool children's samples (in the main process)."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    start_http_server(port, addr=addr, registry=registry)
    log.info("worker metrics on %s:%d", addr, port)


def child_exited(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]

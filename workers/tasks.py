"""Thin Celery tasks: deserialise, call into ``farm``, serialise. No build logic lives here."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from farm.build import BuildRequest, WorkerContext, execute_build
from farm.envs.host import host_environment
from farm.keys import load_builder
from farm.settings import Settings
from farm.sources.git import SourceCache
from farm.store import open_store
from workers.app import BUILD_TASK, app, settings


@functools.cache
def worker_context() -> WorkerContext:
    """Built once per worker process: the store client, the builder key, the source cache."""
    s: Settings = settings
    return WorkerContext(
        store=open_store(s.store_url),
        builder_key=load_builder(s.keys_dir),
        sources=SourceCache(Path(s.cache_dir) / "git"),
        work_root=Path(s.work_dir),
        builder_id=s.builder,
        environment=host_environment(),
        timeout=float(s.build_timeout),
    )


@app.task(name=BUILD_TASK)  # type: ignore[untyped-decorator]
def build(request: dict[str, Any]) -> dict[str, Any]:
    return execute_build(BuildRequest.from_json(request), worker_context()).to_json()

"""Celery task names and queue names are a wire contract between a coordinator and workers of different versions:
a rename strands every queued build. They are compared with the names the previous layout registered."""

from __future__ import annotations

import workers.tasks  # noqa: F401 - registers the tasks on the app
from farm.crossval.dispatch import recheck_queue
from workers.app import app, build_queue

GOLDEN_TASKS = ["mangos.build", "mangos.recheck"]


def test_the_registered_task_names_are_unchanged() -> None:
    names = sorted(n for n in app.tasks if n.startswith("mangos"))
    assert names == GOLDEN_TASKS


def test_queue_names_are_unchanged() -> None:
    assert build_queue("amd64") == "mangos.build.amd64"
    assert recheck_queue("w1@host") == "mangos.recheck.w1@host"

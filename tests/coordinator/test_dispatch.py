"""The Celery dispatchers (workers/dispatch.py, workers/local.py) against a recording stand-in for the Celery app:
what a build message carries, where it goes, and what the coordinator is told when it cannot be carried out."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from celery import Celery

from farm.build import BuildRequest, DependencyInput
from farm.errors import E, FarmError
from farm.recipes.needs import classes
from farm.trust import keys, tasksig
from workers.app import BUILD_TASK, build_queue
from workers.dispatch import CeleryDispatcher
from workers.local import EmbeddedDispatcher

pytestmark = pytest.mark.unit


class FakeControl:
    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.revoked: list[str] = []
        self.cancelled: list[tuple[str, list[str]]] = []

    def revoke(self, task_id: str) -> None:
        if self.fail:
            raise NotImplementedError("no remote control on this transport")
        self.revoked.append(task_id)

    def cancel_consumer(self, queue: str, destination: list[str]) -> None:
        if self.fail:
            raise NotImplementedError("no remote control on this transport")
        self.cancelled.append((queue, destination))


class FakeApp:
    def __init__(self, keys_dir: Path, *, fail: bool = False) -> None:
        self.conf = SimpleNamespace(mangos_keys_dir=str(keys_dir))
        self.control = FakeControl(fail)
        self.sent: list[dict[str, Any]] = []

    def send_task(self, name: str, **kwargs: Any) -> Any:
        self.sent.append({"name": name} | kwargs)
        return SimpleNamespace(id=kwargs["task_id"])


REQUEST = BuildRequest(
    build_key="k" * 64,
    recipe={"name": "a", "version": "1"},
    recipe_path="recipes/a.toml",
    fetch_url="/src",
    tree="t" * 40,
    environment="e" * 64,
    dependencies=(DependencyInput("b", "b" * 64, {"b.tar": "1" * 64}),),
    lease="n/run/a",
)


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    keys.generate(tmp_path / "keys")
    return tmp_path / "keys"


def test_a_build_goes_to_its_arch_queue_signed_under_the_coordinators_task_id(keys_dir: Path) -> None:
    app = FakeApp(keys_dir)
    dispatcher = CeleryDispatcher(cast(Celery, app))
    assert dispatcher.submit(REQUEST, arch="arm64", task_id="task-1") == "task-1"
    [sent] = app.sent
    assert (sent["name"], sent["queue"], sent["task_id"]) == (BUILD_TASK, build_queue("arm64"), "task-1")
    assert sent["args"] == [REQUEST.to_json()]
    coordinator = keys.coordinator_public(keys_dir)
    tasksig.verify("task-1", sent["args"][0], sent["kwargs"]["signature"], coordinator)
    with pytest.raises(FarmError) as err:  # the signature covers the task id: another id is refused
        tasksig.verify("task-2", sent["args"][0], sent["kwargs"]["signature"], coordinator)
    assert err.value.code == E.TASK_UNSIGNED
    assert BuildRequest.from_json(sent["args"][0]) == REQUEST


def test_revoke_and_stop_consuming_use_remote_control_when_there_is_one(keys_dir: Path) -> None:
    app = FakeApp(keys_dir)
    dispatcher = CeleryDispatcher(cast(Celery, app))
    dispatcher.revoke("task-1")
    dispatcher.stop_consuming("w1@fleet", "amd64")
    dispatcher.check()
    assert app.control.revoked == ["task-1"]
    assert app.control.cancelled == [(build_queue("amd64", cls), ["w1@fleet"]) for cls in classes()]
    quiet = CeleryDispatcher(cast(Celery, FakeApp(keys_dir, fail=True)))
    quiet.revoke("task-1")  # the embedded SQL broker has none: the lease check suffices
    quiet.stop_consuming("w1@fleet", "amd64")


def test_dead_local_workers_are_reported_with_their_log(tmp_path: Path) -> None:
    log = tmp_path / "workers.log"
    log.write_text("Traceback: the worker could not start\n")
    dispatcher = EmbeddedDispatcher.__new__(EmbeddedDispatcher)  # without starting real workers
    dispatcher.workers = cast(Any, SimpleNamespace(alive=lambda: True, logfile=log))
    dispatcher.check()
    dispatcher.workers = cast(Any, SimpleNamespace(alive=lambda: False, logfile=log))
    with pytest.raises(FarmError) as err:
        dispatcher.check()
    assert err.value.code == E.WORKER
    assert "could not start" in err.value.hint and str(log) in err.value.hint

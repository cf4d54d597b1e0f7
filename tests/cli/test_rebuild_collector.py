"""``rebuild`` pauses Python's cyclic garbage collector while it imports, plans and submits (objects that live as long
as the run), and gives it back as it was before the run is driven, even when planning fails."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from farm.cli.main import main
from farm.errors import E, FarmError

pytestmark = pytest.mark.unit


@pytest.fixture
def collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_the_collector_is_paused_while_planning_and_back_after_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], collector_on: None
) -> None:
    import farm.coordinator.planning
    import farm.trust.keys

    seen: list[bool] = []

    def plan_recipes(*_args: Any, **_kwargs: Any) -> Any:
        seen.append(gc.isenabled())
        raise FarmError(E.RECIPE_DIR, "no recipes here", hint="a test")

    monkeypatch.setattr(farm.trust.keys, "check_builder", lambda _keys: None)
    monkeypatch.setattr(farm.coordinator.planning, "plan_recipes", plan_recipes)
    rc = main(["--home", str(tmp_path / "home"), "rebuild", str(tmp_path / "recipes")])
    assert rc != 0 and "no recipes here" in capsys.readouterr().err
    assert seen == [False], "planning ran with the collector on"
    assert gc.isenabled(), "the collector was left off"


def test_the_collector_is_back_on_before_the_run_is_driven(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], collector_on: None
) -> None:
    import farm.coordinator.planning
    import farm.trust.keys
    import workers.fleet

    seen: dict[str, bool] = {}

    class Plan:
        order: ClassVar[list[str]] = []

    class Coordinator:
        def submit(self, *_args: Any, **_kwargs: Any) -> Any:
            seen["submit"] = gc.isenabled()
            return type("Run", (), {"id": "run-1"})()

        def run_until_done(self, _run_id: str) -> None:
            seen["run"] = gc.isenabled()
            raise FarmError(E.RECIPE_DIR, "stopped here", hint="a test")

    class Fleet:
        coordinator = Coordinator()
        worker_log = tmp_path / "workers.log"

        def close(self) -> None:
            pass

    monkeypatch.setattr(farm.trust.keys, "check_builder", lambda _keys: None)
    monkeypatch.setattr(farm.coordinator.planning, "plan_recipes", lambda *_a, **_k: (Plan(), None))
    monkeypatch.setattr(workers.fleet, "open_fleet", lambda *_a, **_k: Fleet())
    rc = main(["--home", str(tmp_path / "home"), "rebuild", str(tmp_path / "recipes")])
    assert rc != 0 and "stopped here" in capsys.readouterr().err
    assert seen == {"submit": False, "run": True}

"""The machine state every benchmark report carries, and its warning when other work shares the CPUs."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench._common import autogroup_enabled, machine_state


def test_autogroup_is_read_from_the_kernel_setting(tmp_path: Path) -> None:
    setting = tmp_path / "sched_autogroup_enabled"
    setting.write_text("1\n")
    assert autogroup_enabled(setting) is True
    setting.write_text("0\n")
    assert autogroup_enabled(setting) is False
    assert autogroup_enabled(tmp_path / "absent") is None


def test_a_busy_machine_is_reported_and_autogroup_named(capsys: pytest.CaptureFixture[str]) -> None:
    state = machine_state((1.7, 1.0, 0.5), True)
    assert state["loadavg_before"] == (1.7, 1.0, 0.5) and state["sched_autogroup"] is True
    warning = capsys.readouterr().err
    assert "load average 1.70 before the run" in warning and "autogroup is on" in warning

    machine_state((1.7, 1.0, 0.5), False)
    assert "autogroup" not in capsys.readouterr().err

    machine_state((0.1, 0.1, 0.1), True)
    assert capsys.readouterr().err == ""

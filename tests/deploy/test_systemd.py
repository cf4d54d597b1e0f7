"""deploy/systemd: the recipes-update service and its daily timer are units systemd accepts, and the service runs
``recipes update --queue`` as a valid command line."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.common import DEPLOY, parse_cli

pytestmark = pytest.mark.integration

SYSTEMD = DEPLOY / "systemd"
SERVICE = SYSTEMD / "mangos-farm-recipes-update.service"
TIMER = SYSTEMD / "mangos-farm-recipes-update.timer"


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def test_the_service_runs_recipes_update_with_queue() -> None:
    service = unit(SERVICE)
    assert service["Service"]["Type"] == "oneshot"
    binary, *argv = shlex.split(service["Service"]["ExecStart"])
    assert Path(binary).name == "mangos-farm"
    args = parse_cli(argv)
    assert (args.command, args.recipes_cmd, args.queue) == ("recipes", "update", True)
    assert service["Service"]["ExecStartPre"].startswith("+/usr/bin/apt-get update")  # fresh indexes, as root
    assert service["Service"]["User"] != "root"


def test_the_timer_starts_the_service_daily() -> None:
    timer = unit(TIMER)
    assert timer["Timer"]["OnCalendar"] == "daily"
    assert timer["Timer"]["Persistent"] == "true"
    assert timer["Timer"]["Unit"] == SERVICE.name
    assert timer["Install"]["WantedBy"] == "timers.target"


def test_systemd_analyze_verifies_both_units(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # The units name /usr/local/bin/mangos-farm; verify checks the binary exists, so point it at one that does.
    for path in (SERVICE, TIMER):
        text = path.read_text().replace("/usr/local/bin/mangos-farm", "/bin/true")
        (tmp_path / path.name).write_text(text)
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(tmp_path / TIMER.name), str(tmp_path / SERVICE.name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr

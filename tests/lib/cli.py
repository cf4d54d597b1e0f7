"""``mangos-farm`` run as a user runs it, and a farm in a directory with its own home."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).parent / "mangos-farm")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any MANGOS_FARM_* setting, plus ``extra``."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MANGOS_FARM_")} | extra


def run_cli(
    args: Sequence[str], *, cwd: Path, env: Mapping[str, str], check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``mangos-farm ARGS``; a failure (when checked) or any traceback raises AssertionError."""
    proc = subprocess.run(
        [CLI, *args], cwd=cwd, env=dict(env), capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"mangos-farm {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@dataclass
class Farm:
    """A farm in a directory, driven only through the CLI; ``env`` holds its MANGOS_FARM_HOME."""

    root: Path
    home: Path
    env: dict[str, str]

    @classmethod
    def at(cls, root: Path, home: Path, **settings: str) -> Farm:
        """A farm run from ``root`` with home ``home`` and the MANGOS_FARM_* ``settings`` given (no others)."""
        return cls(root, home, clean_env(MANGOS_FARM_HOME=str(home), **settings))

    def run(
        self, *args: str, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run_cli(args, cwd=self.root, env=self.env | (env or {}), check=check)

    def json(self, *args: str, env: dict[str, str] | None = None, check: bool = True) -> Any:
        return json.loads(self.run(*args, "--json", env=env, check=check).stdout)

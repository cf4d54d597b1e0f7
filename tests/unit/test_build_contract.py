"""``farm.build`` is the build stage's contract: importing it, or the coordinator that only speaks the contract
(and loads it only when it dispatches or reads an outcome), loads none of the executor. Checked in a fresh
interpreter, where ``sys.modules`` holds only what the import brought in."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

EXECUTOR = (
    "farm.build.execute",
    "farm.build.context",
    "farm.build.sandbox",
    "farm.build.debian",
    "farm.build.outputs",
    "farm.build.attest",
    "farm.build.variation",
)


def _loaded(module: str) -> set[str]:
    """The ``farm`` modules a fresh interpreter holds after importing ``module``."""
    probe = f"import json, sys, {module}; print(json.dumps(sorted(m for m in sys.modules if m.startswith('farm'))))"
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout))


def test_the_coordinator_loads_no_part_of_the_executor() -> None:
    # The contract comes in with the first dispatch or outcome (a fully cached run never loads it) ...
    assert not {m for m in _loaded("farm.coordinator.engine") if m.startswith("farm.build")}
    # ... and with it, still nothing of the executor.
    loaded = _loaded("farm.coordinator.engine, farm.coordinator.scheduler, farm.build")
    assert {"farm.coordinator.engine", "farm.build"} <= loaded
    assert sorted(loaded.intersection(EXECUTOR)) == []


def test_the_build_package_is_the_contract_only() -> None:
    loaded = _loaded("farm.build")
    assert sorted(m for m in loaded if m.startswith("farm.build")) == ["farm.build"]
    # Nothing of the machinery below either (trust, store, sources, recipes): only the ground floor's errors.
    assert loaded <= {"farm", "farm.build", "farm.errors"}, sorted(loaded)


def test_the_probe_sees_the_executor_when_it_is_imported() -> None:
    loaded = _loaded("farm.build.execute")
    assert set(EXECUTOR) <= loaded

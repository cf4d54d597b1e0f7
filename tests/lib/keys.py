"""The keys of a fleet, one organization: every process signs provenance with the one builder key, and task
messages are signed by the coordinator, so only the coordinator's home holds ``coordinator.key`` and every other
home holds ``coordinator.pub`` (a worker without it refuses every task: E-KEY-MISSING)."""

from __future__ import annotations

import shutil
from pathlib import Path

BUILDER = ("builder.key", "builder.pub")


def install_fleet_keys(source: Path, home: Path, *, coordinator: bool) -> None:
    """Copy from the keys directory ``source`` (made by ``mangos-farm keys generate``) into ``home/keys`` what
    a fleet process needs: the builder pair, and the coordinator's private key only if it is the coordinator."""
    keys = home / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    task = ("coordinator.pub", "coordinator.key") if coordinator else ("coordinator.pub",)
    for name in (*BUILDER, *task):
        shutil.copy(source / name, keys / name)

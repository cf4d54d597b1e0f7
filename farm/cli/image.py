"""CLI commands for image assembly: `image build|sysext|verify|boot`, `trace`, `keys generate --release` (issue #5)."""

from __future__ import annotations

from typing import Any


def register(sub: Any, groups: dict[str, Any]) -> None:
    """Add this module's commands to the ``mangos-farm`` parser."""

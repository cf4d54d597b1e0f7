"""CLI commands for cross-validation: `recheck`, `publish`, `compare`, `bundle` (issue #7)."""

from __future__ import annotations

from typing import Any


def register(sub: Any, groups: dict[str, Any]) -> None:
    """Add this module's commands to the ``mangos-farm`` parser."""

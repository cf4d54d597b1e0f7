"""CLI commands for fleet security: builder keyring, revocation, audit log (issue #8)."""

from __future__ import annotations

from typing import Any


def register(sub: Any, groups: dict[str, Any]) -> None:
    """Add this module's commands to the ``mangos-farm`` parser."""

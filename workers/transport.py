"""The embedded broker: kombu's SQLAlchemy transport on a SQLite file, polled every 0.1 s instead of 1 s.

kombu forwards all transport options of the SQL transport to ``create_engine``, so the polling interval cannot
be set as an option; a subclass registered under its own URL scheme (``farmsql+sqlite:///...``) sets it.
Field notes: the stock ``filesystem://`` transport can hand a consumer a half-written message; SQLite cannot.
"""

from __future__ import annotations

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport.sqlalchemy import Transport as SQLTransport

SCHEME = "farmsql"


class Transport(SQLTransport):
    polling_interval = 0.1


def register() -> None:
    """Make ``farmsql+...`` broker URLs resolve to this transport (idempotent)."""
    TRANSPORT_ALIASES[SCHEME] = "workers.transport:Transport"


register()

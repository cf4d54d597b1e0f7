"""The farm's web view: a read-only JSON API over the coordinator's state and the store, and a small live page.

``mangos-farm serve`` runs it on the standard library's threading HTTP server. Nothing here changes state,
dispatches builds or imports Celery: it reads what the coordinator, the workers and the store have written.
"""

from __future__ import annotations

from farm.web.app import Response, WebApp
from farm.web.server import FarmHTTPServer, make_server

__all__ = ["FarmHTTPServer", "Response", "WebApp", "make_server"]

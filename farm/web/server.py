"""The HTTP side of the web view: the standard library's threading server, one thread per connection.

Requests are logged through :mod:`logging` (logger ``farm.web.server``, INFO; ``mangos-farm -v serve`` shows
them). A download streams through :func:`farm.web.app.verified_blob`: when a blob turns out corrupt mid-way, the
connection is closed before its last bytes, so the client sees a short body instead of a bad artifact.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from farm.errors import E, FarmError
from farm.settings import Settings
from farm.web.app import Response, WebApp, error_response, internal_error, json_response, method_not_allowed

log = logging.getLogger(__name__)


class FarmHTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a browser's idle keep-alive connection never holds up a shutdown

    def __init__(self, address: tuple[str, int], app: WebApp) -> None:
        self.app = app
        super().__init__(address, Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


class FarmHTTPServer6(FarmHTTPServer):
    address_family = socket.AF_INET6


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a page polling every second reuses its connection
    server_version = "mangos-farm"
    sys_version = ""
    timeout = 120  # seconds an idle connection is kept

    def version_string(self) -> str:
        return self.server_version

    @property
    def app(self) -> WebApp:
        server = self.server
        assert isinstance(server, FarmHTTPServer)
        return server.app

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _refuse(self) -> None:
        self.close_connection = True  # a request body, if any, is not read
        self._finish(method_not_allowed(self.command), head=False)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def _serve(self, *, head: bool) -> None:
        resp = self.app.handle(self.command, self.path)
        first = b""
        if resp.stream is not None and not head:
            try:  # the first chunk, before any header: a missing or small corrupt blob still gets a clean error
                first = next(resp.stream, b"")
            except FarmError as exc:
                log.error("GET %s: %s", self.path, exc.message)
                resp = error_response(exc)
            except Exception:
                log.exception("GET %s failed", self.path)
                resp = internal_error()
        self._finish(resp, head=head, first=first)

    def _finish(self, resp: Response, *, head: bool, first: bytes = b"") -> None:
        try:
            self.send_response(resp.status)
            self.send_header("Content-Type", resp.content_type)
            if "Content-Length" not in resp.headers:
                self.send_header("Content-Length", str(len(resp.body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            self.send_header("X-Server-Time", f"{time.time():.3f}")
            for name, value in resp.headers.items():
                self.send_header(name, value)
            self.end_headers()
            if head:
                return
            if resp.stream is None:
                self.wfile.write(resp.body)
                return
            self.wfile.write(first)
            for chunk in resp.stream:
                self.wfile.write(chunk)
        except OSError as exc:  # the client went away
            log.debug("%s %s: connection lost: %s", self.command, self.path, exc)
            self.close_connection = True
        except Exception as exc:
            log.error("%s %s cut short: %s", self.command, self.path, getattr(exc, "message", exc))
            self.close_connection = True  # the client sees fewer bytes than Content-Length
        finally:
            if resp.stream is not None:
                resp.stream.close()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Malformed requests (bad request line, unknown method, ...) get the same JSON errors as the routes."""
        self.close_connection = True
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        hint = explain or "the web view answers HTTP GET (and HEAD) requests"
        body = {"error": {"code": E.WEB_REQUEST, "message": message or phrase, "hint": hint}}
        self._finish(json_response(body, code), head=getattr(self, "command", "") == "HEAD")

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def log_error(self, format: str, *args: Any) -> None:
        log.warning("%s %s", self.address_string(), format % args)


def make_server(settings: Settings, host: str = "127.0.0.1", port: int = 8080) -> FarmHTTPServer:
    """A server of the farm these settings name (its coordinator state and store), listening but not serving yet."""
    from farm.coordinator.kv import open_kv
    from farm.store import open_store

    app = WebApp(
        open_kv(settings.state_url),
        open_store(settings.store_url),
        lease_timeout=settings.lease_timeout,
        aging=settings.aging,
    )
    cls = FarmHTTPServer6 if ":" in host else FarmHTTPServer
    try:
        return cls((host, port), app)
    except OSError as exc:
        raise FarmError(
            E.SETTINGS,
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            field="--port" if exc.errno == errno.EADDRINUSE else "--host",
            hint="choose another --port (0 picks a free one), or stop what is using it",
        ) from None

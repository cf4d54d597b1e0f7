"""Run moto's S3 server (``moto_server``) with its writes serialized.

moto checks ``If-None-Match: *`` and then stores the object in two steps, with no lock between them, so two
concurrent conditional writes of one key can both succeed on a threaded moto server. AWS S3 and MinIO decide
them atomically, and the conformance suite checks exactly that (one winner per race). Serializing the requests
that write (anything but GET and HEAD) gives moto the same atomicity; reads stay concurrent.

Usage: ``python tests/store/moto_launcher.py -H 127.0.0.1 -p PORT`` (the arguments of ``moto_server``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

import moto.server


class SerializeWrites:
    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
            return self.app(environ, start_response)
        with self.lock:
            return list(self.app(environ, start_response))  # the whole response is made under the lock


def main() -> None:
    namespace = vars(moto.server)
    run_simple = namespace["run_simple"]  # fails loudly if moto stops starting its server this way

    def serialized(host: str, port: int, app: Callable[..., Iterable[bytes]], **kwargs: Any) -> None:
        run_simple(host, port, SerializeWrites(app), **kwargs)

    namespace["run_simple"] = serialized
    moto.server.main()


if __name__ == "__main__":
    main()

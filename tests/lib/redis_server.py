"""redis-server on a free loopback port, with its data in a directory of its own."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.lib.tools import free_port, require, stop


class RedisServer:
    """A real redis-server. ``appendfsync`` is Redis's AOF setting: ``always`` (the default: a restart keeps every
    write, as the fault-injection tests need), ``everysec`` (a production Redis), ``no``, or ``off`` (no AOF)."""

    def __init__(self, workdir: Path, appendfsync: str = "always") -> None:
        self.binary = require("redis-server")
        self.workdir = workdir
        self.port = free_port()
        self.appendfsync = appendfsync
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        aof = self.appendfsync != "off"
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.workdir),
            "--appendonly", "yes" if aof else "no",
            "--appendfsync", self.appendfsync if aof else "no",
            "--save", "",
            "--daemonize", "no",
        ]  # fmt: skip

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with (self.workdir / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._serving():
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def _serving(self) -> bool:
        """Whether the server answers commands: listening is not enough, it refuses them (-LOADING) while it
        reads its append-only file back after a restart."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
        except OSError:
            return False
        return bool(reply) and not reply.startswith(b"-LOADING")

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url)

    def stop(self) -> None:
        stop(self.proc)

    def restart(self) -> None:
        self.stop()
        self.start()

    def fresh(self) -> None:
        """Restarted and empty, for a test that needs a clean broker and state (AOF keeps data across restarts)."""
        self.restart()
        client = self.client()
        client.flushall()
        client.close()

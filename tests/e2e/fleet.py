"""A real fleet on one machine: redis-server, a moto S3 server, a coordinator process and Celery worker
processes (each with its own home, as if on its own machine), driven through the CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import RedisServer, free_port
from tests.e2e.conftest import CLI, run_cli


class Fleet:
    def __init__(self, root: Path, redis: RedisServer, store_url: str, aws_env: dict[str, str]) -> None:
        self.root = root
        self.redis = redis
        self.store_url = store_url
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith(("MANGOS_FARM_", "AWS_"))}
        self.base_env |= aws_env | {
            "MANGOS_FARM_BROKER": redis.url,
            "MANGOS_FARM_STORE": store_url,
            "MANGOS_FARM_LEASE_TIMEOUT": "4",
            "MANGOS_FARM_REQUEUE_AFTER": "60",
        }
        self.client_home = root / "client"
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.coordinator: subprocess.Popen[bytes] | None = None
        self.metrics_ports: dict[str, int] = {}  # /metrics of each process, on 127.0.0.1
        self.cli("keys", "generate")

    def env(self, home: Path) -> dict[str, str]:
        return self.base_env | {"MANGOS_FARM_HOME": str(home)}

    def cli(self, *args: str, check: bool = True, home: Path | None = None) -> subprocess.CompletedProcess[str]:
        return run_cli(args, cwd=self.root, env=self.env(home or self.client_home), check=check)

    def json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        home = self.root / name
        (home / "keys").mkdir(parents=True, exist_ok=True)
        for f in ("builder.key", "builder.pub"):  # one organization: every worker signs with its builder key
            shutil.copy(self.client_home / "keys" / f, home / "keys" / f)
        # Task messages are signed by the coordinator's key: only it holds the private half, workers the public.
        for f in ("coordinator.pub", "coordinator.key") if name == "coordinator" else ("coordinator.pub",):
            shutil.copy(self.client_home / "keys" / f, home / "keys" / f)
        log = (self.root / f"{name}.log").open("ab")
        return subprocess.Popen(
            [CLI, *argv],
            cwd=self.root,
            env=self.env(home),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_worker(self, name: str, concurrency: int = 1) -> None:
        port = self.metrics_ports.setdefault(name, free_port())
        self.workers[name] = self._spawn(
            name,
            [
                *("worker", "--concurrency", str(concurrency), "--name", f"{name}@fleet"),
                *("--metrics-port", str(port), "--metrics-addr", "127.0.0.1"),
            ],
        )

    def start_coordinator(self) -> None:
        port = self.metrics_ports.setdefault("coordinator", free_port())
        self.coordinator = self._spawn(
            "coordinator", ["coordinator", "--metrics-port", str(port), "--metrics-addr", "127.0.0.1"]
        )

    def kill(self, proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGKILL) -> None:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                proc.wait(timeout=30)

    def kill_worker(self, name: str) -> None:
        self.kill(self.workers.pop(name))

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = 120) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            time.sleep(0.3)
        raise AssertionError(f"timed out after {timeout:g}s waiting for {what}\n{self.logs()}")

    def wait_workers(self, n: int) -> None:
        self.wait_for(f"{n} workers", lambda: len([w for w in self.json("workers") if not w["disabled"]]) >= n)

    def status(self, run: str) -> dict[str, Any]:
        status: dict[str, Any] = self.json("status", run)
        return status

    def wait_run(self, run: str, timeout: float = 300) -> dict[str, Any]:
        status: dict[str, Any] = self.wait_for(
            f"run {run}", lambda: (s := self.status(run))["status"] != "active" and s, timeout
        )
        return status

    def builds_executed(self, recipe: str) -> int:
        """How many times any worker started building ``recipe`` (from the workers' own logs)."""
        count = 0
        for log in self.root.glob("w*.log"):
            count += log.read_text(errors="replace").count(f"> build recipe={recipe} ")
        return count

    def logs(self) -> str:
        out = []
        for log in sorted(self.root.glob("*.log")):
            out.append(f"==== {log.name}\n{log.read_text(errors='replace')[-3000:]}")
        return "\n".join(out)

    def close(self) -> None:
        for proc in [*self.workers.values(), self.coordinator]:
            self.kill(proc)
        self.workers.clear()

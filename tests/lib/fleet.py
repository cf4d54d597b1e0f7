"""A real fleet on one machine: redis-server, a store, one ``mangos-farm coordinator`` process and ``mangos-farm
worker`` processes, each with its own home (as if on its own machine), driven through the CLI as an operator would.

Every process runs in its own session and is stopped by its process-group id. The client home (where the CLI
runs) generates the keys; each process gets the builder pair and the coordinator's public key, the coordinator
its private key too (:mod:`tests.lib.keys`).

Tests wait for events, never for time: a recipe with a :func:`~tests.lib.recipes.gate_step` holds its build on
the worker until the test opens the gate (:class:`Gates`), and the processes' own state (``status --json``,
``workers --json``, /metrics) says when something has happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.lib.cli import CLI, run_cli
from tests.lib.keys import install_fleet_keys
from tests.lib.recipes import GATE_HELD, GATE_OPEN
from tests.lib.redis_server import RedisServer
from tests.lib.tools import free_port


@dataclass(frozen=True)
class Held:
    """A build held at its gate: ``recipe`` on the worker whose home is ``root/worker``, in the build directory
    ``src``."""

    worker: str
    recipe: str
    src: Path

    def open(self) -> bool:
        """Let the build go on; False if its build directory is gone (the build ended, or its worker died)."""
        try:
            (self.src / GATE_OPEN).touch()
        except FileNotFoundError:
            return False
        return True


class Gates:
    """The gated builds (:func:`~tests.lib.recipes.gate_step`) of the workers whose homes are under ``root``.

    A build is held from the moment its gate step starts until the test opens its gate. A build directory of a
    killed worker stays on disk, so its build keeps looking held: filter by worker when that matters.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def held(self, recipe: str = "*", worker: str = "*") -> list[Held]:
        """The builds held now (of ``recipe`` on ``worker``: glob patterns), oldest first."""
        found = []
        for marker in self.root.glob(f"{worker}/work/{recipe}-*/src/{GATE_HELD}"):
            src = marker.parent
            if not (src / GATE_OPEN).exists():
                found.append(Held(src.parents[2].name, src.parent.name.rsplit("-", 1)[0], src))
        return sorted(found, key=lambda h: _mtime(h.src / GATE_HELD))

    def release(self, recipe: str = "*", worker: str = "*") -> list[Held]:
        """Open the gate of every build held now; those opened."""
        return [h for h in self.held(recipe, worker) if h.open()]

    @contextlib.contextmanager
    def opened(self, recipe: str = "*", worker: str = "*", interval: float = 0.05) -> Iterator[None]:
        """Within the block, every build that reaches its gate (of ``recipe`` on ``worker``) goes straight on."""
        stop = threading.Event()

        def loop() -> None:
            while True:
                self.release(recipe, worker)
                if stop.wait(interval):
                    return

        thread = threading.Thread(target=loop, name="gates-opened", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=10)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


class Fleet:
    """A fleet under ``root`` on ``redis`` and the store at ``store_url``; ``env`` adds to every process's
    environment (none of this process's MANGOS_FARM_* or AWS_* settings reach them).

    With ``metrics`` each process serves /metrics on a port of 127.0.0.1 (:attr:`metrics_ports`). With
    :attr:`fail_fast`, :meth:`wait_for` stops as soon as a process started here exits without being killed.
    """

    fail_fast = False

    def __init__(
        self,
        root: Path,
        redis: RedisServer,
        store_url: str,
        env: Mapping[str, str] | None = None,
        *,
        metrics: bool = True,
    ) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.redis = redis
        self.store_url = store_url
        self.metrics = metrics
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith(("MANGOS_FARM_", "AWS_"))}
        self.base_env |= dict(env or {}) | {"MANGOS_FARM_BROKER": redis.url, "MANGOS_FARM_STORE": store_url}
        self.client_home = root / "client"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}  # every process running, by name
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.coordinator: subprocess.Popen[bytes] | None = None
        self.metrics_ports: dict[str, int] = {}
        self.gates = Gates(root)
        self.cli("keys", "generate")

    def env(self, home: Path) -> dict[str, str]:
        return self.base_env | {"MANGOS_FARM_HOME": str(home)}

    def cli(self, *args: str, check: bool = True, home: Path | None = None) -> subprocess.CompletedProcess[str]:
        return run_cli(args, cwd=self.root, env=self.env(home or self.client_home), check=check)

    def json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    # -- processes -------------------------------------------------------------------------------------------
    def spawn(
        self, name: str, argv: list[str], *, coordinator: bool = False, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """``mangos-farm ARGV`` with home ``root/name`` and its keys (and ``env`` added to its environment),
        output appended to ``root/name.log``."""
        home = self.root / name
        install_fleet_keys(self.client_home / "keys", home, coordinator=coordinator)
        if self.metrics:
            port = self.metrics_ports.setdefault(name, free_port())
            argv = [*argv, "--metrics-port", str(port), "--metrics-addr", "127.0.0.1"]
        with (self.root / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [CLI, *argv], cwd=self.root, env=self.env(home) | dict(env or {}), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.procs[name] = proc
        return proc

    def start_coordinator(self) -> None:
        self.coordinator = self.spawn("coordinator", ["coordinator"], coordinator=True)

    def start_worker(self, name: str, concurrency: int = 1, *, builder_id: str | None = None) -> None:
        """A worker named ``NAME@fleet``; with ``builder_id`` its provenance and records name it so (by default
        every worker of the fleet writes the same builder id)."""
        argv = ["worker", "--concurrency", str(concurrency), "--name", f"{name}@fleet"]
        env = {"MANGOS_FARM_BUILDER_ID": builder_id} if builder_id else {}
        self.workers[name] = self.spawn(name, argv, env=env)

    def kill(self, proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the process group of ``proc``; wait for it if the signal ends it."""
        if proc is None:
            return
        if sig in (signal.SIGKILL, signal.SIGTERM):
            self.procs = {k: p for k, p in self.procs.items() if p is not proc}
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                proc.wait(timeout=30)

    def kill_worker(self, name: str) -> None:
        self.kill(self.workers.pop(name))

    def close(self) -> None:
        for proc in list(self.procs.values()):
            self.kill(proc)
        self.procs.clear()
        self.workers.clear()

    # -- waiting ---------------------------------------------------------------------------------------------
    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = 120, interval: float = 0.3) -> Any:
        """Call ``check`` until it returns something true, and return that; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            if self.fail_fast:
                for name, proc in self.procs.items():
                    if proc.poll() is not None:
                        raise AssertionError(f"{name} exited {proc.returncode}:\n{self.log_tail(name)}")
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout:g}s waiting for {what}\n{self.logs()}")

    def wait_workers(self, n: int, timeout: float = 120) -> list[dict[str, Any]]:
        """Wait until ``n`` workers (not disabled) are registered; returns them."""

        def enabled() -> list[dict[str, Any]] | None:
            found = [w for w in self.json("workers") if not w["disabled"]]
            return found if len(found) >= n else None

        workers: list[dict[str, Any]] = self.wait_for(f"{n} workers", enabled, timeout)
        return workers

    def status(self, run: str) -> dict[str, Any]:
        status: dict[str, Any] = self.json("status", run)
        return status

    def wait_held(self, count: int, recipe: str = "*", worker: str = "*", timeout: float = 120) -> list[Held]:
        """Wait until at least ``count`` builds (of ``recipe`` on ``worker``) are held at their gates; those."""
        held: list[Held] = self.wait_for(
            f"{count} build(s) of {recipe} held on {worker}",
            lambda: h if len(h := self.gates.held(recipe, worker)) >= count else None,
            timeout,
            interval=0.1,
        )
        return held

    def metric(self, sample: str, process: str = "coordinator", **labels: str) -> float:
        """The sum of the samples named ``sample`` (with ``labels``) that ``process`` serves on /metrics now."""
        url = f"http://127.0.0.1:{self.metrics_ports[process]}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def wait_run(self, run: str, timeout: float = 300, poll: float = 0.3) -> dict[str, Any]:
        """Wait until run ``run`` is no longer active; its status."""
        status: dict[str, Any] = self.wait_for(
            f"run {run}", lambda: (s := self.status(run))["status"] != "active" and s, timeout, poll
        )
        return status

    # -- logs ------------------------------------------------------------------------------------------------
    def builds_executed(self, recipe: str) -> int:
        """How many times any worker started building ``recipe`` (from the workers' own logs)."""
        count = 0
        for log in self.root.glob("w*.log"):
            count += log.read_text(errors="replace").count(f"> build recipe={recipe} ")
        return count

    def log_tail(self, name: str, limit: int = 3000) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-limit:] if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"==== {log.name}\n{self.log_tail(log.stem)}" for log in sorted(self.root.glob("*.log")))


@contextlib.contextmanager
def local_fleet(tmp_path: Path, redis: RedisServer, env: Mapping[str, str] | None = None) -> Iterator[Fleet]:
    """A fail-fast fleet under ``tmp_path/fleet`` on a fresh ``redis``, its store the directory ``tmp_path/store``;
    closed (every process stopped) on the way out."""
    redis.fresh()
    fleet = Fleet(tmp_path / "fleet", redis, str(tmp_path / "store"), env)
    fleet.fail_fast = True
    try:
        yield fleet
    finally:
        fleet.close()

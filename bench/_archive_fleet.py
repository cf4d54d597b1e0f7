"""The fleet side of :mod:`bench.bench_archive`: the archive graph written as recipes, a fleet whose coordinator
state has a redis-server of its own (so that the farm's state-store commands are counted apart from Celery's
broker traffic), the planning-and-submitting helper process, and the wait for N dispatches with progress.

Every process started here runs in its own session and is stopped in :meth:`ArchiveFleet.close`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import _archive_measure as measure
from bench._archive_graph import ArchiveGraph
from bench._common import progress
from bench._fleet import POLL_CLIENT, BenchFleet, Command, CommandLog, write_recipe
from tests.lib.cli import CLI
from tests.lib.redis_server import RedisServer
from tests.lib.tools import free_port, stop_group

REPO_ROOT = Path(__file__).resolve().parents[1]


def step_for(name: str, sleep: float) -> str:
    """The one step of a bench recipe: create its declared output (after ``sleep`` seconds, if any)."""
    touch = f'true > "$OUT/{name}"'
    return f"sleep {sleep:g} && {touch}" if sleep > 0 else touch


def write_recipes(graph: ArchiveGraph, directory: Path, git_url: str, commit: str, sleep: float) -> int:
    """One recipe per source of ``graph``, all from the one commit of ``git_url``; their names (and so their
    contents and build keys) differ. Returns how many were written."""
    for name in graph.order:
        write_recipe(directory, name, git_url=git_url, commit=commit, steps=[step_for(name, sleep)],
                     depends=graph.deps[name])  # fmt: skip
    return len(graph.order)


class Submitter:
    """``python -m bench._archive_submit DIR`` in the client's environment: plans once, submits per request."""

    def __init__(self, fleet: BenchFleet, recipes: Path, profile: Path | None) -> None:
        argv = [sys.executable, "-m", "bench._archive_submit", str(recipes)]
        argv += ["--profile", str(profile)] if profile else []
        self.log = (fleet.root / "submitter.log").open("ab")
        self.proc = subprocess.Popen(
            argv, cwd=REPO_ROOT, env=fleet.env(fleet.client_home), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.log, text=True, start_new_session=True,
        )  # fmt: skip
        self.root = fleet.root

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            tail = (self.root / "submitter.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the planning/submitting helper exited {self.proc.wait()}:\n{tail}")
        found: dict[str, Any] = json.loads(line)
        return found

    def planned(self) -> dict[str, Any]:
        return self._read()

    def submit(self, arch: str, *, force: bool) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{arch}{' force' if force else ''}\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stop_group(self.proc)  # type: ignore[arg-type]
        self.log.close()


@dataclass
class Window:
    """One measured stretch: from ``start`` until ``wanted`` dispatches of one arch (or the timeout)."""

    name: str
    start: float  # time.time()
    wanted: int
    end: float = 0.0
    counted: int = 0
    reached: bool = False
    cpu_s: float = 0.0  # the coordinator's CPU time over the window
    before: dict[str, dict[str, int]] = field(default_factory=dict)  # Redis counters (see ArchiveFleet.counters)
    after: dict[str, dict[str, int]] = field(default_factory=dict)
    commands: list[Command] = field(default_factory=list)  # the state store's, each with its connection's name


class ArchiveFleet:
    """A :class:`BenchFleet` (redis-server as broker, store, workers) whose coordinator state is on a second
    redis-server, with the coordinator's /metrics served on a port of 127.0.0.1."""

    def __init__(self, root: Path, appendfsync: str) -> None:
        self.fleet = BenchFleet(root / "fleet", appendfsync=appendfsync, separate_state=True)
        assert self.fleet.state is not None
        self.state: RedisServer = self.fleet.state
        self.state_client = self.state.client()
        self.state_client.client_setname(POLL_CLIENT)  # this bench's own reads are not counted as the farm's
        self.broker_client = self.fleet.redis.client()
        self.metrics_port = free_port()
        self.submitter: Submitter | None = None
        self.peaks: dict[str, int] = {}  # the largest coordinator RSS and Redis memory sampled

    def start(self, workers: int, concurrency: int) -> int:
        argv = ["coordinator", "--metrics-port", str(self.metrics_port), "--metrics-addr", "127.0.0.1"]
        self.fleet.coordinator = self.fleet.spawn("coordinator", argv, coordinator=True)
        return self.fleet.start_workers(workers, concurrency)

    @property
    def coordinator_pid(self) -> int:
        assert self.fleet.coordinator is not None
        return self.fleet.coordinator.pid

    def counters(self) -> dict[str, dict[str, int]]:
        return {"state": measure.redis_counters(self.state_client),
                "broker": measure.redis_counters(self.broker_client)}  # fmt: skip

    def dispatched(self, arch: str) -> float:
        """Builds the coordinator dispatched for ``arch`` since it started."""
        return measure.total(measure.scrape(self.metrics_port), "mangos_builds_started_total", arch=arch)

    def sample(self) -> dict[str, int]:
        """Coordinator RSS and Redis memory now; :attr:`peaks` keeps the largest seen."""
        now = {
            "coordinator_rss": measure.proc_memory(self.coordinator_pid).get("VmRSS", 0),
            "state_used_memory": measure.redis_memory(self.state_client)["used_memory"],
            "broker_used_memory": measure.redis_memory(self.broker_client)["used_memory"],
        }
        for k, v in now.items():
            self.peaks[k] = max(self.peaks.get(k, 0), v)
        return now

    def window(
        self, name: str, label: str, arch: str, wanted: int, *, timeout: float, since: tuple[float, float] | None = None
    ) -> Window:
        """Wait until ``wanted`` more builds of ``arch`` are dispatched (or ``timeout`` passes), with progress (as
        ``label``) and an ETA on stderr, logging the state store's commands meanwhile (to state-commands-NAME.log).
        The window starts now, or at ``since`` = (time, builds of ``arch`` dispatched by then)."""
        w = Window(name, time.time(), wanted, before=self.counters())
        cpu = measure.proc_cpu(self.coordinator_pid)
        base = self.dispatched(arch)
        if since is not None:
            w.start, base = since
        start = last = time.monotonic()
        with CommandLog(self.state, self.fleet.root / f"state-commands-{name}.log") as log:
            while True:
                w.counted = int(self.dispatched(arch) - base)
                elapsed = time.monotonic() - start
                if w.counted >= wanted or elapsed > timeout:
                    break
                self.check_alive()
                now = self.sample()
                if time.monotonic() - last >= 5:
                    last = time.monotonic()
                    rate = w.counted / elapsed if elapsed else 0.0
                    eta = f"ETA {(wanted - w.counted) / rate:.0f}s" if rate else "ETA unknown (none dispatched yet)"
                    progress(f"{label}: {w.counted}/{wanted} dispatches in {elapsed:.0f}s ({rate:.1f}/s), {eta}; "
                             f"coordinator RSS {now['coordinator_rss'] / 2**20:.0f} MiB, "
                             f"state Redis {now['state_used_memory'] / 2**20:.0f} MiB")  # fmt: skip
                time.sleep(0.5)
            w.end, w.after = time.time(), self.counters()
            w.cpu_s = measure.proc_cpu(self.coordinator_pid) - cpu
        w.reached = w.counted >= wanted
        w.commands = log.commands()
        return w

    def check_alive(self) -> None:
        for name, proc in self.fleet.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited {proc.returncode}:\n{self.fleet.log_tail(name)}")

    def cancel(self, runs: dict[str, str], built: str, profile: Path | None = None) -> dict[str, Any]:
        """``mangos-farm cancel`` each run (the ``built`` arch's first), each timed; then, a few seconds on, how
        many builds of that arch were dispatched after its cancel returned (0 expected). With ``profile``, the
        first cancel runs under py-spy (collapsed stacks to that file; its time is then not a figure)."""
        seconds: dict[str, float] = {}
        before = 0.0
        for arch in sorted(runs, key=lambda a: a != built):
            t0 = time.monotonic()
            if profile is not None and arch == built:
                py_spy = str(Path(sys.executable).parent / "py-spy")
                argv = [py_spy, "record", "--idle", "--nolineno", "--format", "raw", "--rate", "200", "-o",
                        str(profile), "--", CLI, "cancel", runs[arch]]  # fmt: skip
                subprocess.run(argv, env=self.fleet.env(self.fleet.client_home), cwd=self.fleet.root,
                               capture_output=True, check=True)  # fmt: skip
            else:
                self.fleet.cli("cancel", runs[arch])
            seconds[arch] = round(time.monotonic() - t0, 3)
            if arch == built:
                before = self.dispatched(built)
        time.sleep(3)  # a tick or more after the cancel
        after = self.dispatched(built)
        return {"seconds": seconds, "total_s": round(sum(seconds.values()), 3),
                "dispatched_after_cancel": int(after - before)}  # fmt: skip

    def close(self) -> None:
        if self.submitter is not None:
            self.submitter.close()
        for client in (self.state_client, self.broker_client):
            client.close()
        self.fleet.close()

"""A real fleet on this machine for the benchmarks, on the shared harness (:mod:`tests.lib.fleet`): redis-server
(AOF fsynced every second, as a production Redis), a local directory store, one ``mangos-farm coordinator`` process
and ``mangos-farm worker`` processes, all driven through the CLI as an operator would; plus what the benchmarks
read from it (build timelines, Redis command counts, py-spy profiles).

Every process this module starts runs in its own session and is stopped by its process-group id in
:meth:`BenchFleet.close`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from bench._common import percentile, progress
from farm.coordinator.layout import ACTIVE as ACTIVE_RUNS
from tests.lib import git as _git
from tests.lib.fleet import Fleet
from tests.lib.recipes import write_recipe
from tests.lib.redis_server import RedisServer
from tests.lib.tools import stop_group

__all__ = ["BenchFleet", "BuildTimes", "make_repo", "percentile", "progress", "write_recipe"]


def make_repo(path: Path) -> str:
    """One small git repository with one commit (fixed identity and dates: the same commit id every time)."""
    return _git.make_repo(
        path, {"README": "bench source\n", "src/data.txt": "some data\n" * 20}, message="bench source"
    )


@dataclass
class BuildTimes:
    """One build's timeline, all from the same machine clock (time.time())."""

    name: str
    worker: str | None
    dispatched: float  # coordinator: the tick in which it dispatched the build (job.dispatched_at)
    started: float  # worker: lease claimed, just before execute_build (job.started_at)
    done: float | None  # worker: Celery stored the result in Redis (result meta date_done)
    noticed: float  # coordinator: the tick in which it collected the outcome (job.finished_at)
    execute: float | None  # worker: execute_build's own duration (BuildOutcome.duration)

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in vars(self).items()}


class BenchFleet(Fleet):
    """redis-server + coordinator + workers under ``root``; each process has its own MANGOS_FARM_HOME and the
    fleet's keys. A process that exits on its own ends any wait at once (a benchmark cannot recover from it).

    :attr:`redis` is Celery's broker (and result backend). With ``separate_state`` the coordinator state is on a
    second redis-server (:attr:`state`, MANGOS_FARM_STATE), and every process names its state connections after
    its home (``coordinator``, ``w1``, ...; the CLI as :attr:`client_name`), so :class:`CommandLog` can tell whose
    command is whose."""

    fail_fast = True

    def __init__(
        self,
        root: Path,
        *,
        appendfsync: str = "everysec",
        extra_env: dict[str, str] | None = None,
        separate_state: bool = False,
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.profilers: list[subprocess.Popen[bytes]] = []
        self.state: RedisServer | None = None
        self.client_name = "client"
        redis = RedisServer(root / "redis", appendfsync)
        try:
            redis.start()
            if separate_state:
                self.state = RedisServer(root / "state-redis", appendfsync)
                self.state.start()
            super().__init__(root, redis, str(root / "store"), extra_env, metrics=False)
        except BaseException:
            if self.state is not None:
                self.state.stop()
            redis.stop()
            raise

    @property
    def state_url(self) -> str:
        """Where the coordinator state is: the second redis-server, MANGOS_FARM_STATE, or the broker's."""
        if self.state is not None:
            return self.state.url
        return self.base_env.get("MANGOS_FARM_STATE") or self.redis.url

    def spawn(self, name: str, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        """As :meth:`Fleet.spawn`; a coordinator or worker serves no /metrics (its default port may be taken by
        another farm on this machine)."""
        if argv[:1] in (["coordinator"], ["worker"]) and "--metrics-port" not in argv:
            argv = [*argv, "--metrics-port", "0"]
        return super().spawn(name, argv, **kw)

    def env(self, home: Path) -> dict[str, str]:
        env = super().env(home)
        if self.state is not None:
            name = self.client_name if home == self.client_home else home.name
            env["MANGOS_FARM_STATE"] = f"{self.state.url}?client_name={name}"
        return env

    def start_workers(self, count: int, concurrency: int) -> int:
        """Start ``count`` workers; returns the build slots they registered (what the coordinator dispatches to)."""
        for i in range(count):
            self.start_worker(f"w{i + 1}", concurrency)
        workers = self.wait_workers(count)
        registered = sum(int(w["concurrency"]) for w in workers)
        if registered != count * concurrency:
            progress(f"WARNING: the workers registered {registered} slots, not {count} x {concurrency}")
        return registered

    def submit(self, recipe_dir: Path) -> str:
        """``mangos-farm rebuild DIR`` on a fleet plans, submits and prints the run id."""
        return self.cli("rebuild", str(recipe_dir)).stdout.strip().splitlines()[-1]

    def wait_run(self, run: str, timeout: float = 300, poll: float = 0.3, full_every: float = 10.0) -> dict[str, Any]:
        """Wait until the run is no longer active, then return ``mangos-farm status RUN --json``; fail if a build
        failed (a benchmark run must build everything once: a retry or a worker taken out of rotation spoils it).

        The wait itself watches the coordinator state's active-runs set every ``poll`` seconds (one SISMEMBER on a
        connection named :data:`POLL_CLIENT`), and runs the CLI's ``status`` only every ``full_every`` seconds (to
        fail fast) and at the end: each ``status`` is a Python process of about 0.15 s of CPU, which, every two
        seconds, was the benchmark's own load on the two cores it measures the farm on. A state that is not a plain
        redis:// URL (TLS, SQLite) is watched with ``status`` alone, every ``poll`` seconds."""
        import redis

        url = self.state_url.split("?")[0]
        watch = redis.Redis.from_url(url, client_name=POLL_CLIENT) if url.startswith("redis://") else None
        last_full = time.monotonic()

        def check() -> dict[str, Any] | None:
            nonlocal last_full
            active = watch is None or bool(watch.sismember(ACTIVE_RUNS, run))
            if watch is not None and active and time.monotonic() - last_full < full_every:
                return None
            last_full = time.monotonic()
            status = self.status(run)
            for b in status["builds"]:
                if b["state"] in ("failed", "blocked") or b.get("failures"):
                    detail = (b.get("failures") or [b.get("error")])[0]
                    raise RuntimeError(f"run {run}: build {b['recipe']} is {b['state']}: {b['why']}; {detail}")
            return status if status["status"] != "active" else None

        try:
            found: dict[str, Any] = self.wait_for(f"run {run}", check, timeout, poll)
        finally:
            if watch is not None:
                watch.close()
        return found

    def reset_command_stats(self, server: RedisServer | None = None) -> None:
        r = (server or self.redis).client()
        r.config_resetstat()
        r.close()

    def command_stats(self, server: RedisServer | None = None) -> dict[str, int]:
        """Redis commands served since :meth:`reset_command_stats`, by command, all clients together (by default
        the broker's)."""
        r = (server or self.redis).client()
        info: dict[str, Any] = r.info("commandstats")
        r.close()
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}

    def timelines(self, run: str, status: dict[str, Any]) -> list[BuildTimes]:
        """Each build's timeline: the status JSON's times plus, from the broker, the worker's result time.

        The task id is not part of the status JSON, so it is read from the run's jobs (the coordinator state's
        own interface); the result meta (``celery-task-meta-<id>``) carries ``date_done``, set by the worker when
        it stores the result.
        """
        from farm.coordinator.kv import open_kv
        from farm.coordinator.runs import RunStore

        task_ids = {name: job.task_id for name, job in RunStore(open_kv(self.state_url)).jobs(run).items()}
        r = self.redis.client()
        out = []
        for b in status["builds"]:
            if b["state"] != "built":
                continue
            done = execute = None
            tid = task_ids.get(b["recipe"])
            meta = r.get(f"celery-task-meta-{tid}") if tid else None
            if meta:
                m = json.loads(meta)
                if m.get("date_done"):
                    done = datetime.fromisoformat(m["date_done"]).timestamp()
                result = m.get("result")
                if isinstance(result, dict):
                    execute = float(result.get("duration") or 0.0) or None
            out.append(
                BuildTimes(
                    name=b["recipe"],
                    worker=b.get("worker"),
                    dispatched=float(b["dispatched_at"]),
                    started=float(b["started_at"] or b["dispatched_at"]),
                    done=done,
                    noticed=float(b["finished_at"]),
                    execute=execute,
                )
            )
        r.close()
        return out

    # -- profiling (py-spy, installed in the venv) -------------------------------------------------------------
    def start_profiler(self, name: str, out: Path, rate: int = 200) -> subprocess.Popen[bytes]:
        """Sample process ``name`` (and its pool children) with py-spy until :meth:`stop_profilers`, idle threads
        included (so time spent waiting on Redis, git or bwrap shows), as collapsed stacks in ``out``."""
        py_spy = str(Path(sys.executable).parent / "py-spy")
        argv = [py_spy, "record", "--idle", "--subprocesses", "--nolineno", "--format", "raw", "--rate", str(rate)]
        argv += ["--pid", str(self.procs[name].pid), "--output", str(out)]
        with (self.root / f"py-spy-{name}.log").open("ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.profilers.append(proc)
        return proc

    def stop_profilers(self) -> None:
        for proc in self.profilers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)  # py-spy writes its output on SIGINT
        for proc in self.profilers:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                stop_group(proc)
        self.profilers.clear()

    def close(self) -> None:
        self.stop_profilers()
        super().close()
        self.redis.stop()
        if self.state is not None:
            self.state.stop()

    def __enter__(self) -> BenchFleet:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


_MONITOR_LINE = re.compile(r'^(\d+\.\d+) \[\d+ ([^\]]+)\] "((?:[^"\\]|\\.)*)"(?: "((?:[^"\\]|\\.)*)")?')


@dataclass(frozen=True)
class Command:
    at: float  # the server's clock (this machine's time.time())
    client: str  # the connection's name (CLIENT SETNAME), or its address if it has none
    name: str  # upper case, e.g. "HSET"
    key: str  # the first argument, if any


class CommandLog:
    """Every command a redis-server serves while the log is open, from ``redis-cli monitor`` (a C process, so
    watching costs the server little and this process nothing), each with the name of the connection that sent it.
    """

    def __init__(self, server: RedisServer, path: Path) -> None:
        self.server, self.path = server, path
        self.proc: subprocess.Popen[bytes] | None = None
        self.names: dict[str, str] = {}

    def __enter__(self) -> CommandLog:
        r = self.server.client()  # the connections already open were named before the log starts
        self.names = {c["addr"]: c["name"] for c in r.client_list() if c.get("name")}
        r.close()
        with self.path.open("wb") as out:
            argv = ["redis-cli", "-p", str(self.server.port), "monitor"]
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while self.path.stat().st_size == 0:  # redis-cli prints OK once the server streams to it
            if time.monotonic() > deadline:
                raise RuntimeError("redis-cli monitor did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.2)  # the last commands reach redis-cli
        if self.proc is not None:
            stop_group(self.proc)

    def commands(self) -> list[Command]:
        names = dict(self.names)  # address -> connection name
        out = []
        for line in self.path.read_text(errors="replace").splitlines():
            m = _MONITOR_LINE.match(line)
            if m is None:
                continue
            at, addr, name, key = float(m[1]), m[2], m[3].upper(), m[4] or ""
            addr = "lua (inside scripts)" if addr == "lua" else addr  # besides the EVAL/EVALSHA that ran them
            if name == "CLIENT" and key.upper() == "SETNAME":
                names[addr] = line.rsplit(" ", 1)[-1].strip('"')
            out.append(Command(at, names.get(addr, addr), name, key))
        return out


# Commands of the state store that are not the cost of a build: what is done per second rather than per build.
EXCLUDED = {
    "heartbeats": "lease beats (every SET mangos:beat:*, a first beat at the claim included)",
    "worker presence": "workers announcing themselves (SET mangos:worker:*)",
    "connection upkeep": "HELLO, CLIENT SETNAME/SETINFO, PING health checks, SELECT",
    "status polls": "the benchmark's own `mangos-farm status` calls (connection name bench-poll)",
}
POLL_CLIENT = "bench-poll"


def excluded_as(c: Command) -> str | None:
    """Why command ``c`` is not counted as part of a build's cost, or None if it is."""
    if c.client == POLL_CLIENT:
        return "status polls"
    if c.name in ("HELLO", "CLIENT", "PING", "SELECT", "AUTH"):
        return "connection upkeep"
    if c.name == "SET" and c.key.startswith("mangos:beat:"):
        return "heartbeats"
    if c.name == "SET" and c.key.startswith("mangos:worker:"):
        return "worker presence"
    return None


def attribute(commands: list[Command], start: float, end: float, builds: int) -> dict[str, Any]:
    """The state store's commands from ``start`` (the submit) to ``end`` (the last build recorded), per build:
    those counted (by connection and by command) and those excluded (by reason)."""
    counted: dict[str, dict[str, int]] = {}
    excluded: dict[str, int] = {}
    for c in commands:
        if not start <= c.at <= end:
            continue
        why = excluded_as(c)
        if why is not None:
            excluded[why] = excluded.get(why, 0) + 1
            continue
        who = counted.setdefault(c.client, {})
        who[c.name] = who.get(c.name, 0) + 1
    by_command: dict[str, int] = {}
    for who in counted.values():
        for name, n in who.items():
            by_command[name] = by_command.get(name, 0) + n
    total = sum(by_command.values())

    def per_build(d: dict[str, int]) -> dict[str, float]:
        return {k: round(v / builds, 2) for k, v in sorted(d.items(), key=lambda kv: (-kv[1], kv[0]))}

    return {
        "per_build": round(total / builds, 2),
        "by_connection": per_build({k: sum(v.values()) for k, v in counted.items()}),
        "by_command": per_build(by_command),
        "excluded_per_build": per_build(excluded),
        "excluded_how": {k: EXCLUDED[k] for k in sorted(EXCLUDED)},
        "window_seconds": round(end - start, 3),
    }


def idle_rate(commands: list[Command], start: float, end: float) -> float:
    """The state commands per second from ``start`` to ``end`` while no run is active (excluded ones aside):
    what the coordinator's ticks and the workers cost with nothing to do."""
    n = sum(1 for c in commands if start <= c.at <= end and excluded_as(c) is None)
    return round(n / (end - start), 1) if end > start else float("nan")


def profile_summary(path: Path, within: str, top: int = 25) -> list[tuple[str, float]]:
    """From py-spy's collapsed stacks: the functions with the largest inclusive share of the samples whose stack
    contains a frame matching ``within`` (e.g. ``"_build (workers/tasks.py)"``), largest first."""
    counts: dict[str, int] = {}
    total = 0
    if not path.exists():
        return []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit() or within not in stack:
            continue
        frames = stack.split(";")
        frames = frames[next(i for i, f in enumerate(frames) if within in f) :]
        total += int(n)
        for frame in set(frames):
            counts[frame] = counts.get(frame, 0) + int(n)
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
    return [(frame, c / total) for frame, c in ranked] if total else []


def profile_share(path: Path, part: str, whole: str) -> float:
    """Share of the samples with ``whole`` in their stack that also have ``part`` (e.g. ticking vs serving)."""
    num = den = 0
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            stack, _, n = line.rpartition(" ")
            if n.isdigit() and whole in stack:
                den += int(n)
                num += int(n) if part in stack else 0
    return num / den if den else float("nan")

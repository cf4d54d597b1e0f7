"""A real fleet on this machine for the benchmarks: redis-server, a local directory store, one ``mangos-farm
coordinator`` process and ``mangos-farm worker`` processes, all driven through the CLI as an operator would.

Shared by :mod:`bench.bench_sched` and :mod:`bench.bench_overhead`. Every process this module starts runs in its
own session and is stopped by its process-group id in :meth:`BenchFleet.close`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

CLI = str(Path(sys.executable).parent / "mangos-farm")
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Farm Bench",
    "GIT_AUTHOR_EMAIL": "bench@mangos.invalid",
    "GIT_COMMITTER_NAME": "Farm Bench",
    "GIT_COMMITTER_EMAIL": "bench@mangos.invalid",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
}
FIXED_DATE = "2026-02-03T04:05:06Z"


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: Iterable[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    data = sorted(values)
    if not data:
        return float("nan")
    pos = (len(data) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


# -- sources and recipes ---------------------------------------------------------------------------------------
def git(cwd: Path, *args: str) -> str:
    env = dict(os.environ) | GIT_ENV | {"GIT_AUTHOR_DATE": FIXED_DATE, "GIT_COMMITTER_DATE": FIXED_DATE}
    out = subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return out.stdout.strip()


def make_repo(path: Path) -> str:
    """One small git repository with one commit (fixed dates, so the same commit id every time)."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    (path / "README").write_text("bench source\n")
    (path / "src").mkdir()
    (path / "src" / "data.txt").write_text("some data\n" * 20)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "bench source")
    return git(path, "rev-parse", "HEAD")


def write_recipe(
    directory: Path, name: str, *, git_url: str, commit: str, steps: list[str], depends: Iterable[str] = ()
) -> Path:
    """A recipe whose single output is the file ``$OUT/<name>``."""
    deps = list(depends)
    lines = [f'name = "{name}"', 'version = "1.0"', f'outputs = ["{name}"]']
    if deps:
        lines.append("build-depends = [" + ", ".join(f'"{d}"' for d in deps) + "]")
    lines += ["", "[source]", f'git = "{git_url}"', f'commit = "{commit}"', "", "[build]", "steps = ["]
    lines += [f"  {json.dumps(s)}," for s in steps] + ["]"]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


# -- processes -------------------------------------------------------------------------------------------------
def stop_group(proc: subprocess.Popen[bytes] | None, grace: float = 10.0) -> None:
    """SIGTERM the process group of a process this module started, then SIGKILL it after ``grace``."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    except ProcessLookupError:
        pass


class RedisServer:
    """redis-server on a free loopback port. Persistence as a production Redis would have it: AOF fsynced every
    second (``appendfsync always``, as the fault-injection tests use, puts an fsync under every write)."""

    def __init__(self, workdir: Path, appendfsync: str = "everysec") -> None:
        self.workdir = workdir
        self.port = free_port()
        self.appendfsync = appendfsync
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is required (apt-get install redis-server)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.workdir),
            "--appendonly", "no" if self.appendfsync == "off" else "yes",
            "--appendfsync", "no" if self.appendfsync == "off" else self.appendfsync,
            "--save", "",
            "--daemonize", "no",
        ]  # fmt: skip
        with (self.workdir / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url)

    def stop(self) -> None:
        stop_group(self.proc)


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


class BenchFleet:
    """redis-server + coordinator + workers under ``root``; each process has its own MANGOS_FARM_HOME."""

    def __init__(self, root: Path, *, appendfsync: str = "everysec", extra_env: dict[str, str] | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(root / "redis", appendfsync)
        self.redis.start()
        self.store = root / "store"
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith(("MANGOS_FARM_", "AWS_"))}
        self.base_env |= {"MANGOS_FARM_BROKER": self.redis.url, "MANGOS_FARM_STORE": str(self.store)}
        self.base_env |= extra_env or {}
        self.client_home = root / "client"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.profilers: list[subprocess.Popen[bytes]] = []
        self.cli("keys", "generate")

    def env(self, home: Path) -> dict[str, str]:
        return self.base_env | {"MANGOS_FARM_HOME": str(home)}

    def cli(self, *args: str) -> str:
        proc = subprocess.run(
            [CLI, *args], cwd=self.root, env=self.env(self.client_home), capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(f"mangos-farm {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json"))

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        home = self.root / name
        (home / "keys").mkdir(parents=True, exist_ok=True)
        for f in ("builder.key", "builder.pub"):  # one organization: every process signs with its builder key
            shutil.copy(self.client_home / "keys" / f, home / "keys" / f)
        with (self.root / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [CLI, *argv],
                cwd=self.root,
                env=self.env(home),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    def start_coordinator(self) -> None:
        self.spawn("coordinator", ["coordinator"])

    def start_workers(self, count: int, concurrency: int) -> int:
        """Start ``count`` workers; returns the build slots they registered (what the coordinator dispatches to)."""
        for i in range(count):
            name = f"w{i + 1}"
            self.spawn(name, ["worker", "--concurrency", str(concurrency), "--name", f"{name}@fleet"])

        def alive() -> list[dict[str, Any]] | None:
            found: list[dict[str, Any]] = self.json("workers")
            return found if len(found) >= count else None

        workers: list[dict[str, Any]] = self.wait_for(f"{count} workers", alive, timeout=120)
        registered = sum(int(w["concurrency"]) for w in workers)
        if registered != count * concurrency:
            progress(f"WARNING: the workers registered {registered} slots, not {count} x {concurrency}")
        return registered

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float, interval: float = 0.3) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited {proc.returncode}:\n{self.log_tail(name)}")
            time.sleep(interval)
        raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")

    def log_tail(self, name: str, limit: int = 3000) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-limit:] if path.exists() else ""

    def submit(self, recipe_dir: Path) -> str:
        """``mangos-farm rebuild DIR`` on a fleet plans, submits and prints the run id."""
        return self.cli("rebuild", str(recipe_dir)).strip().splitlines()[-1]

    def wait_run(self, run: str, timeout: float, poll: float) -> dict[str, Any]:
        """Poll ``mangos-farm status RUN --json`` until the run is no longer active; fail fast if a build failed
        (a benchmark run must build everything once: a retry or a worker taken out of rotation spoils it)."""

        def check() -> dict[str, Any] | None:
            status: dict[str, Any] = self.json("status", run)
            for b in status["builds"]:
                if b["state"] in ("failed", "blocked") or b.get("failures"):
                    detail = (b.get("failures") or [b.get("error")])[0]
                    raise RuntimeError(f"run {run}: build {b['recipe']} is {b['state']}: {b['why']}; {detail}")
            return status if status["status"] != "active" else None

        found: dict[str, Any] = self.wait_for(f"run {run}", check, timeout, poll)
        return found

    def reset_command_stats(self) -> None:
        r = self.redis.client()
        r.config_resetstat()
        r.close()

    def command_stats(self) -> dict[str, int]:
        """Redis commands served since :meth:`reset_command_stats`, by command, all clients together."""
        r = self.redis.client()
        info: dict[str, Any] = r.info("commandstats")
        r.close()
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}

    def timelines(self, run: str, status: dict[str, Any]) -> list[BuildTimes]:
        """Each build's timeline: the status JSON's times plus, from Redis, the worker's result time.

        The task id is not part of the status JSON, so it is read from the run's job hash; the result meta
        (``celery-task-meta-<id>``) carries ``date_done``, set by the worker when it stores the result.
        """
        r = self.redis.client()
        raw = r.hgetall(f"mangos:run:{run}:jobs")
        task_ids = {k.decode(): json.loads(v).get("task_id") for k, v in raw.items()}
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
        for proc in self.procs.values():
            stop_group(proc)
        self.procs.clear()
        self.redis.stop()

    def __enter__(self) -> BenchFleet:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


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

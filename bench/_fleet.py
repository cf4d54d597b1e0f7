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
import signal
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from bench._common import percentile, progress
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
    fleet's keys. A process that exits on its own ends any wait at once (a benchmark cannot recover from it)."""

    fail_fast = True

    def __init__(self, root: Path, *, appendfsync: str = "everysec", extra_env: dict[str, str] | None = None) -> None:
        root.mkdir(parents=True, exist_ok=True)
        redis = RedisServer(root / "redis", appendfsync)
        redis.start()
        self.profilers: list[subprocess.Popen[bytes]] = []
        try:
            super().__init__(root, redis, str(root / "store"), extra_env, metrics=False)
        except BaseException:
            redis.stop()
            raise

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

    def wait_run(self, run: str, timeout: float = 300, poll: float = 0.3) -> dict[str, Any]:
        """Poll ``mangos-farm status RUN --json`` until the run is no longer active; fail fast if a build failed
        (a benchmark run must build everything once: a retry or a worker taken out of rotation spoils it)."""

        def check() -> dict[str, Any] | None:
            status = self.status(run)
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
        super().close()
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

"""Local worker processes for the embedded farm: started for a rebuild, stopped at its end."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from farm.build import BuildRequest
from farm.errors import E, FarmError
from farm.recipes.needs import CAPABILITIES, DEFAULT_CLASS
from farm.run import Process, spawn, tail
from farm.settings import Settings
from workers.app import build_queues

log = logging.getLogger(__name__)


CAPABILITIES_ENV = "MANGOS_FARM_CAPABILITIES"  # what a worker announces it can do (comma-separated)


def worker_argv(
    concurrency: int, name: str, arch: str, loglevel: str = "INFO", capabilities: Sequence[str] = ()
) -> list[str]:
    """The Celery worker's command: it consumes the queue of every class of build its ``capabilities`` serve."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.app",
        "worker",
        "--pool",
        "prefork",
        "--concurrency",
        str(concurrency),
        "--queues",
        ",".join(build_queues(arch, capabilities)),
        "--hostname",
        name,
        "--loglevel",
        loglevel,
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]


class LocalWorkers:
    def __init__(self, settings: Settings, logfile: Path) -> None:
        self.settings = settings
        self.logfile = logfile
        self.proc: Process | None = None

    def start(self) -> None:
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ) | self.settings.to_env()
        env["MANGOS_FARM_HOME"] = str(Path(self.settings.home).resolve())
        # The embedded farm's workers take every class: a build this host cannot run fails with its own error
        # rather than waiting for a worker that never comes.
        env[CAPABILITIES_ENV] = ",".join(CAPABILITIES)
        name = f"local-{os.getpid()}@%h"
        argv = worker_argv(self.settings.workers, name, self.settings.build_arch, capabilities=CAPABILITIES)
        log.info("starting %d local build worker(s)", self.settings.workers)
        with self.logfile.open("ab") as out:
            self.proc = spawn(argv, env=env, stdout=out, stderr_to_stdout=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 1.0) -> None:
        """Stop the workers once the run has collected every outcome.

        Nothing is in flight by then, so there is nothing a slow warm shutdown could save: Celery's synchronous
        loop on the SQL transport takes about 5 s to notice SIGTERM, so after a short grace the process group is
        killed. A message acknowledged too late for this is purged when the next embedded run starts.
        """
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def __enter__(self) -> LocalWorkers:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class EmbeddedDispatcher:
    """A Celery dispatcher that owns local worker processes and notices if they die."""

    def __init__(self, settings: Settings, logfile: Path) -> None:
        from workers.app import make_app
        from workers.dispatch import CeleryDispatcher

        self.workers = LocalWorkers(settings, logfile)
        self.app = make_app(settings)
        self.app.control.purge()  # the embedded broker is ours alone: drop leftovers of a killed run
        self.inner = CeleryDispatcher(self.app)
        self.workers.start()

    def submit(self, request: BuildRequest, *, arch: str, task_id: str, cls: str = DEFAULT_CLASS) -> str:
        return self.inner.submit(request, arch=arch, task_id=task_id, cls=cls)

    def check(self) -> None:
        """Builds are in flight: the local workers must still be there to carry them out."""
        if not self.workers.alive():
            raise FarmError(
                E.WORKER,
                "the local build workers exited unexpectedly",
                hint=f"see their log: {self.workers.logfile}\n{tail(self._log(), 2000)}",
            )

    def revoke(self, task_id: str) -> None:
        self.inner.revoke(task_id)

    def stop_consuming(self, worker: str, arch: str) -> None:
        self.inner.stop_consuming(worker, arch)

    def _log(self) -> bytes:
        try:
            return self.workers.logfile.read_bytes()
        except OSError:
            return b""

    def close(self) -> None:
        self.workers.stop()

"""Live progress for a rebuild: a status line on a terminal, one line per event otherwise."""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import TextIO

from farm.coordinator.runs import Job, State

LABEL = {
    State.QUEUED: "queued  ",
    State.RUNNING: "building",
    State.BUILT: "built   ",
    State.CACHED: "cached  ",
    State.FAILED: "FAILED  ",
    State.BLOCKED: "blocked ",
    State.WAITING: "retry   ",
    State.CANCELLED: "cancelled",
}


class Progress:
    def __init__(self, total: int, stream: TextIO | None = None, quiet_cached: bool = True) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.quiet_cached = quiet_cached
        self.start = time.monotonic()
        self.states: dict[str, State] = {}
        self._status_shown = False

    def _status(self) -> str:
        counts = Counter(self.states.values())
        done = sum(1 for s in self.states.values() if s.terminal)
        running = [n for n, s in self.states.items() if s is State.RUNNING]
        return (
            f"[{done}/{self.total}] {time.monotonic() - self.start:5.1f}s  built {counts[State.BUILT]}  "
            f"cached {counts[State.CACHED]}  failed {counts[State.FAILED]}  running: {', '.join(running[:4]) or '-'}"
        )

    def __call__(self, job: Job, _jobs: dict[str, Job]) -> None:
        previous = self.states.get(job.name)
        self.states[job.name] = job.state
        if previous is job.state and job.state is not State.WAITING:
            return
        line = None
        if not (job.state is State.CACHED and self.quiet_cached):
            line = f"{LABEL.get(job.state, job.state.value)} {job.name} {job.version}"
            if job.state in (State.BUILT, State.FAILED, State.BLOCKED, State.WAITING, State.RUNNING):
                line += f"  ({job.why})"
        if self.tty:
            self.stream.write("\r\033[K")
            if line:
                self.stream.write(line + "\n")
            self.stream.write(self._status())
            self._status_shown = True
        elif line:
            done = sum(1 for s in self.states.values() if s.terminal)
            self.stream.write(f"[{done}/{self.total}] {line}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._status_shown:
            self.stream.write("\n")
            self.stream.flush()

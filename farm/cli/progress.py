"""Live progress for a rebuild: a status line on a terminal, one line per event otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from farm.coordinator.scheduler import BuildState, RunResult, State

SYMBOL = {
    State.RUNNING: "building",
    State.BUILT: "built   ",
    State.CACHED: "cached  ",
    State.FAILED: "FAILED  ",
    State.BLOCKED: "blocked ",
}


class Progress:
    def __init__(self, total: int, stream: TextIO | None = None, quiet_cached: bool = True) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.quiet_cached = quiet_cached
        self.start = time.monotonic()
        self._status_shown = False

    def _status(self, result: RunResult) -> str:
        done = sum(1 for b in result.builds.values() if b.state.terminal)
        running = [b.planned.name for b in result.builds.values() if b.state is State.RUNNING]
        elapsed = time.monotonic() - self.start
        return (
            f"[{done}/{self.total}] {elapsed:5.1f}s  built {result.count(State.BUILT)}  "
            f"cached {result.count(State.CACHED)}  failed {result.count(State.FAILED)}  "
            f"running: {', '.join(running[:4]) or '-'}"
        )

    def __call__(self, bs: BuildState, result: RunResult) -> None:
        line = None
        if not (bs.state is State.CACHED and self.quiet_cached):
            line = f"{SYMBOL.get(bs.state, bs.state.value)} {bs.planned.name} {bs.planned.recipe.version}"
            if bs.state in (State.BUILT, State.FAILED, State.BLOCKED):
                line += f"  ({bs.why})"
        if self.tty:
            self.stream.write("\r\033[K")
            if line:
                self.stream.write(line + "\n")
            self.stream.write(self._status(result))
            self._status_shown = True
        elif line:
            done = sum(1 for b in result.builds.values() if b.state.terminal)
            self.stream.write(f"[{done}/{self.total}] {line}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._status_shown:
            self.stream.write("\n")
            self.stream.flush()

"""bench_plan reports the CPU time of the CLI runs it times beside their wall time (a loaded machine stretches the
wall time, much less the CPU time)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.bench_plan import repeat

pytestmark = pytest.mark.unit


def test_repeat_reports_the_cpu_time_of_the_children_it_waited_for() -> None:
    busy = "import time\nend = time.process_time() + 0.2\nwhile time.process_time() < end: pass"
    cpu: list[float] = []
    wall = repeat(lambda: subprocess.run([sys.executable, "-c", busy], check=True), 2, cpu)
    assert len(cpu) == 2 and all(c >= 0.2 for c in cpu), cpu
    assert all(w >= 0.2 for w in wall)
    idle: list[float] = []
    wall = repeat(lambda: subprocess.run([sys.executable, "-c", "import time; time.sleep(0.3)"], check=True), 1, idle)
    assert idle[0] < 0.25 <= wall[0], (idle, wall)

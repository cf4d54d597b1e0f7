"""What every benchmark shares: progress on stderr, percentiles, the command line's common options and a work
directory that is removed afterwards unless kept."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

AUTOGROUP = Path("/proc/sys/kernel/sched_autogroup_enabled")
BUSY_LOAD = 0.5  # a load average above this before a run: something else is using the CPUs


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def autogroup_enabled(path: Path = AUTOGROUP) -> bool | None:
    """Whether the kernel groups CPU time by session (None where it cannot say)."""
    try:
        return path.read_text().strip() == "1"
    except OSError:
        return None


def machine_state(load: tuple[float, float, float] | None = None, autogroup: bool | None = None) -> dict[str, Any]:
    """What a report says of the machine it ran on, with a warning on stderr when other work shares its CPUs.

    With autogroup on, the kernel shares CPU time between sessions, not processes: every farm process the bench
    starts in a session of its own (the workers, each build's sandbox) gets an equal share beside any other session,
    whatever that other work's nice value or SCHED_IDLE policy. A figure taken beside a background job then
    measures the job; ``echo 0 > /proc/sys/kernel/sched_autogroup_enabled`` (until reboot) lets nice work again."""
    load = os.getloadavg() if load is None else load
    grouped = autogroup_enabled() if autogroup is None else autogroup
    if load[0] > BUSY_LOAD:
        why = " and autogroup is on: nice and SCHED_IDLE do not shield this run" if grouped else ""
        progress(f"warning: load average {load[0]:.2f} before the run{why}; figures may measure other work")
    return {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "loadavg_before": load,
        "sched_autogroup": grouped,
    }


def percentile(values: Iterable[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    data = sorted(values)
    if not data:
        return float("nan")
    pos = (len(data) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of ``python -m bench.MODULE``, described by the first paragraph of its docstring, with
    ``--json`` (the report as JSON on stdout) and ``--keep`` (keep the work directory)."""
    p = argparse.ArgumentParser(prog=f"python -m bench.{module}", description=(doc or "").split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs of every process)")
    return p


def add_redis_fsync(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--redis-fsync",
        choices=["everysec", "always", "no", "off"],
        default="everysec",
        help="redis-server appendfsync (off: no AOF); default everysec",
    )


def require_tools(p: argparse.ArgumentParser, *tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            p.error(f"'{tool}' is required")


@contextmanager
def workdir(prefix: str, keep: bool) -> Iterator[Path]:
    """A new temporary directory, removed on the way out unless ``keep``."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    progress(f"work directory {root}")
    try:
        yield root
    finally:
        if keep:
            progress(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

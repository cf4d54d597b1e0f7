"""Structured, nested, timed logging.

``step("building", recipe="hello")`` logs the start, the end and the duration of a phase, indented by nesting
depth, so a build log reads like a tree and slow phases stand out.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

_depth: contextvars.ContextVar[int] = contextvars.ContextVar("farm_step_depth", default=0)


def _fmt(fields: dict[str, object]) -> str:
    return " ".join(f"{k}={v}" for k, v in fields.items())


@contextmanager
def step(name: str, logger: logging.Logger | None = None, **fields: object) -> Iterator[None]:
    log = logger or logging.getLogger("farm")
    depth = _depth.get()
    indent = "  " * depth
    extra = f" {_fmt(fields)}" if fields else ""
    log.info("%s> %s%s", indent, name, extra)
    token = _depth.set(depth + 1)
    start = time.monotonic()
    try:
        yield
    except BaseException:
        log.info("%s< %s failed after %.2fs", indent, name, time.monotonic() - start)
        raise
    finally:
        _depth.reset(token)
    log.info("%s< %s done in %.2fs", indent, name, time.monotonic() - start)


def configure(verbose: bool = False, debug: bool = False) -> None:
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

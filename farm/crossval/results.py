"""Recheck results: one JSON file per rechecked build under ``$MANGOS_FARM_HOME/crossval/recheck/``, and the
reproducibility rates (per recipe and overall) that ``status`` shows and the reproducibility gauge exports.

The diffoscope reports of a result sit next to it, in ``crossval/recheck/BUILD_KEY/``. A result carries the
signed rebuild and equivalence envelopes (:mod:`farm.crossval.attest`); results written before rechecks were
attested have none, read as they are, and count as not yet rechecked for ``recheck --all``'s resume.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from farm import metrics
from farm.build.variation import VARIATIONS_VERSION
from farm.fsutil import atomic_write
from farm.settings import Settings
from farm.store import Store

log = logging.getLogger(__name__)


def results_dir(settings: Settings) -> Path:
    return settings.home / "crossval" / "recheck"


@dataclass(frozen=True)
class RecheckResult:
    recipe: str
    build_key: str
    reproducible: bool
    outputs: dict[str, str]
    varied: dict[str, str]
    differing: list[str]
    causes: list[str]
    reports: dict[str, dict[str, str]]  # artifact -> {"text": digest, "html": digest, "note": ...}
    variation: dict[str, Any]
    checked: str
    error: str = ""
    log: str = ""  # the varied build's log (a blob in the store)
    ignored: list[str] = field(default_factory=list)  # differing outputs that record the environment (.buildinfo)
    worker: str = ""  # who rebuilt it: the fleet worker's name, or this host's builder id when rechecked in-process
    original: str = ""  # who made the published build: the worker named in the run that built it, else its builder
    attestations: dict[str, Any] = field(default_factory=dict)  # {"rebuild": envelope, "equivalence": envelope}
    variation_version: int = 0  # the variation table's version (0: before versions)
    vary: bool = False  # the rebuild ran in the varied environment (not the farm's normal one)
    seconds: float = 0.0  # how long the rebuild and comparison took

    @property
    def outcome(self) -> str:
        """``reproducible``, ``not-reproducible`` or ``failed-to-build`` (the equivalence statement's verdict)."""
        return "failed-to-build" if self.error else "reproducible" if self.reproducible else "not-reproducible"

    def current(self, vary: bool) -> bool:
        """Attested under this variation table's version, varied (or not) as asked: nothing to redo."""
        return bool(self.attestations) and self.vary == vary and self.variation_version == VARIATIONS_VERSION

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RecheckResult:
        return cls(**data)


def load_result(settings: Settings, build_key: str) -> RecheckResult | None:
    """The stored result of one build's recheck (None: never rechecked, or unreadable)."""
    path = results_dir(settings) / f"{build_key}.json"
    try:
        return RecheckResult.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        log.warning("ignoring unreadable recheck result %s: %s", path, exc)
        return None


def write_result(settings: Settings, result: RecheckResult) -> None:
    atomic_write(results_dir(settings) / f"{result.build_key}.json", json.dumps(result.to_json(), indent=1).encode())
    update_metrics(settings)


def save_result(settings: Settings, store: Store, result: RecheckResult) -> Path:
    """Save a result that a fleet worker computed, with its diffoscope reports copied from the store next to it
    (where the in-process recheck writes them), so the CLI, ``status`` and the metric read it like a local one."""
    dest = results_dir(settings) / result.build_key
    for name, stored in result.reports.items():
        for kind, suffix in (("text", "txt"), ("html", "html")):
            if stored.get(kind):
                store.fetch_blob(stored[kind], dest / f"{name}.diffoscope.{suffix}")
    write_result(settings, result)
    return dest


def load_results(settings: Settings) -> list[RecheckResult]:
    folder = results_dir(settings)
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*.json")):
        try:
            found.append(RecheckResult.from_json(json.loads(path.read_text())))
        except (ValueError, TypeError) as exc:
            log.warning("ignoring unreadable recheck result %s: %s", path, exc)
    return found


def rates(results: Iterable[RecheckResult]) -> dict[str, dict[str, Any]]:
    """Reproducibility per recipe and overall ('all'): compared builds, reproducible ones, their ratio.

    A varied build that failed to build at all (a test suite that trips over the shifted clock, say) compared
    nothing: it is counted as failed, outside the ratio (None when nothing was compared)."""
    table: dict[str, list[int]] = {}
    for r in results:
        for name in (r.recipe, "all"):
            row = table.setdefault(name, [0, 0, 0])
            row[0 if not r.error else 2] += 1
            row[1] += int(r.reproducible)
    return {
        n: {"checked": c, "reproducible": ok, "failed": failed, "rate": ok / c if c else None}
        for n, (c, ok, failed) in sorted(table.items())
    }


def update_metrics(settings: Settings) -> dict[str, dict[str, Any]]:
    """Set the reproducibility gauge (per recipe, and 'all') from the stored results."""
    table = rates(load_results(settings))
    for name, row in table.items():
        if row["rate"] is not None:
            metrics.reproducibility.labels(name).set(row["rate"])
    return table


def watch_metrics(settings: Settings, interval: float = 30.0) -> threading.Thread:
    """Keep the reproducibility gauge of a long-running process (the coordinator) current with new rechecks."""

    def loop() -> None:
        while True:
            try:
                update_metrics(settings)
            except OSError as exc:  # an unreadable results directory must not stop the coordinator
                log.warning("cannot read recheck results: %s", exc)
            time.sleep(interval)

    thread = threading.Thread(target=loop, name="reproducibility-metrics", daemon=True)
    thread.start()
    return thread

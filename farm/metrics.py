"""The farm's Prometheus metrics: the one list of what the farm exports.

Dashboards, alert rules and their tests read the names from here (``METRICS``), so a panel can only query a
metric that exists. The coordinator updates fleet- and queue-level series; workers update per-build phases,
bytes and verification failures. Worker builds run in Celery's prefork children, so workers use
prometheus-client's multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` must be set before the first metric is made
(``workers.metrics_setup`` does that), and one endpoint in the worker's main process aggregates all children.

Each metric is declared here and made (prometheus-client imported, the series registered) on first use, so a
process that never records one never pays for the library. A process that exports nothing (a one-shot CLI command:
no endpoint, nobody scrapes it) turns recording off with :func:`recording`; its updates are then dropped unseen.

Series that describe something that can go away (a worker, a queue) are published whole each time
(:class:`FleetGauges`, :func:`publish`): what is gone reads 0 or is removed, it never keeps its last value.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, Protocol

NAMESPACE = "mangos"
PHASE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)


def recording(on: bool) -> bool:
    """Record updates (the default) or drop them: for a process with no endpoint, whose values no one can read.
    Returns what it was."""
    was, Metric.record = Metric.record, on
    return was


class _Dropped:
    """The series an update goes to while recording is off."""

    def inc(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass


_DROPPED = _Dropped()


class Metric:
    """One metric as declared (kind, name, help, label names); the prometheus-client object behind it is made on
    first use (:meth:`made`), once per process."""

    record = True  # every metric of the process (:func:`recording`)

    def __init__(self, kind: str, name: str, documentation: str, labelnames: Sequence[str] = (), **options: Any):
        self.kind, self.documentation, self.labelnames, self.options = kind, documentation, tuple(labelnames), options
        self.name = name.removesuffix("_total") if kind == "Counter" else name  # as prometheus-client keeps it
        self._made: Any = None

    @property
    def exported(self) -> str:
        """The series name a scrape shows (a counter's with ``_total``)."""
        return self.name + "_total" if self.kind == "Counter" else self.name

    def made(self) -> Any:
        if self._made is None:
            import prometheus_client

            cls = getattr(prometheus_client, self.kind)
            self._made = cls(self.name, self.documentation, list(self.labelnames), **self.options)
        return self._made

    def labels(self, *values: str) -> Any:
        return self.made().labels(*values) if Metric.record else _DROPPED

    def inc(self, amount: float = 1) -> None:
        if Metric.record:
            self.made().inc(amount)

    def set(self, value: float) -> None:
        if Metric.record:
            self.made().set(value)

    def observe(self, amount: float) -> None:
        if Metric.record:
            self.made().observe(amount)

    def remove(self, *values: str) -> None:
        """Drop one labelled series (KeyError: it is not there)."""
        if self._made is not None:
            self._made.remove(*values)


def _counter(name: str, documentation: str, labelnames: Sequence[str] = ()) -> Metric:
    return Metric("Counter", name, documentation, labelnames)


def _gauge(name: str, documentation: str, labelnames: Sequence[str] = ()) -> Metric:
    return Metric("Gauge", name, documentation, labelnames, multiprocess_mode="livemax")


def _histogram(name: str, documentation: str, labelnames: Sequence[str] = (), *, buckets: Sequence[float]) -> Metric:
    return Metric("Histogram", name, documentation, labelnames, buckets=buckets)


# -- coordinator ------------------------------------------------------------------------------------------------
builds_started = _counter("mangos_builds_started_total", "Builds dispatched to a worker", ["recipe", "lane", "arch"])
builds_finished = _counter(
    "mangos_builds_finished_total",
    "Builds that reached a final state (result: built, cached, failed, blocked, cancelled)",
    ["recipe", "lane", "arch", "result"],
)
queue_depth = _gauge("mangos_queue_depth", "Builds ready to run but waiting for a slot", ["lane", "arch"])
oldest_waiting = _gauge(
    "mangos_oldest_waiting_seconds",
    "Age of the longest-waiting ready build",
    ["lane", "arch"],
)
builds_ready_waiting = _gauge(
    "mangos_builds_ready_waiting",
    "Builds ready to run (dependencies done, not found in the store) waiting for a worker slot, per worker class",
    ["arch", "class"],
)
builds_in_flight = _gauge(
    "mangos_builds_in_flight", "Builds queued on or running at workers, per worker class", ["arch", "class"]
)
workers_alive = _gauge("mangos_workers_alive", "Workers announcing themselves", ["arch"])
workers_busy = _gauge("mangos_workers_busy", "Workers running at least one build", ["arch"])
workers_disabled = _gauge("mangos_workers_disabled", "Workers taken out of rotation", ["arch"])
worker_heartbeat_age = _gauge(
    "mangos_worker_heartbeat_age_seconds",
    "Seconds since each worker last announced itself",
    ["worker", "arch"],
)
lease_expiries = _counter("mangos_lease_expiries_total", "Builds whose worker stopped heartbeating", ["arch"])
redispatches = _counter("mangos_redispatches_total", "Builds dispatched again", ["reason"])
retries = _counter("mangos_retries_total", "Build retries by cause (error id)", ["cause"])
stale_results = _counter("mangos_stale_results_total", "Results discarded because their lease was stale")
cache_lookups = _counter("mangos_cache_lookups_total", "Build-key lookups in the store", ["result"])
runs_active = _gauge("mangos_runs_active", "Runs not yet finished")
TICK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
coordinator_tick_seconds = _histogram(
    "mangos_coordinator_tick_seconds",
    "Duration of each coordinator tick (outcomes, releases, dispatch, stored changes, a slice of loading)",
    buckets=TICK_BUCKETS,
)
recipes_behind = _gauge(
    "mangos_recipes_behind_archive",
    "Recipes whose farm build is older than the archive's version, until a build catches up (kind: security, update)",
    ["kind"],
)
security_update_waiting = _gauge(
    "mangos_security_update_waiting_seconds",
    "Age of the oldest security update not yet built, since the first 'recipes update' that saw it (0: none)",
)

# -- workers ----------------------------------------------------------------------------------------------------
build_phase_seconds = _histogram(
    "mangos_build_phase_seconds",
    "Time spent per build phase (queue_wait, source, dependencies, build, upload)",
    ["phase", "arch"],
    buckets=PHASE_BUCKETS,
)
store_bytes = _counter("mangos_store_bytes_total", "Bytes moved to and from the store", ["direction"])
store_errors = _counter("mangos_store_errors_total", "Store operations that failed", ["operation"])
signature_failures = _counter(
    "mangos_signature_verifications_failed_total", "Artifacts refused because their provenance did not verify"
)
security_events = _counter(
    "mangos_security_events_total",
    "Security events recorded in the audit log (refused results and artifacts, forged or replayed tasks, revoked keys, "
    "sandbox limits)",
    ["event"],
)
reproducibility = _gauge(
    "mangos_reproducibility_agreement_ratio",
    "Share of rechecked builds whose outputs matched (per recipe; 'all' for the farm)",
    ["recipe"],
)

METRICS: dict[str, Metric] = {
    m.exported: m
    for m in (
        builds_started,
        builds_finished,
        queue_depth,
        oldest_waiting,
        builds_ready_waiting,
        builds_in_flight,
        workers_alive,
        workers_busy,
        workers_disabled,
        worker_heartbeat_age,
        lease_expiries,
        redispatches,
        retries,
        stale_results,
        cache_lookups,
        runs_active,
        coordinator_tick_seconds,
        recipes_behind,
        security_update_waiting,
        build_phase_seconds,
        store_bytes,
        store_errors,
        signature_failures,
        security_events,
        reproducibility,
    )
}


def exported_names() -> set[str]:
    """Every series name a scrape can contain (histograms add _bucket, _sum, _count)."""
    names: set[str] = set()
    for name, metric in METRICS.items():
        if metric.kind == "Histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


# -- publishing what can go away ----------------------------------------------------------------------------------
WORKER_SERIES_KEPT = 3600.0  # seconds a vanished worker's series stay after its registration expired


def _remove(gauge: Metric, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # not there: nothing to remove
        gauge.remove(*labels)


_published: dict[str, set[tuple[str, ...]]] = {}


def publish(gauge: Metric, values: Mapping[tuple[str, ...], float]) -> None:
    """Set the series of ``gauge`` named in ``values``; every series published before and missing now reads 0
    (a queue that emptied, a run finished or cancelled), so the gauge never keeps a stale value."""
    before = _published.setdefault(gauge.name, set())
    for labels in before - set(values):
        gauge.labels(*labels).set(0)
    for labels, value in values.items():
        gauge.labels(*labels).set(value)
    before |= set(values)


class WorkerSeen(Protocol):
    """What the fleet gauges read of a registered worker (``farm.coordinator.leases.WorkerInfo``)."""

    name: str
    arch: str
    seen: float  # when it last announced itself (its own clock)
    disabled: bool


class FleetGauges:
    """The per-worker and per-arch fleet series, from the workers' registry as the coordinator last read it.

    A registered worker's heartbeat age is ``now - seen``. A worker that vanished without withdrawing (killed, its
    host gone) drops out of the registry when its entry expires, ``expiry`` seconds after it last announced
    itself: from then on it is not alive, and its heartbeat age keeps growing until :data:`WORKER_SERIES_KEPT`
    seconds after the expiry, when its series is removed. A worker whose entry was gone before it could have
    expired withdrew (stopped cleanly, scaled down): its series is removed at once. The per-arch series (alive,
    disabled, busy) cover every arch with a registered worker, a vanished worker still shown, or builds
    (``archs``: ready or in flight), at 0 where none is; an arch with none of these has no series.

    A coordinator that starts after a worker vanished never knew it: only the arch's alive series (0 or absent)
    says so.
    """

    def __init__(self) -> None:
        self.known: dict[str, tuple[str, float]] = {}  # worker -> (arch, last seen)
        self.archs: set[str] = set()

    def publish(
        self,
        workers: Iterable[WorkerSeen],
        running: Collection[str],
        archs: Collection[str],
        now: float,
        expiry: float,
    ) -> None:
        """``workers``: the registry; ``running``: the workers running a build; ``archs``: those with builds."""
        present = {w.name: w for w in workers}
        for w in present.values():
            self.known[w.name] = (w.arch, w.seen)
        shown = set(archs)
        for name, (arch, seen) in list(self.known.items()):
            age = now - seen
            if name not in present and (age < expiry or age > expiry + WORKER_SERIES_KEPT):
                del self.known[name]
                _remove(worker_heartbeat_age, name, arch)
                continue
            worker_heartbeat_age.labels(name, arch).set(max(0.0, age))
            shown.add(arch)
        for arch in shown:
            mine = [w for w in present.values() if w.arch == arch]
            workers_alive.labels(arch).set(sum(1 for w in mine if not w.disabled))
            workers_disabled.labels(arch).set(sum(1 for w in mine if w.disabled))
            workers_busy.labels(arch).set(sum(1 for w in mine if w.name in running))
        for arch in self.archs - shown:
            for gauge in (workers_alive, workers_disabled, workers_busy):
                _remove(gauge, arch)
        self.archs = shown


fleet = FleetGauges()

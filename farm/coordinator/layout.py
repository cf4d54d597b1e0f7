"""Where the coordinator's state lives in the KV: every key name, in one place. State format version 2.

- ``mangos:state:version`` — the format version ("2"); absent: version 1 (migrated on start, see
  :mod:`farm.coordinator.migrate`).
- ``mangos:run:<id>`` — a run's meta (JSON of :class:`~farm.coordinator.records.Run`).
- ``mangos:run:<id>:static`` — hash, build name -> what never changes once submitted (source, deps, critical
  path; :data:`~farm.coordinator.records.STATIC_FIELDS`), but for the recipe itself, in
  ``mangos:run:<id>:recipes`` (build name -> recipe), which only the coordinator needs (views read the rest).
- ``mangos:run:<id>:graph`` — build name -> [critical path, dependencies], the static parts views need, as one
  document written at submission (absent for runs stored before it: readers fall back to the static hash).
- ``mangos:run:<id>:jobs`` — hash, build name -> its live state (:data:`~farm.coordinator.records.DYNAMIC_FIELDS`).
  Version 1 kept whole jobs here; a reader takes either. In a cancelled run, a build that had not ended reads as
  cancelled whatever its record says (a cancel rewrites only the records of the builds in flight).
- ``mangos:run:<id>:counts`` — hash, state -> how many of the run's builds are in it; and field ``in_flight``: the
  names of the run's builds queued or running (a JSON list), written with the counts (they move together), so that
  a cancel finds them without reading every build.
- ``mangos:runs`` — sorted set of every run id by creation time; ``mangos:runs:active`` — set of the active ones.
- ``mangos:runs:waiting`` — hash, run id -> why its ready builds wait (``{position}`` stands for a build's place in
  the run's ready index, filled in on read).
- ``mangos:ready:<arch>:<class>:<lane>:<run>`` — sorted set, the run's ready builds of one class (dependencies done,
  not in flight), best first: score = -critical path, ties by name. The class names what a build needs of its worker
  (:mod:`farm.recipes.needs`: ``default``, ``debian``, ``kvm``, ``debian+kvm``); a run has one index per class it
  has ready builds in (:func:`ready_keys`: all of them).
- ``mangos:beat:<lease>`` — a build's heartbeat (expires after the lease timeout), JSON {worker, claimed}.
- ``mangos:inbox`` — list, what the coordinator must react to: outcomes from workers, runs changed by commands.
- ``mangos:coordinator`` — the coordinator lease: who drives this state (expires unless renewed; JSON {host, pid,
  since, token}). One coordinator at a time pops the inbox and writes the runs (:mod:`farm.coordinator.leases`).
  ``mangos:coordinator:takes`` — hash, field ``n``: how many times the lease was taken (a holder that finds it
  lapsed and takes it again knows from this whether another process held it meanwhile).
- ``mangos:worker:<name>`` — a worker's registration (expires); ``mangos:workers`` — set of registered names;
  ``mangos:disabled`` — hash, worker name -> why it is out of rotation.
"""

from __future__ import annotations

from farm.recipes import needs

VERSION = 2
VERSION_KEY = "mangos:state:version"
MIGRATING = "mangos:state:migrating"

RUN = "mangos:run:"
RUNS = "mangos:runs"
ACTIVE = "mangos:runs:active"
WAITING = "mangos:runs:waiting"
READY = "mangos:ready:"
BEAT = "mangos:beat:"
INBOX = "mangos:inbox"
COORDINATOR = "mangos:coordinator"
COORDINATOR_TAKES = "mangos:coordinator:takes"
IN_FLIGHT = "in_flight"  # the field of a run's counts hash naming its builds in flight
WORKER = "mangos:worker:"
WORKERS = "mangos:workers"
DISABLED = "mangos:disabled"
DEFAULT_CLASS = needs.DEFAULT_CLASS
CLASSES = tuple(needs.classes())


def meta_key(run_id: str) -> str:
    return RUN + run_id


def static_key(run_id: str) -> str:
    return f"{RUN}{run_id}:static"


def recipes_key(run_id: str) -> str:
    return f"{RUN}{run_id}:recipes"


def graph_key(run_id: str) -> str:
    return f"{RUN}{run_id}:graph"


def jobs_key(run_id: str) -> str:
    return f"{RUN}{run_id}:jobs"


def counts_key(run_id: str) -> str:
    return f"{RUN}{run_id}:counts"


def ready_key(arch: str, cls: str, lane: str, run_id: str) -> str:
    return f"{READY}{arch}:{cls}:{lane}:{run_id}"


def ready_keys(arch: str, lane: str, run_id: str) -> list[str]:
    """The run's ready index of every class (most absent: deleting them all is how a run's indexes go)."""
    return [ready_key(arch, cls, lane, run_id) for cls in CLASSES]


def lease_token(nonce: str, run_id: str, name: str) -> str:
    """A lease names its build, so that a worker finds the build's state with one read: ``nonce/run/name``."""
    return f"{nonce}/{run_id}/{name}"


def lease_target(token: str) -> tuple[str, str] | None:
    """(run id, build name) of a lease, or None for a token that names none (a version 1 lease)."""
    nonce, _, rest = token.partition("/")
    run_id, _, name = rest.rpartition("/")
    return (run_id, name) if nonce and run_id and name else None

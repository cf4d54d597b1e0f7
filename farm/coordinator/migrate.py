"""The state format's version, and the migration from version 1.

Version 1 (no ``mangos:state:version`` key) kept each job whole in its run's jobs hash, found runs and disabled
workers by scanning keys, and kept leases under ``mangos:lease:`` / ``mangos:current:``. Version 2 (the layout in
:mod:`farm.coordinator.layout`) splits each job into its static and live parts, and adds the runs index, the
active set, counts by state and the ready indexes. :func:`ensure_current` runs when a coordinator starts: on
version 1 it migrates (under a lock, so that two processes starting at once do it once); on a version newer than
this one it stops with ``E-STATE-VERSION`` rather than misread it.

Builds in flight under version 1 go back to waiting: their leases (and the task messages carrying them) have no
meaning to version 2 workers, so they are dispatched again under new leases.
"""

from __future__ import annotations

import json
import logging
import time
import uuid

from farm.coordinator import layout
from farm.coordinator.indexes import index_run
from farm.coordinator.kv import KV
from farm.coordinator.records import Job, Run, State, decode_static
from farm.errors import E, FarmError

log = logging.getLogger(__name__)


def stored_version(kv: KV) -> int | None:
    """The state's format version (1 when unmarked), or None when the mark is unreadable."""
    raw = kv.get(layout.VERSION_KEY)
    if raw is None:
        return 1
    try:
        return int(raw.decode().strip())
    except ValueError:
        return None


def ensure_current(kv: KV, *, wait: float = 300.0) -> None:
    """Make sure the state is in this version's format: nothing to do, migrated now, or E-STATE-VERSION."""
    version = stored_version(kv)
    if version == layout.VERSION:
        return
    if version is None or version > layout.VERSION:
        raw = kv.get(layout.VERSION_KEY) or b""
        raise FarmError(
            E.STATE_VERSION,
            f"the coordinator state at {kv.url} is in format version {raw.decode(errors='replace')[:20]!r}; "
            f"this mangos-farm reads version {layout.VERSION} (and migrates version 1)",
            hint="a newer mangos-farm wrote it: upgrade this one to that version, or point MANGOS_FARM_STATE at "
            "another state",
        )
    me = uuid.uuid4().hex
    if not kv.set(layout.MIGRATING, me.encode(), ttl=wait, only_if_absent=True):
        deadline = time.monotonic() + wait
        while stored_version(kv) != layout.VERSION:  # another process migrates: wait for it
            if time.monotonic() > deadline:
                raise FarmError(
                    E.STATE_VERSION,
                    f"the coordinator state at {kv.url} is being migrated by another process, for over {wait:g}s",
                    hint=f"if no other mangos-farm process is running, delete the key {layout.MIGRATING} and retry",
                )
            time.sleep(0.5)
        return
    try:
        migrate_v1(kv, time.time())
        kv.set(layout.VERSION_KEY, str(layout.VERSION).encode())
    finally:
        kv.delete(layout.MIGRATING)


def migrate_v1(kv: KV, now: float) -> None:
    """Rewrite a version 1 state in place (safe to run again on a state it half migrated)."""
    ids = [k[len(layout.RUN) :] for k in kv.keys(layout.RUN) if k.count(":") == 2]
    for run_id in ids:
        data = kv.get(layout.meta_key(run_id))
        if data is not None:
            _migrate_run(kv, Run.from_bytes(data), now)
    with kv.batch() as b:
        for key in kv.keys("mangos:disabled:"):
            why = kv.get(key)
            b.hset(layout.DISABLED, {key[len("mangos:disabled:") :]: why or b""})
            b.delete(key)
        b.sadd(layout.WORKERS, *(k[len(layout.WORKER) :] for k in kv.keys(layout.WORKER)))
        b.delete(*kv.keys("mangos:lease:"), *kv.keys("mangos:current:"))
    log.info("coordinator state migrated to version %d: %d runs", layout.VERSION, len(ids))


def _migrate_run(kv: KV, run: Run, now: float) -> None:
    raw = kv.hgetall(layout.jobs_key(run.id))
    stored = kv.hgetall(layout.static_key(run.id))
    jobs: dict[str, Job] = {}
    for name in run.order:
        if name in raw and b'"recipe"' in raw[name]:
            jobs[name] = Job.from_bytes(raw[name])
        elif name in stored:  # migrated already
            jobs[name] = Job.from_parts(decode_static(stored[name]), raw.get(name))
            jobs[name].recipe = json.loads(kv.hget(layout.recipes_key(run.id), name) or b"{}")
    if run.status == "active":
        for job in jobs.values():
            if job.state.in_flight:
                job.state, job.why = State.WAITING, "re-dispatching: the coordinator's state was upgraded"
                job.task_id = job.lease = job.worker = None
                job.started_at = None
    live, _, _ = index_run(run, jobs, {}, now) if run.status == "active" else (None, [], [])
    with kv.batch() as b:
        items = list(jobs.values())
        for i in range(0, len(items), 5000):
            b.hset(layout.static_key(run.id), {j.name: j.static_bytes() for j in items[i : i + 5000]})
            b.hset(layout.recipes_key(run.id), {j.name: j.recipe_bytes() for j in items[i : i + 5000]})
            b.hset(layout.jobs_key(run.id), {j.name: j.dynamic_bytes() for j in items[i : i + 5000]})
        if live is not None:
            live.rewrite(b)
            b.sadd(layout.ACTIVE, run.id)
        else:
            counts = {s.value: str(sum(1 for j in items if j.state is s)).encode() for s in State}
            b.hset(layout.counts_key(run.id), counts)
        b.zadd(layout.RUNS, {run.id: run.created})

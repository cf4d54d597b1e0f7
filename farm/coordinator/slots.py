"""Build slots by class: which live workers can take which builds, and how many slots each (arch, class) has free.

A worker serves every class whose needs it has (:func:`farm.recipes.needs.served`), so one slot counts for several
classes at once: the slots are kept per *pool* (the workers of one arch with one set of capabilities), and a
class's free slots are the free slots of the pools that serve it. A build in flight holds a slot of the worker
running it; one not yet claimed (queued, so on no worker yet) holds a slot of the pool it will most likely land
in: the pool with the fewest capabilities that serves its class, the most specific builds placed first. Pure: made
from the workers' registry and the builds in flight; nothing here reads the state store.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from farm.coordinator.leases import WorkerInfo
from farm.recipes.needs import DEFAULT_CLASS, class_needs


@dataclass
class Pool:
    """The live workers of one arch with one set of capabilities: their slots, and how many are free."""

    arch: str
    capabilities: frozenset[str]
    size: int = 0
    free: int = 0

    def serves(self, cls: str) -> bool:
        return class_needs(cls) <= self.capabilities


class Slots:
    """The fleet's slots by pool; ``running_on``: worker name -> builds it runs; ``unplaced``: (arch, class) of each
    build in flight on no known worker."""

    def __init__(
        self, workers: Sequence[WorkerInfo], running_on: Mapping[str, int], unplaced: Iterable[tuple[str, str]]
    ) -> None:
        pools: dict[tuple[str, frozenset[str]], Pool] = {}
        self.capabilities: dict[str, set[str]] = {}  # arch -> every capability a live worker of it has
        for w in workers:
            if w.disabled:
                continue
            caps = frozenset(w.capabilities)
            pool = pools.setdefault((w.arch, caps), Pool(w.arch, caps))
            pool.size += w.concurrency
            pool.free += max(0, w.concurrency - running_on.get(w.name, 0))
            self.capabilities.setdefault(w.arch, set()).update(caps)
        self.pools = sorted(pools.values(), key=lambda p: (p.arch, len(p.capabilities), sorted(p.capabilities)))
        for arch, cls in sorted(unplaced, key=lambda u: -len(class_needs(u[1]))):
            self.place(arch, cls)

    def place(self, arch: str, cls: str) -> bool:
        """Take a free slot for a build of ``cls`` (from the pool with the fewest capabilities); whether one was."""
        for pool in self.pools:
            if pool.arch == arch and pool.free > 0 and pool.serves(cls):
                pool.free -= 1
                return True
        return False

    def free(self, arch: str, cls: str) -> int:
        return sum(p.free for p in self.pools if p.arch == arch and p.serves(cls))

    def capacity(self, arch: str, cls: str = DEFAULT_CLASS) -> int:
        return sum(p.size for p in self.pools if p.arch == arch and p.serves(cls))

    def no_worker(self, arch: str, cls: str) -> str:
        """Why no live worker can take a build of ``cls`` (empty when one can)."""
        if self.capacity(arch, cls):
            return ""
        if arch not in self.capabilities:
            return f"no worker for arch {arch}"
        missing = sorted(class_needs(cls) - self.capabilities[arch])
        if len(missing) == 1:
            return f"no worker with capability {missing[0]}"
        if missing:
            return f"no worker with capabilities {' and '.join(missing)}"
        return f"no worker with capabilities {' and '.join(sorted(class_needs(cls)))} together"

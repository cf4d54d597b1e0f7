"""How ``make test`` splits the suite over pytest-xdist workers without making an expensive fixture twice.

Invariant: every test of one module runs on one worker (module fixtures, such as a fleet or a QEMU machine whose
tests are its life in order, are made once), and every test that uses one of the :data:`SHARED` session fixtures
(or whose module is marked ``xdist_group(NAME)``) runs on the worker that holds that fixture. Modules linked by a
shared fixture are merged into one group (union-find over module and fixture names), so the group of a test is the
same whatever order pytest collects in.

xdist's own ``--dist loadgroup`` reads a suffix it writes into each nodeid, which pytest 9.2's nodeids no longer
take; so the workers write the module -> group map beside their base temporary directories
(:func:`write_groups`), and the controller schedules with :class:`GroupScheduling`, whose scope of a test is its
module's group. Without the map (no worker wrote it), the scope is the module: never worse than ``loadfile``.
Without xdist (``pytest`` alone) none of this runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
from xdist.scheduler import LoadScopeScheduling

# Session fixtures made once per worker that cost a build or a boot: their users are kept on one worker.
SHARED: Mapping[str, str] = {
    "built_image": "image",  # tests/e2e/image_fixtures.py: the demo image
    "archive_image": "reference-image",  # tests/image/conftest.py: the cold reference image
    "release_set": "kernel",  # tests/lib/releases.py: releases 1, 2, 3 (the farm kernel's home) and their channels
    "made_env": "env",  # tests/integration/conftest.py: bookworm-amd64 by mmdebstrap
    "made_twice": "env",
    "demo_farm": "demo",  # tests/e2e/conftest.py: one farm home whose builds later tests reuse
}
# The longest groups go out first (``--no-loadscope-reorder``: xdist hands out groups in collection order), so
# none starts late and sets the end of the run; the rest follow in collection order.
FIRST = ("kernel", "image", "env", "reference-image")


def _key(name: str) -> tuple[int, int, str]:
    """A merged group is named by its :data:`FIRST` name if it has one, else by a group name, else a module."""
    group = name.removeprefix("=")
    rank = FIRST.index(group) if name.startswith("=") and group in FIRST else len(FIRST)
    return rank, 0 if name.startswith("=") else 1, group


def group_of(modules: Mapping[str, Iterable[str]]) -> dict[str, str]:
    """Each module's group, from the group names its tests need (``modules``: module path -> names)."""
    parent: dict[str, str] = {}

    def find(name: str) -> str:
        parent.setdefault(name, name)
        while parent[name] != name:
            name = parent[name] = parent[parent[name]]
        return name

    for module, names in modules.items():
        find(module)
        for name in names:
            a, b = find(module), find(f"={name}")
            parent[max(a, b)] = min(a, b)
    members: dict[str, list[str]] = {}
    for name in list(parent):
        members.setdefault(find(name), []).append(name)
    label = {root: min(names, key=_key).removeprefix("=") for root, names in members.items()}
    return {module: label[find(module)] for module in modules}


def _needs(item: pytest.Item) -> set[str]:
    names = {SHARED[f] for f in getattr(item, "fixturenames", ()) if f in SHARED}
    for mark in item.iter_markers("xdist_group"):
        names.add(str(mark.args[0] if mark.args else mark.kwargs.get("name", "default")))
    return names


def module_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def assign(items: list[pytest.Item]) -> dict[str, str]:
    """Each module's group; the items of the :data:`FIRST` groups are moved first, each in collection order (a
    stable sort), since the controller hands groups out in collection order."""
    modules: dict[str, set[str]] = {}
    for item in items:
        modules.setdefault(module_of(item.nodeid), set()).update(_needs(item))
    group = group_of(modules)
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(group[module_of(item.nodeid)], len(FIRST)))
    return group


def groups_file(basetemp: Path) -> Path:
    """The map's place: the controller's base temporary directory (each worker's is ``popen-gwN`` in it)."""
    return basetemp / "xdist-groups.json"


def write_groups(worker_basetemp: Path, group: Mapping[str, str]) -> None:
    """Written by every worker (the same map: they collect the same tests), atomically."""
    target = groups_file(worker_basetemp.parent)
    tmp = target.with_name(f"{target.name}.{os.getpid()}")
    tmp.write_text(json.dumps(dict(sorted(group.items()))))
    os.replace(tmp, target)


def read_groups(basetemp: Path) -> dict[str, str]:
    try:
        found: dict[str, str] = json.loads(groups_file(basetemp).read_text())
    except (OSError, ValueError):
        return {}
    return found


class GroupScheduling(LoadScopeScheduling):  # type: ignore[misc]  # xdist has no type information
    """xdist's scope scheduler with a test's scope being its module's group (read once, after collection)."""

    def __init__(self, config: pytest.Config, log: Any = None) -> None:
        super().__init__(config, log)
        factory: pytest.TempPathFactory = config._tmp_path_factory  # type: ignore[attr-defined]  # as xdist reads it
        self._basetemp = factory.getbasetemp()
        self._groups: dict[str, str] | None = None

    def _split_scope(self, nodeid: str) -> str:
        if self._groups is None:  # schedule() splits only once every worker has collected
            self._groups = read_groups(self._basetemp)
        module = module_of(nodeid)
        return self._groups.get(module, module)

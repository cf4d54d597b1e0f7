"""How ``make test`` splits the suite over pytest-xdist workers without making an expensive fixture twice.

Invariant: every test of one module runs on one worker (module fixtures, such as a fleet or a QEMU machine whose
tests are its life in order, are made once), and every test that uses one of the :data:`SHARED` session fixtures
(or a module marked ``xdist_group(NAME)``) runs on the worker that holds that fixture. Modules linked by a shared
fixture are merged into one group (union-find over module and fixture names), so the group of a test is the same
whatever order pytest collects in. Without xdist (``pytest`` alone) the markers are inert.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pytest

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


def assign(items: list[pytest.Item]) -> dict[str, str]:
    """Mark every item ``xdist_group(<its module's group>)`` and put the :data:`FIRST` groups first, each in
    collection order (a stable sort); returns module -> group."""
    modules: dict[str, set[str]] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::", 1)[0], set()).update(_needs(item))
    group = group_of(modules)
    for item in items:
        name = group[item.nodeid.split("::", 1)[0]]
        item.add_marker(pytest.mark.xdist_group(name), append=False)  # first: xdist takes the closest one
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(group[item.nodeid.split("::", 1)[0]], len(FIRST)))
    return group

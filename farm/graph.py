"""The dependency graph: cycle detection, topological order, critical path. Pure functions, no I/O.

The graph maps each node to the nodes it depends on (its build-depends).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence

Graph = Mapping[str, Sequence[str]]


def find_cycle(graph: Graph) -> list[str] | None:
    """A cycle as a closed path ``[a, b, ..., a]``, or None. Iterative, so deep chains do not recurse."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(graph, white)
    for root in sorted(graph):
        if colour[root] != white:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = [root]
        colour[root] = grey
        while stack:
            node, i = stack[-1]
            deps = sorted(graph.get(node, ()))
            if i < len(deps):
                stack[-1] = (node, i + 1)
                nxt = deps[i]
                if nxt not in colour:
                    continue
                if colour[nxt] == grey:
                    return [*path[path.index(nxt) :], nxt]
                if colour[nxt] == white:
                    colour[nxt] = grey
                    stack.append((nxt, 0))
                    path.append(nxt)
            else:
                colour[node] = black
                stack.pop()
                path.pop()
    return None


def topological_order(graph: Graph) -> list[str]:
    """Dependencies before dependents; ties broken by name so the order is stable. O((V + E) log V)."""
    nodes = set(graph)
    remaining = {n: set(graph.get(n, ())) & nodes for n in graph}
    dependents: dict[str, list[str]] = {n: [] for n in graph}
    for node, deps in remaining.items():
        for dep in deps:
            dependents[dep].append(node)
    ready = [n for n, deps in remaining.items() if not deps]
    heapq.heapify(ready)  # the smallest name first, as a sorted list would give it
    order: list[str] = []
    while ready:
        node = heapq.heappop(ready)
        order.append(node)
        for child in dependents[node]:
            remaining[child].discard(node)
            if not remaining[child]:
                heapq.heappush(ready, child)
    if len(order) != len(graph):
        raise ValueError(f"cycle: {find_cycle(graph)}")
    return order


def dependents_of(graph: Graph) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {n: [] for n in graph}
    for node, deps in graph.items():
        for dep in deps:
            out.setdefault(dep, []).append(node)
    return {k: sorted(v) for k, v in out.items()}


def transitive_dependents(graph: Graph, node: str) -> set[str]:
    rev = dependents_of(graph)
    seen: set[str] = set()
    todo = [node]
    while todo:
        for child in rev.get(todo.pop(), ()):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


def critical_path_lengths(graph: Graph, cost: Mapping[str, float] | None = None) -> dict[str, float]:
    """For each node, the cost of the longest chain from it through everything that depends on it.

    Scheduling the node with the longest remaining chain first keeps the makespan near its lower bound.
    """
    rev = dependents_of(graph)
    weights = cost or {}
    result: dict[str, float] = {}
    for node in reversed(topological_order(graph)):
        tail = max((result[c] for c in rev.get(node, ())), default=0.0)
        result[node] = weights.get(node, 1.0) + tail
    return result


def render_tree(graph: Graph) -> list[str]:
    """An indented text view: each root, then what it needs. Shared subtrees are shown once, then elided.

    Iterative (an explicit stack, children pushed in reverse so they pop in sorted order), so deep chains do
    not recurse.
    """
    rev = dependents_of(graph)
    roots = sorted(n for n in graph if not rev.get(n))
    lines: list[str] = []
    shown: set[str] = set()
    stack: list[tuple[str, int]] = [(root, 0) for root in reversed(roots)]
    while stack:
        node, depth = stack.pop()
        deps = sorted(graph.get(node, ()))
        mark = " (see above)" if node in shown and deps else ""
        lines.append("  " * depth + ("└─ " if depth else "") + node + mark)
        if node in shown:
            continue
        shown.add(node)
        stack.extend((dep, depth + 1) for dep in reversed(deps))
    return lines

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
        stack: list[tuple[str, list[str], int]] = [(root, sorted(graph.get(root, ())), 0)]  # deps sorted once
        path: list[str] = [root]
        colour[root] = grey
        while stack:
            node, deps, i = stack[-1]
            if i < len(deps):
                stack[-1] = (node, deps, i + 1)
                nxt = deps[i]
                if nxt not in colour:
                    continue
                if colour[nxt] == grey:
                    return [*path[path.index(nxt) :], nxt]
                if colour[nxt] == white:
                    colour[nxt] = grey
                    stack.append((nxt, sorted(graph.get(nxt, ())), 0))
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


def critical_path_lengths(
    graph: Graph, cost: Mapping[str, float] | None = None, *, order: Sequence[str] | None = None
) -> dict[str, float]:
    """For each node, the cost of the longest chain from it through everything that depends on it.

    Scheduling the node with the longest remaining chain first keeps the makespan near its lower bound.
    ``order``: the graph's :func:`topological_order`, when the caller has it already (not worked out again).
    """
    rev = dependents_of(graph)
    weights = cost or {}
    result: dict[str, float] = {}
    for node in reversed(topological_order(graph) if order is None else order):
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


def strongly_connected_components(graph: Graph) -> list[list[str]]:
    """The strongly connected components (Tarjan, iterative), each sorted, the list sorted by first name.

    Edges to nodes outside ``graph`` are ignored. The result depends only on the graph's content, never on the
    order its nodes or edges are given in."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, list[str]]] = [(root, sorted(d for d in set(graph[root]) if d in graph))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, todo = work[-1]
            if todo:
                nxt = todo.pop(0)
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(d for d in set(graph[nxt]) if d in graph)))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return sorted(components)


def bootstrap_split(graph: Graph) -> tuple[dict[str, list[str]], list[tuple[str, str]]]:
    """Cut every cycle: the acyclic graph of farm edges, and the bootstrap edges ``(from, to)`` taken out of it.

    Within each strongly connected component the members are ranked by how many of its other members depend on them
    (most first), then by name; an edge to a member ranked earlier stays a farm edge, an edge to one ranked later
    (or to itself) becomes a bootstrap edge: the dependent builds against the archive's binaries of that dependency
    instead of the farm's. So what most of a cycle needs builds first, and the fewest edges are cut in the usual
    cycles. Edges between components, and to nodes outside the graph, stay. The result depends only on the graph's
    content (not on the order of its nodes or edges), and the farm graph has no cycle."""
    component_of = {n: i for i, c in enumerate(strongly_connected_components(graph)) for n in c}
    dependents: dict[str, int] = {}
    for node in graph:
        for dep in set(graph[node]) - {node}:
            if component_of.get(dep) == component_of[node]:
                dependents[dep] = dependents.get(dep, 0) + 1
    rank = {n: (-dependents.get(n, 0), n) for n in graph}
    farm: dict[str, list[str]] = {}
    bootstrap: list[tuple[str, str]] = []
    for node in sorted(graph):
        keep = []
        for dep in sorted(set(graph[node])):
            if component_of.get(dep) == component_of[node] and rank[dep] >= rank[node]:
                bootstrap.append((node, dep))
            else:
                keep.append(dep)
        farm[node] = keep
    return farm, bootstrap

"""The dependency graph: pure functions over ``{node: [its build-depends]}``."""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Mapping, Sequence

import pytest

from farm.graph import (
    critical_path_lengths,
    dependents_of,
    find_cycle,
    render_tree,
    topological_order,
    transitive_dependents,
)

pytestmark = pytest.mark.unit

Graph = dict[str, list[str]]

DEEP = 2000

# app needs lib and util, util needs lib, lib needs base; tool stands alone
DIAMOND: Graph = {"app": ["util", "lib"], "util": ["lib"], "lib": ["base"], "base": [], "tool": []}


def chain(n: int) -> Graph:
    """n0 depends on n1 depends on ... n{n-1}; zero-padded names so sorted order is chain order."""
    names = [f"n{i:05d}" for i in range(n)]
    return {name: ([names[i + 1]] if i + 1 < n else []) for i, name in enumerate(names)}


def random_dag(rng: random.Random, n: int, p: float) -> Graph:
    """Edges only from a higher index to a lower one, under shuffled names, so it is acyclic."""
    names = [f"p{i:03d}" for i in range(n)]
    rng.shuffle(names)
    return {names[i]: [names[j] for j in range(i) if rng.random() < p] for i in range(n)}


def assert_is_cycle(graph: Mapping[str, Sequence[str]], cycle: list[str]) -> None:
    assert len(cycle) >= 2
    assert cycle[0] == cycle[-1]
    assert len(set(cycle[:-1])) == len(cycle) - 1, "a simple cycle visits each node once"
    for a, b in itertools.pairwise(cycle):
        assert b in graph[a], f"{a} -> {b} is not an edge"


def assert_topological(graph: Mapping[str, Sequence[str]], order: list[str]) -> None:
    assert sorted(order) == sorted(graph)
    position = {n: i for i, n in enumerate(order)}
    for node, deps in graph.items():
        for dep in deps:
            if dep in graph:
                assert position[dep] < position[node], f"{dep} must come before {node}"


# -- find_cycle ------------------------------------------------------------------------------------------------
def test_no_cycle_in_a_dag() -> None:
    assert find_cycle(DIAMOND) is None
    assert find_cycle({}) is None
    assert find_cycle({"a": []}) is None


def test_three_node_cycle_is_a_closed_path() -> None:
    graph = {"a": ["b"], "b": ["c"], "c": ["a"]}
    assert find_cycle(graph) == ["a", "b", "c", "a"]


def test_cycle_found_among_acyclic_parts() -> None:
    graph: Graph = {"a": ["b"], "b": [], "m": ["x"], "x": ["y"], "y": ["z", "b"], "z": ["x"]}
    cycle = find_cycle(graph)
    assert cycle is not None
    assert_is_cycle(graph, cycle)
    assert set(cycle) == {"x", "y", "z"}


def test_self_loop() -> None:
    assert find_cycle({"a": ["a"]}) == ["a", "a"]


def test_dependencies_outside_the_graph_are_ignored() -> None:
    assert find_cycle({"a": ["missing"], "b": ["a"]}) is None


def test_cycle_through_a_shared_node_is_not_a_false_positive() -> None:
    # b is reached twice (from a and from c) but there is no cycle
    assert find_cycle({"a": ["b", "c"], "c": ["b"], "b": []}) is None


@pytest.mark.parametrize("seed", range(20))
def test_random_dags_have_no_cycle_and_a_back_edge_makes_one(seed: int) -> None:
    rng = random.Random(seed)
    graph = random_dag(rng, 30, 0.15)
    assert find_cycle(graph) is None
    # add an edge from a node to one of its transitive dependents: now there must be a cycle
    for node in sorted(graph):
        above = transitive_dependents(graph, node)
        if above:
            graph[node] = [*graph[node], sorted(above)[0]]
            cycle = find_cycle(graph)
            assert cycle is not None
            assert_is_cycle(graph, cycle)
            return
    pytest.fail("the random graph had no edges")


def test_deep_chain_does_not_recurse() -> None:
    graph = chain(DEEP)
    assert find_cycle(graph) is None
    last = f"n{DEEP - 1:05d}"
    graph[last] = ["n00000"]
    cycle = find_cycle(graph)
    assert cycle is not None
    assert len(cycle) == DEEP + 1
    assert_is_cycle(graph, cycle)


# -- topological_order -----------------------------------------------------------------------------------------
def test_dependencies_come_before_dependents() -> None:
    order = topological_order(DIAMOND)
    assert_topological(DIAMOND, order)
    assert order == ["base", "lib", "tool", "util", "app"]


def test_ties_are_broken_by_name() -> None:
    assert topological_order({"c": [], "a": [], "b": []}) == ["a", "b", "c"]
    assert topological_order({"z": ["b"], "a": ["b"], "b": []}) == ["b", "a", "z"]


def test_order_does_not_depend_on_insertion_order() -> None:
    reversed_graph = dict(reversed(list(DIAMOND.items())))
    shuffled = {k: list(reversed(v)) for k, v in reversed_graph.items()}
    assert topological_order(shuffled) == topological_order(DIAMOND)


def _smallest_topological_order(graph: Mapping[str, Sequence[str]]) -> list[str]:
    """Independent reference: Kahn's algorithm with a min-heap gives the lexicographically smallest order."""
    indegree = {n: len({d for d in deps if d in graph}) for n, deps in graph.items()}
    users: dict[str, set[str]] = {n: set() for n in graph}
    for n, deps in graph.items():
        for d in deps:
            if d in graph:
                users[d].add(n)
    heap = [n for n, k in indegree.items() if k == 0]
    heapq.heapify(heap)
    out = []
    while heap:
        n = heapq.heappop(heap)
        out.append(n)
        for u in users[n]:
            indegree[u] -= 1
            if indegree[u] == 0:
                heapq.heappush(heap, u)
    return out


@pytest.mark.parametrize("seed", range(20))
def test_random_dags_match_the_reference_order(seed: int) -> None:
    graph = random_dag(random.Random(seed), 40, 0.1)
    order = topological_order(graph)
    assert_topological(graph, order)
    assert order == _smallest_topological_order(graph)


def test_unknown_dependencies_are_ignored_in_the_order() -> None:
    assert topological_order({"a": ["outside"], "b": ["a"]}) == ["a", "b"]


def test_duplicate_dependency_entries() -> None:
    assert topological_order({"a": ["b", "b"], "b": []}) == ["b", "a"]


def test_cycle_raises() -> None:
    with pytest.raises(ValueError, match="cycle"):
        topological_order({"a": ["b"], "b": ["a"], "c": []})


def test_deep_chain_order() -> None:
    graph = chain(DEEP)
    assert topological_order(graph) == sorted(graph, reverse=True)


# -- dependents ------------------------------------------------------------------------------------------------
def test_dependents_of() -> None:
    assert dependents_of(DIAMOND) == {
        "app": [],
        "util": ["app"],
        "lib": ["app", "util"],
        "base": ["lib"],
        "tool": [],
    }


def test_transitive_dependents() -> None:
    assert transitive_dependents(DIAMOND, "base") == {"lib", "util", "app"}
    assert transitive_dependents(DIAMOND, "lib") == {"util", "app"}
    assert transitive_dependents(DIAMOND, "app") == set()
    assert transitive_dependents(DIAMOND, "tool") == set()
    assert transitive_dependents(DIAMOND, "not-there") == set()


def test_transitive_dependents_of_a_deep_chain() -> None:
    graph = chain(DEEP)
    last = f"n{DEEP - 1:05d}"
    found = transitive_dependents(graph, last)
    assert len(found) == DEEP - 1
    assert last not in found


# -- critical path ---------------------------------------------------------------------------------------------
def test_critical_path_with_unit_costs() -> None:
    assert critical_path_lengths(DIAMOND) == {"app": 1, "util": 2, "lib": 3, "base": 4, "tool": 1}


def test_critical_path_with_costs() -> None:
    cost = {"app": 10.0, "util": 1.0, "lib": 2.0, "base": 0.5, "tool": 7.0}
    lengths = critical_path_lengths(DIAMOND, cost)
    assert lengths == {"app": 10.0, "util": 11.0, "lib": 13.0, "base": 13.5, "tool": 7.0}


def test_critical_path_defaults_missing_costs_to_one() -> None:
    assert critical_path_lengths({"a": [], "b": ["a"]}, {"b": 5.0}) == {"a": 6.0, "b": 5.0}


def test_critical_path_takes_the_longest_branch() -> None:
    # base is needed by a short branch (x) and a long one (y1 <- y2 <- y3)
    graph: Graph = {"base": [], "x": ["base"], "y1": ["base"], "y2": ["y1"], "y3": ["y2"]}
    assert critical_path_lengths(graph)["base"] == 4


def test_critical_path_of_a_deep_chain() -> None:
    lengths = critical_path_lengths(chain(DEEP))
    assert lengths[f"n{DEEP - 1:05d}"] == DEEP
    assert lengths["n00000"] == 1


def test_critical_path_rejects_a_cycle() -> None:
    with pytest.raises(ValueError, match="cycle"):
        critical_path_lengths({"a": ["b"], "b": ["a"]})


# -- render_tree -----------------------------------------------------------------------------------------------
def test_render_tree_exact_output() -> None:
    assert render_tree(DIAMOND) == [
        "app",
        "  └─ lib",
        "    └─ base",
        "  └─ util",
        "    └─ lib (see above)",
        "tool",
    ]


def test_render_tree_shows_shared_leaves_again_without_a_mark() -> None:
    graph: Graph = {"a": ["z"], "b": ["z"], "z": []}
    assert render_tree(graph) == ["a", "  └─ z", "b", "  └─ z"]


def test_render_tree_lists_unknown_dependencies_as_leaves() -> None:
    assert render_tree({"a": ["outside"]}) == ["a", "  └─ outside"]


def test_render_tree_of_an_empty_graph() -> None:
    assert render_tree({}) == []


def _render_reference(graph: Mapping[str, Sequence[str]]) -> list[str]:
    """The documented format, written recursively: fine for the small graphs it is used on."""
    rev: dict[str, set[str]] = {}
    for node, deps in graph.items():
        for dep in deps:
            rev.setdefault(dep, set()).add(node)
    lines: list[str] = []
    shown: set[str] = set()

    def walk(node: str, depth: int) -> None:
        deps = sorted(graph.get(node, ()))
        mark = " (see above)" if node in shown and deps else ""
        lines.append("  " * depth + ("└─ " if depth else "") + node + mark)
        if node in shown:
            return
        shown.add(node)
        for dep in deps:
            walk(dep, depth + 1)

    for root in sorted(n for n in graph if not rev.get(n)):
        walk(root, 0)
    return lines


@pytest.mark.parametrize("seed", range(20))
def test_render_tree_matches_the_reference_on_random_dags(seed: int) -> None:
    graph = random_dag(random.Random(seed), 25, 0.2)
    assert render_tree(graph) == _render_reference(graph)


def test_render_tree_of_a_deep_chain_does_not_recurse() -> None:
    graph = chain(DEEP)
    lines = render_tree(graph)
    assert len(lines) == DEEP
    assert lines[0] == "n00000"
    for depth, line in enumerate(lines[1:], start=1):
        assert line == "  " * depth + f"└─ n{depth:05d}"


def test_render_tree_of_a_deep_chain_with_a_shared_subtree() -> None:
    graph = chain(DEEP)
    graph["top"] = ["n00000", "n00001"]  # n00001 is shown under n00000 first, then elided
    lines = render_tree(graph)
    assert lines[0] == "top"
    assert lines[1] == "  └─ n00000"
    assert lines[-1] == "  └─ n00001 (see above)"
    assert len(lines) == DEEP + 2

"""The source packages of one Debian suite as a build graph, from apt's own indexes: each source's Build-Depends
(with -Arch and -Indep) turned into edges to the sources that build the binaries named, through the Packages index.

Reading a relation, version constraints, architecture qualifiers (``:any``, ``:native``), architecture lists
(``[amd64]``) and build profiles (``<!nocheck>``) are ignored: every relation counts on every architecture. Of an
alternative (``a | b``) the first name that resolves counts: a real binary package, else a virtual one through
the ``Provides`` of the binaries (the provider first by name). A source depending on its own binaries gets no
self-edge; a relation nothing in the index satisfies gets no edge (both are counted).

The result has cycles (Debian's build graph does: compilers, debhelper, perl): :func:`drop_bootstrap_edges` finds
its strongly connected components (Tarjan) and makes it a DAG by dropping, in each, the edges that close its
cycles, deterministically. The same indexes give the same graph, edge for edge.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from debian import deb822
from debian.debian_support import Version

from farm.sources.apt import archive_label, packages_lists, read_list, source_lists

BUILD_DEP_FIELDS = ("Build-Depends", "Build-Depends-Arch", "Build-Depends-Indep")
_SOURCE_FIELD_RE = re.compile(r"^(Package|Version|Extra-Source-Only):[ \t]*(.*?)[ \t]*$", re.MULTILINE)
_FIELD_RE = re.compile(r"^(Package|Source|Provides):[ \t]*(.*?)[ \t]*$", re.MULTILINE)

Graph = Mapping[str, Sequence[str]]


@dataclass(frozen=True)
class SourcePackage:
    name: str
    version: str
    paragraph: str  # its paragraph of the index, parsed for relations only when asked (most of a parse's cost)

    @property
    def relations(self) -> list[tuple[str, ...]]:
        """Each Build-Depends* relation's alternatives (package names), in the order written."""
        para = deb822.Sources(self.paragraph, fields=list(BUILD_DEP_FIELDS))
        out: list[tuple[str, ...]] = []
        for name in BUILD_DEP_FIELDS:
            value = para.get(name)
            if value:
                for alternatives in deb822.PkgRelation.parse_relations(value):
                    out.append(tuple(str(rel["name"]) for rel in alternatives))
        return out


def parse_sources(text: str) -> dict[str, SourcePackage]:
    """The sources of one Sources index in the order it lists them; of a source listed twice the highest version,
    entries kept only for other packages' Built-Using (``Extra-Source-Only: yes``) left out. Package, Version
    and Extra-Source-Only are single-line fields, read with a regular expression."""
    found: dict[str, SourcePackage] = {}
    for chunk in text.split("\n\n"):
        fields = dict(_SOURCE_FIELD_RE.findall(chunk))
        if "Package" not in fields or fields.get("Extra-Source-Only") == "yes":
            continue
        pkg = SourcePackage(fields["Package"], fields.get("Version", ""), chunk)
        old = found.get(pkg.name)
        if old is None or Version(pkg.version) > Version(old.version):
            found[pkg.name] = pkg
    return found


@dataclass
class BinaryIndex:
    """Which source builds each binary package, and which binaries provide each virtual package."""

    source_of: dict[str, str] = field(default_factory=dict)
    providers: dict[str, list[str]] = field(default_factory=dict)

    def add(self, text: str) -> None:
        """Add one Packages index (its text). Package, Source and Provides are single-line fields in a Packages
        index, read with a regular expression (a deb822 parse of every paragraph is ten times slower)."""
        for chunk in text.split("\n\n"):
            fields = {k: v for k, v in _FIELD_RE.findall(chunk)}
            package = fields.get("Package")
            if not package:
                continue
            self.source_of.setdefault(package, fields.get("Source", package).split(" ", 1)[0])
            for provided in fields.get("Provides", "").split(","):
                virtual = provided.strip().split(" ", 1)[0].split(":", 1)[0]
                if virtual:
                    self.providers.setdefault(virtual, []).append(package)

    def resolve(self, name: str, sources: Mapping[str, object]) -> str | None:
        """The source (one of ``sources``) that builds binary ``name``, or a provider of it; None if none does."""
        src = self.source_of.get(name)
        if src is not None and src in sources:
            return src
        for provider in sorted(self.providers.get(name, ())):
            src = self.source_of.get(provider)
            if src is not None and src in sources:
                return src
        return None


@dataclass
class ArchiveGraph:
    """The build graph of ``order`` (the sources, in index order): ``deps`` acyclic; what was left out, counted."""

    order: list[str]
    versions: dict[str, str]
    deps: dict[str, list[str]]
    stats: dict[str, Any]


def build_edges(
    sources: Mapping[str, SourcePackage], binaries: BinaryIndex, names: Iterable[str]
) -> tuple[dict[str, list[str]], Any]:
    """The dependencies (sorted, no duplicates, no self-edges) of the sources ``names`` on any of ``sources``, and
    the counts of what gave no edge."""
    deps: dict[str, list[str]] = {}
    relations = self_edges = unresolved = 0
    for name in names:
        found: set[str] = set()
        for alternatives in sources[name].relations:
            relations += 1
            src = next((s for a in alternatives if (s := binaries.resolve(a, sources)) is not None), None)
            if src is None:
                unresolved += 1
            elif src == name:
                self_edges += 1
            else:
                found.add(src)
        deps[name] = sorted(found)
    return deps, {"relations": relations, "self_edges": self_edges, "unresolved_relations": unresolved}


def strongly_connected(graph: Graph) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted; nodes in name order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, i = work[-1]
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            deps = graph.get(node, ())
            if i < len(deps):
                work[-1] = (node, i + 1)
                dep = deps[i]
                if dep not in graph:
                    continue
                if dep not in index:
                    work.append((dep, 0))
                elif dep in on_stack:
                    low[node] = min(low[node], index[dep])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                out.append(sorted(component))
    return out


def drop_bootstrap_edges(graph: Graph) -> tuple[dict[str, list[str]], list[tuple[str, str]], list[list[str]]]:
    """``graph`` made acyclic by dropping the edges that close its cycles; the acyclic graph, the dropped edges and
    the strongly connected components (of more than one source) they broke.

    Within each component the sources are ranked by how many others of it build-depend on them (most first, then
    by name): an edge from a source to one ranked after it is a bootstrap edge (the dependency is taken from the
    archive, not from this run). So debhelper, ranked first of the big component, depends on nothing in it, and
    what needs debhelper waits for it. Edges between components are kept: they form no cycle.
    """
    components = [c for c in strongly_connected(graph) if len(c) > 1]
    component_of = {n: i for i, c in enumerate(components) for n in c}
    dependents: dict[str, int] = {}
    for node, deps in graph.items():
        for dep in deps:
            if node in component_of and component_of[node] == component_of.get(dep):
                dependents[dep] = dependents.get(dep, 0) + 1
    rank = {n: i for c in components for i, n in enumerate(sorted(c, key=lambda n: (-dependents.get(n, 0), n)))}
    acyclic: dict[str, list[str]] = {}
    dropped: list[tuple[str, str]] = []
    for node in graph:
        keep = []
        for dep in graph[node]:
            if dep not in graph:
                continue
            if node in component_of and component_of[node] == component_of.get(dep) and rank[dep] > rank[node]:
                dropped.append((node, dep))
            else:
                keep.append(dep)
        acyclic[node] = keep
    return acyclic, dropped, components


def depth(graph: Graph) -> int:
    """The number of builds on the longest dependency chain of an acyclic graph."""
    memo: dict[str, int] = {}
    for root in graph:
        work = [root]
        while work:
            node = work[-1]
            if node in memo:
                work.pop()
                continue
            todo = [d for d in graph[node] if d not in memo]
            if todo:
                work.extend(todo)
                continue
            memo[node] = 1 + max((memo[d] for d in graph[node]), default=0)
            work.pop()
    return max(memo.values(), default=0)


def archive_graph(
    sources: Mapping[str, SourcePackage], binaries: BinaryIndex, limit: int | None = None
) -> ArchiveGraph:
    """The acyclic build graph of the first ``limit`` sources (all by default): edges to sources beyond the limit
    are left out before the cycles are broken."""
    order = list(sources)[:limit] if limit else list(sources)
    deps, stats = build_edges(sources, binaries, order)
    chosen = set(order)
    subset = {n: [d for d in deps[n] if d in chosen] for n in order}
    stats["outside_limit_edges"] = sum(len(deps[n]) for n in order) - sum(len(v) for v in subset.values())
    acyclic, dropped, components = drop_bootstrap_edges(subset)
    stats |= {
        "sources": len(order),
        "edges": sum(len(v) for v in acyclic.values()),
        "cycles_sccs": len(components),
        "largest_scc": max((len(c) for c in components), default=0),
        "nodes_in_cycles": sum(len(c) for c in components),
        "bootstrap_edges": len(dropped),
        "bootstrap_edge_examples": [f"{a} -> {b}" for a, b in dropped[:5]],
        "roots": sum(1 for v in acyclic.values() if not v),
        "depth": depth(acyclic),
    }
    return ArchiveGraph(order, {n: sources[n].version for n in order}, acyclic, stats)


def suite_lists(lists_dir: Path, suite: str, arch: str) -> tuple[list[Path], list[Path]]:
    """apt's main Sources and ``arch`` Packages lists of the archive labelled 'Debian SUITE' (not -updates or
    -security: a suite's own index)."""
    label = f"Debian {suite}"
    sources = [p for p in source_lists(lists_dir) if "_main_source_" in p.name and archive_label(p) == label]
    packages = [p for p in packages_lists(lists_dir) if f"_main_binary-{arch}_" in p.name and archive_label(p) == label]
    return sources, packages


def load(lists: Iterable[Path], packages: Iterable[Path]) -> tuple[dict[str, SourcePackage], BinaryIndex]:
    found: dict[str, SourcePackage] = {}
    for path in lists:
        for name, pkg in parse_sources(read_list(path)).items():
            if name not in found or Version(pkg.version) > Version(found[name].version):
                found[name] = pkg
    index = BinaryIndex()
    for path in packages:
        index.add(read_list(path))
    return found, index

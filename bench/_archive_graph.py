"""The source packages of one Debian suite as a build graph, from apt's own indexes: each source's Build-Depends
(with -Arch and -Indep) turned into edges to the sources that build the binaries named, through the Packages index.

Reading a relation, version constraints, architecture qualifiers (``:any``, ``:native``), architecture lists
(``[amd64]``) and build profiles (``<!nocheck>``) are ignored: every relation counts on every architecture. Of an
alternative (``a | b``) the first name that resolves counts: a real binary package, else a virtual one through
the ``Provides`` of the binaries (the provider first by name). A source depending on its own binaries gets no
self-edge; a relation nothing in the index satisfies gets no edge (both are counted).

The result has cycles (Debian's build graph does: compilers, debhelper, perl): :func:`drop_bootstrap_edges` finds
its strongly connected components and makes it a DAG by dropping, in each, the edges that close its cycles,
deterministically and as the farm cuts a recipe set's (:mod:`farm.graph`). The same indexes give the same graph,
edge for edge.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from debian import deb822
from debian.debian_support import Version

from farm.graph import bootstrap_split, strongly_connected_components
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


def drop_bootstrap_edges(graph: Graph) -> tuple[dict[str, list[str]], list[tuple[str, str]], list[list[str]]]:
    """``graph`` made acyclic by dropping the edges that close its cycles, as the farm cuts a recipe set's
    (:func:`farm.graph.bootstrap_split`: within each strongly connected component, an edge to a source ranked after
    its own, by how many of the component build-depend on it, is a bootstrap edge); the acyclic graph, the dropped
    edges and the strongly connected components (of more than one source) they broke. Edges to sources outside
    ``graph``, and a source's edge to itself, are left out first."""
    inside = {n: sorted({d for d in deps if d in graph and d != n}) for n, deps in graph.items()}
    acyclic, dropped = bootstrap_split(inside)
    return acyclic, dropped, [c for c in strongly_connected_components(inside) if len(c) > 1]


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

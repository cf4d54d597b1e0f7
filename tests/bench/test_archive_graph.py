"""The archive bench's build graph (bench._archive_graph) on a hand-written Sources and Packages index: which
relation gives which edge, and which edges break the cycles."""

from __future__ import annotations

import pytest

from bench import _archive_graph as archive
from farm.graph import strongly_connected_components

SOURCES = """\
Package: debhelper
Binary: debhelper, dh-autoreconf
Version: 13.11
Build-Depends: perl:any, po4a <!nodoc>

Package: perl
Binary: perl, perl-base
Version: 5.36.0-7
Build-Depends: debhelper-compat (= 13), zlib1g-dev [amd64]

Package: perl
Version: 5.30.0-1
Extra-Source-Only: yes
Build-Depends: hello

Package: po4a
Version: 0.69-1
Build-Depends: debhelper-compat (= 13), perl

Package: zlib
Version: 1:1.2.13
Build-Depends: debhelper (>= 9), gcc-snapshot | libc6-dev

Package: hello
Version: 2.10-3
Build-Depends: debhelper-compat (= 13),
 missing-package | zlib1g-dev:native,
 hello-doc, nowhere
Build-Depends-Indep: texinfo | perl

Package: glibc
Version: 2.36-9
Build-Depends: gcc-snapshot
"""

PACKAGES = """\
Package: debhelper
Version: 13.11
Provides: debhelper-compat (= 13)

Package: perl
Version: 5.36.0-7

Package: perl-base
Source: perl
Version: 5.36.0-7

Package: po4a
Version: 0.69-1

Package: zlib1g-dev
Source: zlib (1:1.2.13)
Version: 1:1.2.13

Package: libc6-dev
Source: glibc
Version: 2.36-9

Package: hello-doc
Source: hello
Version: 2.10-3
"""


@pytest.fixture
def graph() -> archive.ArchiveGraph:
    index = archive.BinaryIndex()
    index.add(PACKAGES)
    return archive.archive_graph(archive.parse_sources(SOURCES), index)


@pytest.mark.unit
def test_relations_become_edges_to_sources(graph: archive.ArchiveGraph) -> None:
    assert graph.order == ["debhelper", "perl", "po4a", "zlib", "hello", "glibc"]
    assert graph.versions["perl"] == "5.36.0-7"  # the Extra-Source-Only entry is not the source
    # the first alternative that resolves (gcc-snapshot is nowhere), the qualifiers ignored
    assert graph.deps["zlib"] == ["debhelper", "glibc"]
    # a virtual package through Provides; zlib1g-dev:native; not its own hello-doc; texinfo is nowhere: perl
    assert graph.deps["hello"] == ["debhelper", "perl", "zlib"]
    assert graph.stats["self_edges"] == 1
    assert graph.stats["unresolved_relations"] == 2  # nowhere; gcc-snapshot of glibc


@pytest.mark.unit
def test_cycle_closing_edges_are_dropped(graph: archive.ArchiveGraph) -> None:
    # debhelper -> perl -> zlib -> debhelper, po4a <-> debhelper, ...: one component of four. Ranked by how many in
    # it depend on each: debhelper (3), perl (2), po4a (1), zlib (1; after po4a by name). An edge to a source
    # ranked later is a bootstrap edge: debhelper's to perl and po4a, perl's to zlib.
    assert graph.stats["cycles_sccs"] == 1 and graph.stats["largest_scc"] == 4
    assert graph.deps["debhelper"] == []
    assert graph.deps["perl"] == ["debhelper"]
    assert graph.deps["po4a"] == ["debhelper", "perl"]
    assert graph.deps["zlib"] == ["debhelper", "glibc"]
    assert graph.stats["bootstrap_edges"] == 3
    assert graph.stats["depth"] == 3  # debhelper, then perl, then po4a (or hello)


@pytest.mark.unit
def test_the_graph_is_acyclic_and_limit_cuts_edges(graph: archive.ArchiveGraph) -> None:
    assert strongly_connected_components(graph.deps) == [[n] for n in sorted(graph.order)]
    index = archive.BinaryIndex()
    index.add(PACKAGES)
    small = archive.archive_graph(archive.parse_sources(SOURCES), index, limit=2)
    assert small.order == ["debhelper", "perl"]
    assert small.stats["outside_limit_edges"] == 2  # debhelper -> po4a, perl -> zlib
    assert small.stats["bootstrap_edges"] == 1

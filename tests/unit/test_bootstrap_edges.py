"""Cycles of an imported set are cut deterministically into bootstrap edges, and ``plan`` lists every one.

The graph is the base image's (gcc-12 <-> glibc, util-linux <-> systemd, cryptsetup <-> util-linux, plus acyclic
parts and a build-dependency with no recipe); recipe files carry the cut edges in ``bootstrap``.
"""

from __future__ import annotations

import json
import random
import re
import tomllib
from pathlib import Path

import pytest

from farm.archive.closure import Attempt, Listing, candidate_dirs, fetch_file
from farm.coordinator.plan import make_plan
from farm.envs.host import Environment
from farm.errors import ErrorGroup
from farm.graph import bootstrap_split, find_cycle, strongly_connected_components
from farm.recipes import Recipe, load_dir
from farm.recipes.model import parse
from farm.sources.git import ResolvedSource
from farm.store.local import LocalStore

BASE = {
    "gcc-12": ["glibc", "zlib", "no-recipe"],
    "glibc": ["gcc-12"],
    "util-linux": ["systemd", "zlib"],
    "systemd": ["util-linux", "cryptsetup", "acl"],
    "cryptsetup": ["util-linux"],
    "acl": ["attr"],
    "attr": [],
    "zlib": [],
}
CUT = [("gcc-12", "glibc"), ("util-linux", "systemd")]
ENV = Environment("host", "e" * 64, {})


def resolve(recipe: Recipe) -> ResolvedSource:
    return ResolvedSource(recipe.git_location, recipe.source.commit, "7" * 40, 0)


def shuffled(graph: dict[str, list[str]], rng: random.Random) -> dict[str, list[str]]:
    nodes = list(graph)
    rng.shuffle(nodes)
    return {n: rng.sample(graph[n], len(graph[n])) for n in nodes}


def test_split_cuts_one_edge_per_cycle_here_and_leaves_no_cycle() -> None:
    farm, cut = bootstrap_split(BASE)
    assert cut == CUT
    assert find_cycle(farm) is None
    for node, deps in BASE.items():  # every edge is kept or cut, none lost, none invented
        assert sorted(farm[node] + [to for origin, to in cut if origin == node]) == sorted(deps)
    assert [c for c in strongly_connected_components(BASE) if len(c) > 1] == [
        ["cryptsetup", "systemd", "util-linux"],
        ["gcc-12", "glibc"],
    ]


def test_split_ignores_the_order_nodes_and_edges_come_in() -> None:
    rng = random.Random(12)
    expected = bootstrap_split(BASE)
    for _ in range(25):
        assert bootstrap_split(shuffled(BASE, rng)) == expected


def test_split_of_random_graphs_is_acyclic_and_complete() -> None:
    rng = random.Random(7)
    for _ in range(40):
        names = [f"n{i}" for i in range(rng.randint(2, 30))]
        graph = {n: rng.sample(names, rng.randint(0, min(4, len(names)))) for n in names}
        farm, cut = bootstrap_split(graph)
        assert find_cycle(farm) is None, graph
        assert sum(map(len, farm.values())) + len(cut) == sum(len(set(d)) for d in graph.values())
        assert bootstrap_split(shuffled(graph, rng)) == (farm, cut)


def recipe_text(name: str, deps: list[str], bootstrap: list[tuple[str, str]]) -> str:
    lines = [f'name = "{name}"', 'version = "1.0"', f'outputs = ["{name}"]', f"build-depends = {json.dumps(deps)}"]
    if bootstrap:
        lines += ["bootstrap = ["] + [f'  {{ recipe = "{r}", version = "{v}" }},' for r, v in bootstrap] + ["]"]
    return "\n".join([*lines, "[source]", 'git = "../src"', f'commit = "{"1" * 40}"', "[build]", 'steps = ["true"]'])


def write_set(directory: Path, rng: random.Random) -> None:
    """The base graph's recipes, cut, in files whose names (and so the order they are read in) are shuffled."""
    farm, cut = bootstrap_split(shuffled(BASE, rng))
    names = list(farm)
    files = [f"f{i:02d}.toml" for i in range(len(names))]
    rng.shuffle(files)
    directory.mkdir(parents=True)
    for name, file in zip(names, files, strict=True):
        deps = [d for d in farm[name] if d in BASE]
        edges = [(to, f"{to}-archive-1") for origin, to in cut if origin == name]
        (directory / file).write_text(recipe_text(name, deps, edges) + "\n")


def test_plan_lists_bootstrap_edges_whatever_the_file_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(3)
    plans = []
    for i in range(4):
        write_set(tmp_path / f"set{i}", rng)
        plan = make_plan(load_dir(tmp_path / f"set{i}"), LocalStore(tmp_path / "store"), resolve, ENV)
        plans.append(plan.to_json())
    assert all(p == plans[0] for p in plans[1:])
    assert plans[0]["bootstrap_edges"] == [
        ["gcc-12", "glibc", "glibc-archive-1"],
        ["util-linux", "systemd", "systemd-archive-1"],
    ]
    assert plans[0]["order"].index("gcc-12") < plans[0]["order"].index("glibc")  # glibc waits for the farm's gcc-12


def test_bootstrap_field_is_checked_and_keeps_old_keys(tmp_path: Path) -> None:
    from tests.lib.recipes import write_recipe

    plain = write_recipe(tmp_path / "a", "p", git_url="../src", commit="1" * 40, steps=["true"])
    before = load_dir(tmp_path / "a").recipes["p"]
    assert "bootstrap" not in before.content()  # a recipe without bootstrap edges keeps its content and key
    plain.write_text(recipe_text("p", [], [("q", "1.0-1")]))
    after = load_dir(tmp_path / "a").recipes["p"]
    assert after.bootstrap == (("q", "1.0-1"),) and after.digest != before.digest
    for bad in (recipe_text("p", ["q"], [("q", "1")]), recipe_text("p", [], [("p", "1")])):
        (tmp_path / "b").mkdir(exist_ok=True)
        with pytest.raises(ErrorGroup) as exc:
            parse(tomllib.loads(bad), tmp_path / "b" / "p.toml")
        assert "bootstrap" in exc.value.render()


def test_candidate_dirs_try_every_suite_root_once() -> None:
    listed = [
        Listing("Debian bookworm-security", "http://m/debian-security/", "pool/updates/main/z/zlib", ()),
    ]
    roots = ["http://m/debian-security/", "http://m/debian/"]
    assert candidate_dirs(listed, roots) == [
        "http://m/debian-security/pool/updates/main/z/zlib",
        "http://m/debian/pool/updates/main/z/zlib",
    ]


def test_a_missing_file_is_reported_with_its_status(tmp_path: Path) -> None:
    got = fetch_file(f"file:{tmp_path}/nothing.dsc", tmp_path / "out.dsc")
    assert not got.ok and got.http is None and re.search("not found", got.status, re.IGNORECASE)
    (tmp_path / "here.dsc").write_text("x")
    assert fetch_file(f"file:{tmp_path}/here.dsc", tmp_path / "copy.dsc") == Attempt(
        f"file:{tmp_path}/here.dsc", "ok", None
    )


def test_image_sources_follow_the_source_field(tmp_path: Path) -> None:
    """A binNMU names its source version in ``Source:``; a binary without the field is its own source; two binaries
    of one source from different source versions give the newer one (never older code)."""
    from farm.archive import Pin
    from farm.archive.closure import image_sources

    (tmp_path / "x_dists_bookworm_main_binary-amd64_Packages").write_text(
        "Package: libfoo1\nSource: foo (2.0-1)\nVersion: 2.0-1+b1\nArchitecture: amd64\n\n"
        "Package: foo\nVersion: 2.0-1\nArchitecture: amd64\n\n"
        "Package: libbar1\nSource: bar\nVersion: 1.0-2\nArchitecture: amd64\n\n"
        "Package: bar-doc\nSource: bar\nVersion: 1.0-1\nArchitecture: all\n"
    )
    pins = [Pin("libfoo1", "2.0-1+b1", "amd64"), Pin("foo", "2.0-1", "amd64"), Pin("libbar1", "1.0-2", "amd64")]
    pins.append(Pin("bar-doc", "1.0-1", "all"))
    assert image_sources(pins, tmp_path) == {
        "bar": ("1.0-2", ("bar-doc", "libbar1")),
        "foo": ("2.0-1", ("foo", "libfoo1")),
    }

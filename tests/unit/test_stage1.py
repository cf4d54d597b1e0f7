"""``rebuild --stage 1``'s pure part: the stage-1 variant of each recipe with bootstrap edges, its plan and key, and
the verdict on its .debs (:mod:`farm.coordinator.stage`, :mod:`farm.crossval.stage1`).

The set is the shape of the base image's util-linux cycle: util-linux builds against the archive's systemd and
cryptsetup (bootstrap edges), systemd and cryptsetup build against the farm's util-linux. The store is a real
local store holding the records stage 0 would leave.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from farm.coordinator.plan import Decision, Plan, make_plan
from farm.coordinator.stage import deb_packages, stage1_plans, stage1_recipe
from farm.crossval.stage1 import compare_debs, excerpt, verdict
from farm.envs.host import Environment
from farm.errors import E
from farm.recipes import Recipe, RecipeSet, Source
from farm.sources.git import ResolvedSource
from farm.store import Artifact, BuildRecord
from farm.store.local import LocalStore

ENV = Environment("host", "e" * 64, {})
PINNED_ENV = "d" * 64
BINARIES = {  # what the farm's build of each recipe makes (besides its .buildinfo)
    "zlib": ["zlib1g", "zlib1g-dev"],
    "util-linux": ["util-linux", "libmount1", "libblkid-dev"],
    "systemd": ["systemd", "libsystemd0", "libsystemd-dev", "libudev-dev"],  # not libudev1-udeb: no udebs
    "cryptsetup": ["libcryptsetup12", "libcryptsetup-dev"],
    "hello": ["hello"],
}
UTIL_LINUX_PINS = ("gettext", "libsystemd-dev", "libudev-dev", "libudev1-udeb", "libcryptsetup-dev", "bison")


def pin(package: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"package": package, "version": "1", "arch": "amd64", "sha256": "a" * 64}.items()))


def debian(
    name: str, deps: tuple[str, ...] = (), bootstrap: tuple[str, ...] = (), pins: tuple[str, ...] = ()
) -> Recipe:
    return Recipe(
        name=name,
        version="1.0-1",
        source=Source(git="", commit="1" * 40, dsc=f"{name}=1.0-1"),
        steps=(),
        outputs=("*.deb", "*.buildinfo"),
        build_depends=deps,
        kind="debian",
        environment="bookworm-amd64",
        archive=tuple(pin(p) for p in pins),
        bootstrap=tuple((b, f"{b}-archive-1") for b in bootstrap),
    )


SET = {
    "zlib": debian("zlib"),
    "util-linux": debian("util-linux", ("zlib",), ("cryptsetup", "systemd"), UTIL_LINUX_PINS),
    "cryptsetup": debian("cryptsetup", ("util-linux",), pins=("libblkid-dev",)),
    "systemd": debian("systemd", ("cryptsetup", "util-linux", "zlib")),
    "hello": debian("hello", ("zlib",)),
}


def resolve(recipe: Recipe) -> ResolvedSource:
    return ResolvedSource(recipe.git_location, recipe.source.commit, "7" * 40, 0)


def plan_of(store: LocalStore, recipes: dict[str, Recipe] = SET) -> Plan:
    return make_plan(RecipeSet(recipes, Path(".")), store, resolve, ENV, env_for=lambda r: PINNED_ENV)


def publish(store: LocalStore, name: str, key: str, salt: str = "") -> BuildRecord:
    """The record of a build of ``name`` at ``key``: one .deb per binary (content ``salt`` + name) and a .buildinfo
    that differs with every build."""
    artifacts = [Artifact(f"{b}_1.0-1_amd64.deb", store.put_bytes(f"{salt}{b}".encode()), 1) for b in BINARIES[name]]
    artifacts.append(Artifact(f"{name}_1.0-1_amd64.buildinfo", store.put_bytes(key.encode()), 1))
    record = BuildRecord(
        key, name, "1.0-1", "0" * 64, "dsc", "1" * 40, "7" * 40, PINNED_ENV,
        tuple(artifacts), artifacts[0].digest, artifacts[0].digest, "b", "", "2026-12-04",
    )  # fmt: skip
    store.put_record(record)
    return record


def stage0(store: LocalStore, skip: tuple[str, ...] = ()) -> Plan:
    """Publish stage 0 level by level (as rebuild would), all but ``skip``; the plan that then finds it cached."""
    for _ in SET:
        for pb in plan_of(store).builds.values():
            if pb.key and pb.decision is Decision.BUILD and pb.name not in skip:
                publish(store, pb.name, pb.key)
    return plan_of(store)


def test_the_variant_builds_against_the_farm_and_drops_only_what_the_farm_made() -> None:
    produced = {"systemd": BINARIES["systemd"], "cryptsetup": BINARIES["cryptsetup"]}
    variant, dropped = stage1_recipe(SET["util-linux"], produced)
    assert variant.build_depends == ("zlib", "cryptsetup", "systemd")
    assert variant.bootstrap == ()
    assert dropped == ("libcryptsetup-dev", "libsystemd-dev", "libudev-dev")
    # the udeb the farm does not make, and packages of no recipe, stay pinned
    assert [dict(p)["package"] for p in variant.archive] == ["gettext", "libudev1-udeb", "bison"]
    same = ("build_depends", "bootstrap", "archive")
    assert replace(variant, **{f: getattr(SET["util-linux"], f) for f in same}) == SET["util-linux"]
    assert stage1_recipe(SET["hello"], {}) == (SET["hello"], ())  # no bootstrap edge: nothing changes


def test_deb_packages_are_read_from_output_names() -> None:
    outputs = ["libfoo1_2.0-1+b1_amd64.deb", "sub/foo-doc_2.0-1_all.deb", "foo_2.0-1_amd64.buildinfo", "README"]
    assert deb_packages(outputs) == {"libfoo1", "foo-doc"}


def test_stage1_plans_one_run_per_recipe_with_bootstrap_edges(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    plan = stage0(store)
    assert all(pb.decision is Decision.CACHED for pb in plan.builds.values())
    stages = stage1_plans(plan, store.get_records)
    assert [s.recipe for s in stages] == ["util-linux"]  # hello, zlib, systemd, cryptsetup: cached from stage 0
    (s,) = stages
    assert s.error is None and s.plan is not None and s.build is not None
    assert s.depends_on_farm == ("cryptsetup", "systemd")
    assert s.stage0 == plan.builds["util-linux"].record
    assert s.plan.order == ["zlib", "cryptsetup", "systemd", "util-linux"]  # stage 0 order, the variant last
    for dep in ("cryptsetup", "systemd", "zlib"):  # stage 0's builds, cached, entering the run as roots
        pb = s.plan.builds[dep]
        assert pb.decision is Decision.CACHED and pb.key == plan.builds[dep].key and pb.recipe.build_depends == ()
    assert s.build.decision is Decision.BUILD and s.build.key != plan.builds["util-linux"].key
    assert s.build.environment == PINNED_ENV
    # stable: the same stage 0 gives the same key; another stage-0 build of systemd gives another one
    again = stage1_plans(plan_of(store), store.get_records)[0].build
    assert again is not None and again.key == s.build.key
    other = LocalStore(tmp_path / "other")
    stage0(other, skip=("systemd",))
    publish(other, "systemd", plan_of(other).builds["systemd"].key or "", salt="x")
    moved = stage1_plans(plan_of(other), other.get_records)[0]
    assert moved.build is not None and moved.build.key != s.build.key


def test_a_stage1_build_in_the_store_is_cached_unless_forced(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    plan = stage0(store)
    build = stage1_plans(plan, store.get_records)[0].build
    assert build is not None and build.key is not None
    key = build.key
    record = publish(store, "util-linux", key)
    cached = stage1_plans(plan, store.get_records)[0]
    assert cached.build is not None and cached.build.decision is Decision.CACHED and cached.build.record == record
    forced = stage1_plans(plan, store.get_records, force=True)[0]
    assert forced.build is not None and forced.build.decision is Decision.BUILD and "--force" in forced.build.reason


def test_a_missing_stage0_is_an_error_per_recipe_not_a_build(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    nothing = stage1_plans(plan_of(store), store.get_records, where="recipes/base")
    assert [(s.recipe, s.plan) for s in nothing] == [("util-linux", None)]
    assert nothing[0].error is not None and nothing[0].error.code == E.STAGE0_MISSING
    assert "rebuild recipes/base" in nothing[0].error.hint
    partial = stage1_plans(stage0(store, skip=("systemd",)), store.get_records)[0]
    assert partial.plan is None and partial.error is not None
    assert "systemd" in partial.error.message and "cryptsetup" not in partial.error.message
    assert verdict(partial, None, None)["outcome"] == "failed"
    unknown = dict(SET) | {"hello": debian("hello", ("zlib",), ("nowhere",))}
    stage0(store)
    lone = [s for s in stage1_plans(plan_of(store, unknown), store.get_records) if s.recipe == "hello"]
    assert lone[0].error is not None and "nowhere" in lone[0].error.message


def test_compare_looks_at_debs_only() -> None:
    a = {"x_1_amd64.deb": "1", "y_1_all.deb": "2", "x_1_amd64.buildinfo": "3"}
    assert compare_debs(a, a | {"x_1_amd64.buildinfo": "4"}) == []
    b = {"x_1_amd64.deb": "9", "z_1_all.deb": "5", "x_1_amd64.buildinfo": "3"}
    assert compare_debs(a, b) == [
        {"file": "x_1_amd64.deb", "stage0": "1", "stage1": "9"},
        {"file": "y_1_all.deb", "stage0": "2", "stage1": None},
        {"file": "z_1_all.deb", "stage0": None, "stage1": "5"},
    ]


def test_verdict_per_recipe(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    (s,) = stage1_plans(stage0(store), store.get_records)
    assert s.build is not None and s.build.key is not None and s.stage0 is not None
    same = publish(store, "util-linux", s.build.key)
    entry = verdict(s, same, None)
    assert entry["outcome"] == "equal" and entry["differences"] == [] and entry["error"] is None
    assert entry["depends_on_farm"] == ["cryptsetup", "systemd"] and entry["stage1_key"] == s.build.key
    changed = publish(store, "util-linux", s.build.key, salt="new")
    entry = verdict(s, changed, None)
    assert entry["outcome"] == "different"
    assert [d["file"] for d in entry["differences"]] == sorted(f"{b}_1.0-1_amd64.deb" for b in BINARIES["util-linux"])
    failed = verdict(s, None, {"code": E.BUILD_FAILED, "message": "dpkg-buildpackage exited 2"})
    assert failed["outcome"] == "failed" and failed["error"]["code"] == E.BUILD_FAILED


def test_excerpt_keeps_changed_lines() -> None:
    report = "--- a\n+++ b\n├── data.tar.xz\n│ │ -old line\n│ │ +new line\n│ │  same\n"
    assert excerpt(report) == ["│ │ -old line", "│ │ +new line"]

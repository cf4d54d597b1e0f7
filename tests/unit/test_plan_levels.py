"""Planning asks the store once per level of the dependency graph, not once per recipe, and runs nothing per recipe.

The store counts its calls; sources resolve through a fake that counts repository lookups (no git).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from farm.coordinator.plan import Decision, Plan, make_plan
from farm.envs.host import Environment
from farm.recipes import Recipe, load_dir
from farm.sources.git import ResolvedSource
from farm.store import Artifact, BuildRecord
from farm.store.local import LocalStore
from tests.lib.recipes import write_recipe

ENV = Environment("host", "e" * 64, {})
GRAPH = {"a": [], "e": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}  # levels: [a, e], [b, c], [d]


class CountingStore(LocalStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.batches: list[list[str]] = []
        self.single = 0

    def get_records(self, build_keys: Iterable[str]) -> dict[str, BuildRecord | None]:
        keys = list(build_keys)
        self.batches.append(keys)
        return {k: super(CountingStore, self).get_record(k) for k in keys}

    def get_record(self, build_key: str) -> BuildRecord | None:
        self.single += 1
        return super().get_record(build_key)


def resolve(recipe: Recipe) -> ResolvedSource:
    return ResolvedSource(recipe.git_location, recipe.source.commit, "7" * 40, 0)


def plan_of(recipes: Path, store: LocalStore) -> Plan:
    return make_plan(load_dir(recipes), store, resolve, ENV)


def publish(store: LocalStore, plan: Plan) -> None:
    """A record for every build whose key the plan knows and that is not cached yet."""
    for pb in plan.builds.values():
        if pb.key and pb.decision is Decision.BUILD:
            digest = store.put_bytes(pb.name.encode())
            store.put_record(
                BuildRecord(
                    pb.key, pb.name, "1.0", "0" * 64, "/src", "1" * 40, "7" * 40, ENV.digest,
                    (Artifact(pb.name, digest, len(pb.name)),), digest, digest, "b", "", "",
                )
            )  # fmt: skip


def test_records_are_read_once_per_level(tmp_path: Path) -> None:
    recipes = tmp_path / "recipes"
    for name, deps in GRAPH.items():
        write_recipe(recipes, name, git_url="../src", commit="1" * 40, steps=["true"], depends=deps)
    store = CountingStore(tmp_path / "store")

    first = plan_of(recipes, store)
    assert store.batches == [[first.builds["a"].key, first.builds["e"].key]]  # b, c, d wait for a: no key yet
    for _ in range(3):  # publish level by level until every key is known and stored
        publish(store, plan_of(recipes, store))
    store.batches.clear()

    cached = plan_of(recipes, store)
    assert [len(b) for b in store.batches] == [2, 2, 1]
    assert store.single == 0
    assert all(pb.decision is Decision.CACHED for pb in cached.builds.values())
    assert list(cached.builds) == cached.order == ["a", "b", "c", "d", "e"]
    assert cached.to_json()["summary"] == {"total": 5, "cached": 5, "build": 0}

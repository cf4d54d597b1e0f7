"""The plan: for each recipe, in dependency order, its build key (when knowable), whether it is cached, and why.

A build key includes the output digests of the build's dependencies, so a recipe whose dependency still has to
be built gets its key only once that dependency is done. ``plan`` says so rather than guessing.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from farm import graph
from farm.envs.host import Environment
from farm.identity import build_key
from farm.recipes import Recipe, RecipeSet
from farm.recipes.patches import read_local
from farm.sources.git import ResolvedSource
from farm.store import BuildRecord, Store


class Decision(enum.StrEnum):
    CACHED = "cached"
    BUILD = "build"


@dataclass
class PlannedBuild:
    recipe: Recipe
    source: ResolvedSource
    decision: Decision
    reason: str
    key: str | None = None
    record: BuildRecord | None = None
    critical_path: float = 0.0
    environment: str = ""  # digest of this build's environment (the host's, or a pinned Debian one)

    @property
    def name(self) -> str:
        return self.recipe.name

    def to_json(self) -> dict[str, Any]:
        return {
            "recipe": self.name,
            "version": self.recipe.version,
            "decision": self.decision.value,
            "reason": self.reason,
            "build_key": self.key,
            "commit": self.source.commit,
            "tree": self.source.tree,
            "build_depends": list(self.recipe.build_depends),
            "artifacts": self.record.outputs() if self.record else None,
            "critical_path": self.critical_path,
        }


@dataclass
class Plan:
    environment: Environment
    order: list[str]
    builds: dict[str, PlannedBuild] = field(default_factory=dict)

    @property
    def to_build(self) -> list[PlannedBuild]:
        return [self.builds[n] for n in self.order if self.builds[n].decision is Decision.BUILD]

    def only(self, names: Iterable[str]) -> Plan:
        """The plan restricted to ``names`` and everything they depend on (a run needs its builds' dependencies:
        those already built come out cached), in the same order."""
        keep: set[str] = set()
        todo = [n for n in names if n in self.builds]
        while todo:
            name = todo.pop()
            if name not in keep:
                keep.add(name)
                todo.extend(self.builds[name].recipe.build_depends)
        order = [n for n in self.order if n in keep]
        return Plan(self.environment, order, {n: self.builds[n] for n in order})

    @property
    def bootstrap_edges(self) -> list[tuple[str, str, str]]:
        """``(from, to, version)`` of every bootstrap edge: ``from`` builds against the archive's ``to`` binaries at
        ``version`` instead of the farm's (the cycles the import cut), sorted."""
        return sorted((n, to, v) for n in self.order for to, v in self.builds[n].recipe.bootstrap)

    def to_json(self) -> dict[str, Any]:
        return {
            "environment": self.environment.digest,
            "order": self.order,
            "builds": [self.builds[n].to_json() for n in self.order],
            "bootstrap_edges": [list(edge) for edge in self.bootstrap_edges],
            "summary": {
                "total": len(self.order),
                "cached": sum(1 for b in self.builds.values() if b.decision is Decision.CACHED),
                "build": len(self.to_build),
            },
        }


Resolver = Callable[[Recipe], ResolvedSource]


def compute_key(recipe: Recipe, source: ResolvedSource, env: str, deps: dict[str, dict[str, str]]) -> str:
    return build_key(recipe.content(), source.commit, source.tree, env, deps)


def take_cached(
    builds: Iterable[PlannedBuild],
    records: Mapping[str, BuildRecord | None],
    *,
    force: bool,
    built: str = "built",
    forced: str = "cached, but --force rebuilds it",
    missing: str | None = "no build with this key in the store",
) -> None:
    """Each build whose key the store has a record for is cached (unless ``force``), with the reason said:
    ``built`` and the record's time and builder, ``forced`` when forced, ``missing`` (when given) without one."""
    for pb in builds:
        record = records.get(pb.key or "")
        if record is not None and not force:
            pb.decision, pb.record = Decision.CACHED, record
            pb.reason = f"{built} {record.finished} by {record.builder}"
        elif record is not None:
            pb.reason = forced
        elif missing is not None:
            pb.reason = missing


def make_plan(
    recipes: RecipeSet,
    store: Store,
    resolve: Resolver,
    environment: Environment,
    *,
    force: bool = False,
    env_for: Callable[[Recipe], str] | None = None,
) -> Plan:
    """``env_for`` names the environment digest of recipes that name a pinned environment (debian builds, and script
    builds with ``build.environment``); the others build on the host.

    Recipes are planned level by level (a level's dependencies are all in earlier levels), and each level's records
    are read from the store in one :meth:`~farm.store.Store.get_records` call, so a store with per-request latency
    is asked once per level rather than once per recipe. The plan's ``order`` and ``builds`` are in dependency order.
    """
    deps_graph = {r.name: list(r.build_depends) for r in recipes.recipes.values()}
    order = graph.topological_order(deps_graph)
    critical = graph.critical_path_lengths(deps_graph, order=order)
    plan = Plan(environment=environment, order=order)
    stored: set[str] = set()  # patch digests known to be in the store
    for level in _levels(order, deps_graph):
        keyed: list[PlannedBuild] = []
        for name in level:
            recipe = recipes.recipes[name]
            source = resolve(recipe)
            _store_patches(recipe, store, stored)
            pending = [d for d in recipe.build_depends if plan.builds[d].decision is Decision.BUILD]
            env = env_for(recipe) if env_for is not None and recipe.environment else environment.digest
            pb = PlannedBuild(recipe, source, Decision.BUILD, "", critical_path=critical[name], environment=env)
            if pending:
                pb.reason = f"dependency {', '.join(pending)} will be built first; key known after"
            else:
                deps = {d: _outputs(plan.builds[d]) for d in recipe.build_depends}
                pb.key = compute_key(recipe, source, env, deps)
                keyed.append(pb)
            plan.builds[name] = pb
        records = store.get_records([pb.key for pb in keyed if pb.key is not None]) if keyed else {}
        take_cached(keyed, records, force=force)
    plan.builds = {name: plan.builds[name] for name in order}
    return plan


def _levels(order: list[str], deps_graph: Mapping[str, list[str]]) -> list[list[str]]:
    """``order`` (a topological order) cut into levels: each node one level above its highest dependency, each
    level in ``order``'s order."""
    depth: dict[str, int] = {}
    levels: list[list[str]] = []
    for name in order:
        d = 1 + max((depth[dep] for dep in deps_graph[name] if dep in depth), default=-1)
        depth[name] = d
        if d == len(levels):
            levels.append([])
        levels[d].append(name)
    return levels


def _store_patches(recipe: Recipe, store: Store, stored: set[str]) -> None:
    """A recipe's patches go to the store by sha256 (as its pinned packages do), so that a worker holding no
    recipe files finds them there. ``stored``: digests already known to be there (added to)."""
    for patch in (*recipe.patches, *recipe.inputs):
        if patch.sha256 in stored:
            continue
        if not store.has_blob(patch.sha256):
            data = read_local(patch, recipe.path)
            if data is None:
                continue
            store.put_bytes(data)
        stored.add(patch.sha256)


def _outputs(pb: PlannedBuild) -> dict[str, str]:
    assert pb.record is not None
    return pb.record.outputs()

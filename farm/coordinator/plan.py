"""The plan: for each recipe, in dependency order, its build key (when knowable), whether it is cached, and why.

A build key includes the output digests of the build's dependencies, so a recipe whose dependency still has to
be built gets its key only once that dependency is done. ``plan`` says so rather than guessing.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
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

    def to_json(self) -> dict[str, Any]:
        return {
            "environment": self.environment.digest,
            "order": self.order,
            "builds": [self.builds[n].to_json() for n in self.order],
            "summary": {
                "total": len(self.order),
                "cached": sum(1 for b in self.builds.values() if b.decision is Decision.CACHED),
                "build": len(self.to_build),
            },
        }


Resolver = Callable[[Recipe], ResolvedSource]


def compute_key(recipe: Recipe, source: ResolvedSource, env: str, deps: dict[str, dict[str, str]]) -> str:
    return build_key(recipe.content(), source.commit, source.tree, env, deps)


def make_plan(
    recipes: RecipeSet,
    store: Store,
    resolve: Resolver,
    environment: Environment,
    *,
    force: bool = False,
    env_for: Callable[[Recipe], str] | None = None,
) -> Plan:
    """``env_for`` names the environment digest of recipes that do not build on the host (debian builds)."""
    deps_graph = {r.name: list(r.build_depends) for r in recipes.recipes.values()}
    order = graph.topological_order(deps_graph)
    critical = graph.critical_path_lengths(deps_graph)
    plan = Plan(environment=environment, order=order)
    for name in order:
        recipe = recipes.recipes[name]
        source = resolve(recipe)
        _store_patches(recipe, store)
        pending = [d for d in recipe.build_depends if plan.builds[d].decision is Decision.BUILD]
        env = env_for(recipe) if env_for is not None and recipe.kind != "script" else environment.digest
        pb = PlannedBuild(recipe, source, Decision.BUILD, "", critical_path=critical[name], environment=env)
        if pending:
            pb.reason = f"dependency {', '.join(pending)} will be built first; key known after"
        else:
            deps = {d: _outputs(plan.builds[d]) for d in recipe.build_depends}
            pb.key = compute_key(recipe, source, env, deps)
            record = store.get_record(pb.key)
            if record is not None and not force:
                pb.decision, pb.record = Decision.CACHED, record
                pb.reason = f"built {record.finished} by {record.builder}"
            elif record is not None:
                pb.reason = "cached, but --force rebuilds it"
            else:
                pb.reason = "no build with this key in the store"
        plan.builds[name] = pb
    return plan


def _store_patches(recipe: Recipe, store: Store) -> None:
    """A recipe's patches go to the store by sha256 (as its pinned packages do), so that a worker holding no
    recipe files finds them there."""
    for patch in recipe.patches:
        if not store.has_blob(patch.sha256):
            data = read_local(patch, recipe.path)
            if data is not None:
                store.put_bytes(data)


def _outputs(pb: PlannedBuild) -> dict[str, str]:
    assert pb.record is not None
    return pb.record.outputs()

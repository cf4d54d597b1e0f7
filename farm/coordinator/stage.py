"""Stage 1 of a set with bootstrap edges: each recipe that was built against the archive's binaries of a recipe of
its set (a bootstrap edge, :mod:`farm.recipes.bootstrap`) is planned again against the farm's own build of it.

Stage 0 is the normal rebuild: ``X`` builds against the pinned archive binaries of ``Y`` (the edge ``X -> Y`` cut a
cycle). Its stage-1 variant (:func:`stage1_recipe`) is the same recipe with every bootstrap edge turned into a
build-depend, so ``Y``'s stage-0 .debs go into the build's local repository as any dependency's do, and the archive
pins of the packages that build of ``Y`` made dropped; nothing else changes. Its build key differs from stage 0's
(its content and dependency outputs differ) and depends only on the recipe and the stage-0 records, so a second
stage 1 finds it cached.

:func:`stage1_plans` makes one small plan per such recipe: its direct build-depends, cached at stage 0, and the
variant. Each is a run of its own, because a recipe of the set can be both the stage-0 dependency of one variant
and a variant itself (util-linux builds against cryptsetup, which has a bootstrap edge too). Recipes without
bootstrap edges are not planned at all. Stage 1 builds nothing of stage 0: a recipe whose stage-0 build, or whose
bootstrap dependencies' builds, are not in the store gets an error saying so instead of a plan. Pure: the store is
asked only through ``lookup``.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from farm.coordinator.plan import Decision, Plan, PlannedBuild, compute_key, take_cached
from farm.errors import E, FarmError
from farm.recipes import Recipe
from farm.store import BuildRecord

Lookup = Callable[[list[str]], Mapping[str, BuildRecord | None]]
"""Build keys -> the records the store has for them (:meth:`farm.store.Store.get_records`)."""


@dataclass(frozen=True)
class Stage1:
    """One recipe's stage 1: its plan (None when stage 0 is incomplete: ``error`` says what is missing)."""

    recipe: str
    depends_on_farm: tuple[str, ...]  # its bootstrap edges' recipes, farm dependencies at stage 1
    stage0: BuildRecord | None
    plan: Plan | None = None
    dropped_pins: tuple[str, ...] = ()  # archive packages no longer pinned: the farm's builds replace them
    error: FarmError | None = None

    @property
    def build(self) -> PlannedBuild | None:
        return self.plan.builds[self.recipe] if self.plan is not None else None


def deb_packages(outputs: Iterable[str]) -> set[str]:
    """The binary package names of the .debs among a build's output files (``NAME_VERSION_ARCH.deb``)."""
    names = (posixpath.basename(n) for n in outputs)
    return {n.split("_", 1)[0] for n in names if n.endswith(".deb") and "_" in n}


def stage1_recipe(recipe: Recipe, produced: Mapping[str, Iterable[str]]) -> tuple[Recipe, tuple[str, ...]]:
    """``recipe`` built against the farm's builds of its bootstrap edges, and the pins it drops.

    ``produced``: for each bootstrap recipe, the binary packages the farm's build of it made. Those packages' pins
    are dropped (the farm's .debs take their place); a pinned package that build did not make stays pinned."""
    targets = tuple(sorted(to for to, _ in recipe.bootstrap))
    farm_built = {package for to in targets for package in produced[to]}
    kept = tuple(p for p in recipe.archive if dict(p)["package"] not in farm_built)
    dropped = tuple(sorted(dict(p)["package"] for p in recipe.archive if dict(p)["package"] in farm_built))
    variant = replace(
        recipe,
        build_depends=(*recipe.build_depends, *(t for t in targets if t not in recipe.build_depends)),
        bootstrap=(),
        archive=kept,
    )
    return variant, dropped


def _missing(plan: Plan, names: Iterable[str]) -> list[str]:
    return [
        n
        for n in names
        if n not in plan.builds or plan.builds[n].decision is not Decision.CACHED or not plan.builds[n].record
    ]


def stage1_plans(plan: Plan, lookup: Lookup, *, force: bool = False, where: str = "DIR") -> list[Stage1]:
    """The stage 1 of every recipe of ``plan`` (the stage-0 plan) that has bootstrap edges, in plan order.

    ``force``: build each variant even when the store has it. ``where``: the recipes directory, for the hint."""
    stages: list[Stage1] = []
    for name in plan.order:
        recipe = plan.builds[name].recipe
        if not recipe.bootstrap:
            continue
        targets = tuple(sorted(to for to, _ in recipe.bootstrap))
        missing = _missing(plan, (name, *targets))
        if missing:
            unknown = [m for m in missing if m not in plan.builds]
            stages.append(
                Stage1(name, targets, plan.builds[name].record, error=_missing_error(name, missing, unknown, where))
            )
            continue
        stages.append(_plan_one(plan, name, targets))
    keyed = [s.build for s in stages if s.build is not None]
    found = lookup([b.key for b in keyed if b.key]) if keyed else {}
    take_cached(
        keyed, found, force=force, built="stage 1 built", forced="stage 1 is in the store, but --force rebuilds it",
        missing=None,
    )  # fmt: skip
    return stages


def _plan_one(plan: Plan, name: str, targets: tuple[str, ...]) -> Stage1:
    stage0 = plan.builds[name]
    assert stage0.record is not None
    produced = {t: deb_packages(_outputs(plan.builds[t])) for t in targets}
    variant, dropped = stage1_recipe(stage0.recipe, produced)
    # The dependencies are stage 0's, cached: their own build-depends are not this run's (and may lead back to
    # ``name``), so each enters the run as a root with its stage-0 key and outputs.
    deps = {
        d: replace(plan.builds[d], recipe=replace(plan.builds[d].recipe, build_depends=()))
        for d in variant.build_depends
    }
    key = compute_key(variant, stage0.source, stage0.environment, {d: _outputs(pb) for d, pb in deps.items()})
    build = PlannedBuild(
        variant,
        stage0.source,
        Decision.BUILD,
        f"stage 1: against the farm's {', '.join(targets)}",
        key=key,
        critical_path=1.0,
        environment=stage0.environment,
    )
    order = [d for d in plan.order if d in deps]
    builds = {d: deps[d] for d in order} | {name: build}
    stage_plan = Plan(plan.environment, [*order, name], builds)
    return Stage1(name, targets, stage0.record, stage_plan, dropped)


def _outputs(pb: PlannedBuild) -> dict[str, str]:
    assert pb.record is not None
    return pb.record.outputs()


def _missing_error(name: str, missing: list[str], unknown: list[str], where: str) -> FarmError:
    if unknown:
        return FarmError(
            E.STAGE0_MISSING,
            f"stage 1 of {name}: its bootstrap edge names {', '.join(unknown)}, which has no recipe in this set",
            hint="a bootstrap edge must name a recipe of the set: import or add it, or drop the edge",
        )
    return FarmError(
        E.STAGE0_MISSING,
        f"stage 1 of {name} needs the farm's stage-0 builds of {', '.join(missing)}; the store has none at their keys",
        hint=f"build stage 0 first: mangos-farm rebuild {where}  (then rebuild --stage 1 again)",
    )

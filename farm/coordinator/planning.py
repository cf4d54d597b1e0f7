"""From a recipes directory and the farm's settings to a plan: recipes loaded, sources resolved through the farm's
source cache, the host environment read, each debian recipe's pinned environment and packages checked in the store.

What ``plan``, ``rebuild`` and ``recheck`` share. The resolved commits are saved even when planning fails, so what
was resolved before the failure is not resolved again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from farm.coordinator.plan import Plan, make_plan
from farm.envs.host import host_environment
from farm.errors import E, FarmError
from farm.recipes import Recipe, load_dir
from farm.settings import Settings
from farm.sources.git import ResolvedSource, SourceCache
from farm.sources.resolved import ResolvedCommits
from farm.store import Store, open_store


def plan_recipes(recipes_dir: Path, settings: Settings, *, force: bool = False) -> tuple[Plan, Store]:
    """The plan for the recipes in ``recipes_dir`` against this farm's store (``force``: as if nothing were cached),
    and that store."""
    recipes = load_dir(recipes_dir)
    store = open_store(settings.store_url)
    with source_resolver(settings) as resolve:
        plan = make_plan(
            recipes,
            store,
            resolve,
            host_environment(),
            force=force,
            env_for=lambda r: debian_environment(r, settings, store),
        )
    return plan, store


@contextmanager
def source_resolver(settings: Settings) -> Iterator[Callable[[Recipe], ResolvedSource]]:
    """Resolve each recipe's pinned commit through the farm's source cache; what was resolved is saved on the way
    out, even when planning fails."""
    resolved = ResolvedCommits(SourceCache(settings.cache_dir / "git"))
    try:
        yield lambda r: resolved.resolve(r.git_location, r.source.commit, r.source.ref, origin=str(r.path))
    finally:
        resolved.save()


def debian_environment(recipe: Recipe, settings: Settings, store: Store) -> str:
    """The digest of a debian recipe's pinned environment. The environment must have been made on this machine and be
    in ``store`` (E-ENV-UNKNOWN otherwise); the recipe's pinned packages not yet in the store are fetched into it."""
    from farm.envs.debian import load_records

    records = {r.name: r for r in load_records(settings.home / "envs")}
    record = records.get(recipe.environment)
    if record is None or not store.has_blob(record.digest):
        raise FarmError(
            E.ENV_UNKNOWN,
            f"the build environment '{recipe.environment}' has not been made (or is not in {store.url})",
            file=recipe.path,
            field="build.environment",
            hint=f"make it: mangos-farm env build {recipe.environment}",
        )
    missing = [p for p in recipe.pins() if not store.has_blob(p["sha256"])]
    if missing:
        from farm.archive import Pin, ensure_pins

        ensure_pins([Pin.from_dict(p) for p in missing], store)
    return str(record.digest)
